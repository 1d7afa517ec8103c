// CPU kernels of the packing ops (contracts in packing_kernels.h).
//
// Moving rows is memory-bound: a pair's text (or image) segment is contiguous in both the padded and the packed
// form, so each segment is one memcpy, and segments are spread over threads with at::parallel_for (OpenMP in
// torch's CPU builds, sized by torch.set_num_threads, serial below the grain so tiny batches pay no fork).
#include "packing_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace vlmo_fast::cpu {
namespace {

// Each thread gets at least this many bytes (~100 us of memcpy): below it a fork/join costs more than it saves,
// and far more on a loaded machine, where waking a second thread can wait for a scheduler time slice.
constexpr int64_t kGrainBytes = 1 << 20;

int64_t grain_for(int64_t bytes_per_item) {
  return std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(1, bytes_per_item));
}

}  // namespace

void mask_lengths(const uint8_t* mask, int64_t P, int64_t L, int32_t* lens) {
  at::parallel_for(0, P, grain_for(L), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const uint8_t* row = mask + p * L;
      int64_t n = 0;
      while (n < L && row[n] == 1) ++n;
      bool ok = true;
      for (int64_t i = n; i < L; ++i) ok = ok && row[i] == 0;
      lens[p] = ok ? static_cast<int32_t>(n) : -1;
    }
  });
}

void plan(const int32_t* lens, int64_t P, int32_t image_len, int32_t pad, int32_t* text_start, int32_t* text_q_len,
          int32_t* text_k_len, int32_t* image_start, int32_t* image_len_out, int64_t* stats) {
  // A prefix sum over P (a few hundred pairs): serial is faster than any split.  The int32 starts are exact:
  // pack_plan refuses a layout whose rows exceed kInt32Limit (checked before the call where the host knows the
  // count, from stats[0] after it otherwise).
  int64_t total = 0;
  int32_t max_q = 0, min_k = std::numeric_limits<int32_t>::max(), max_k = std::numeric_limits<int32_t>::min();
  for (int64_t p = 0; p < P; ++p) {
    const int32_t k = lens[p];
    const int32_t q = pad >= 0 ? pad : k;
    text_start[p] = static_cast<int32_t>(total);
    text_q_len[p] = q;
    text_k_len[p] = k;
    total += q;
    max_q = std::max(max_q, q);
    min_k = std::min(min_k, k);
    max_k = std::max(max_k, k);
  }
  for (int64_t p = 0; p < P; ++p) {
    image_start[p] = static_cast<int32_t>(total + p * image_len);
    image_len_out[p] = image_len;
  }
  stats[0] = total;
  stats[1] = max_q;
  stats[2] = P ? min_k : 0;
  stats[3] = P ? max_k : 0;
}

void row_pair(const int32_t* text_start, const int32_t* text_q_len, const int32_t* image_start, int64_t P,
              int32_t image_len, int32_t* row_pair) {
  at::parallel_for(0, P, grain_for((image_len + 64) * 4), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int32_t v = static_cast<int32_t>(p);  // plan_row_pair refuses P > kInt32Limit
      std::fill_n(row_pair + text_start[p], std::max<int32_t>(text_q_len[p], 0), v);
      std::fill_n(row_pair + image_start[p], image_len, v);
    }
  });
}

void copy_segments(const void* src, void* dst, const int32_t* start, const int32_t* len, int64_t P,
                   int64_t seg_rows, int64_t row_bytes, bool to_packed) {
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  at::parallel_for(0, P, grain_for(seg_rows * row_bytes), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = len ? std::clamp<int64_t>(len[p], 0, seg_rows) : seg_rows;
      const int64_t padded = p * seg_rows * row_bytes;
      const int64_t packed = static_cast<int64_t>(start[p]) * row_bytes;
      if (to_packed) {
        std::memcpy(d + packed, s + padded, n * row_bytes);
      } else {
        std::memcpy(d + padded, s + packed, n * row_bytes);
        std::memset(d + padded + n * row_bytes, 0, (seg_rows - n) * row_bytes);
      }
    }
  });
}

int64_t first_bad_segment(const int32_t* start, const int32_t* len, int64_t P, int64_t seg_rows, int64_t num_rows) {
  // A few hundred pairs, read once: serial.
  for (int64_t p = 0; p < P; ++p)
    if (!segment_ok(start[p], len ? len[p] : seg_rows, seg_rows, num_rows)) return p;
  return -1;
}

}  // namespace vlmo_fast::cpu
