// Raw-pointer kernels of the packing ops, one set for the CPU (packing_cpu.cpp) and one for CUDA
// (packing_cuda.cu).  This header includes no torch or CUDA header on purpose: the CUDA sources must compile
// with a plain nvcc (the CPU torch wheel ships no CUDA headers), and packing_ops.cpp owns all tensor logic
// (validation, allocation, devices, streams) and calls these with pointers and sizes.
//
// Shared conventions:
//   * "padded" data is (P, seg_rows, row_bytes) bytes, pair-major and contiguous;
//   * "packed" data is (num_rows, row_bytes) bytes, pair p's segment starting at row start[p];
//   * the kernels move bytes and do no arithmetic on the data, so every dtype is supported;
//   * metadata (starts, lengths) is int32, as in PackedLayout.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define VLMO_FAST_HOST_DEVICE __host__ __device__
#else
#define VLMO_FAST_HOST_DEVICE
#endif

namespace vlmo_fast {

// The largest packed row index, pair index or segment length that int32 metadata can hold.
constexpr int64_t kInt32Limit = 2147483647;

// Whether pair p's segment lies inside the tensors: `rows` rows (len[p], or seg_rows when there is no len)
// within [0, seg_rows], and, when not empty, starting at `start` inside the num_rows packed rows.  One rule
// for both devices: the CPU ops check every pair with it on the host, the CUDA ops on the device.
VLMO_FAST_HOST_DEVICE inline bool segment_ok(int64_t start, int64_t rows, int64_t seg_rows, int64_t num_rows) {
  if (rows < 0 || rows > seg_rows) return false;
  return rows == 0 || (start >= 0 && start + rows <= num_rows);  // an empty segment touches no row
}

namespace cpu {

// lens[p] = number of leading ones of mask row p (P, L), or -1 if the row is not 1...10...0 (values 0/1).
void mask_lengths(const uint8_t* mask, int64_t P, int64_t L, int32_t* lens);

// The per-pair metadata of a PackedLayout from the real text lengths.  pad < 0 drops padding (segment of
// lens[p] rows), pad >= 0 keeps every text segment padded to `pad` rows.  stats (int64, 4) receives
// [sum of text_q_len, max text_q_len, min lens, max lens] (zeros when P == 0), read once by the caller.
void plan(const int32_t* lens, int64_t P, int32_t image_len, int32_t pad, int32_t* text_start, int32_t* text_q_len,
          int32_t* text_k_len, int32_t* image_start, int32_t* image_len_out, int64_t* stats);

// row_pair[r] = p for every row of pair p's text segment and image segment.
void row_pair(const int32_t* text_start, const int32_t* text_q_len, const int32_t* image_start, int64_t P,
              int32_t image_len, int32_t* row_pair);

// Copy between padded and packed form.  Row r < len[p] of pair p (len == nullptr: every row) moves between
// padded row (p, r) and packed row start[p] + r.  to_packed == false also zero-fills the padded rows r >= len[p].
void copy_segments(const void* src, void* dst, const int32_t* start, const int32_t* len, int64_t P,
                   int64_t seg_rows, int64_t row_bytes, bool to_packed);

// The first pair p whose segment fails segment_ok, or -1 when all pass (len == nullptr: seg_rows rows each).
int64_t first_bad_segment(const int32_t* start, const int32_t* len, int64_t P, int64_t seg_rows, int64_t num_rows);

}  // namespace cpu

namespace cuda {

// Same contracts as the cpu namespace, launched on `stream` (a cudaStream_t).  Each returns nullptr on
// success or the CUDA error string of the launch.  No launcher reads device memory on the host (no sync):
// the caller validates the metadata with first_bad_segment and reads its one result before it launches
// the kernel that trusts it; the kernels still skip indices out of range instead of faulting.
const char* mask_lengths(const uint8_t* mask, int64_t P, int64_t L, int32_t* lens, void* stream);
// Writes into *first_bad (device memory, int64) the cpu::first_bad_segment result.
const char* first_bad_segment(const int32_t* start, const int32_t* len, int64_t P, int64_t seg_rows,
                              int64_t num_rows, int64_t* first_bad, void* stream);
const char* plan(const int32_t* lens, int64_t P, int32_t image_len, int32_t pad, int32_t* text_start,
                 int32_t* text_q_len, int32_t* text_k_len, int32_t* image_start, int32_t* image_len_out,
                 int64_t* stats, void* stream);
const char* row_pair(const int32_t* text_start, const int32_t* text_q_len, const int32_t* image_start, int64_t P,
                     int32_t image_len, int64_t num_rows, int32_t* row_pair, void* stream);
const char* copy_segments(const void* src, void* dst, const int32_t* start, const int32_t* len, int64_t P,
                          int64_t seg_rows, int64_t row_bytes, int64_t num_packed_rows, bool to_packed,
                          void* stream);

}  // namespace cuda
}  // namespace vlmo_fast
