// CUDA kernels of the packing ops (contracts in packing_kernels.h).  Raw pointers only: no torch header, so
// this file compiles with a plain nvcc; packing_ops.cpp passes the pointers and the current stream.
//
// Row movement is a byte copy in the widest vector (16 bytes where the row size and both base pointers
// allow), each block moving ~16 KiB of one pair's segment, so it runs at memory bandwidth for any dtype.
// The plan is one block: a prefix sum over the pairs (a few hundred) is launch-bound, not bandwidth-bound.
#include "packing_kernels.h"

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

namespace vlmo_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPlanThreads = 1024;         // one block; a multiple of 32 (warp scan)
constexpr int64_t kBlockBytes = 16 * 1024;  // bytes a copy block moves

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// ---------------------------------------------------------------------------------------------------------------
// mask_lengths: mask uint8 (P, L) -> lens int32 (P,); one thread per pair (L is a caption length, ~40).
__global__ void mask_lengths_kernel(const uint8_t* __restrict__ mask, int64_t P, int64_t L, int32_t* __restrict__ lens) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  const uint8_t* row = mask + p * L;
  int64_t n = 0;
  while (n < L && row[n] == 1) ++n;
  bool ok = true;
  for (int64_t i = n; i < L; ++i) ok = ok && row[i] == 0;
  lens[p] = ok ? static_cast<int32_t>(n) : -1;
}

// ---------------------------------------------------------------------------------------------------------------
// plan: lens int32 (P,) -> text_start, text_q_len, text_k_len, image_start, image_len int32 (P,), stats int64 (4,).
__device__ __forceinline__ long long warp_inclusive_scan(long long v) {
  const int lane = threadIdx.x & 31;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const long long n = __shfl_up_sync(0xffffffffu, v, offset);
    if (lane >= offset) v += n;
  }
  return v;
}

__global__ void plan_kernel(const int32_t* __restrict__ lens, int64_t P, int32_t image_len, int32_t pad,
                            int32_t* __restrict__ text_start, int32_t* __restrict__ text_q_len,
                            int32_t* __restrict__ text_k_len, int32_t* __restrict__ image_start,
                            int32_t* __restrict__ image_len_out, int64_t* __restrict__ stats) {
  __shared__ long long warp_total[32];
  __shared__ long long carry;  // rows of the chunks already scanned
  __shared__ int max_q, min_k, max_k;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, num_warps = blockDim.x >> 5;
  if (tid == 0) {
    carry = 0;
    max_q = 0;
    min_k = INT_MAX;
    max_k = INT_MIN;
  }
  __syncthreads();
  for (int64_t base = 0; base < P; base += blockDim.x) {
    const int64_t p = base + tid;
    const bool live = p < P;
    const int32_t k = live ? lens[p] : 0;
    const int32_t q = live ? (pad >= 0 ? pad : k) : 0;
    long long incl = warp_inclusive_scan(q);
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      long long w = lane < num_warps ? warp_total[lane] : 0;
      w = warp_inclusive_scan(w);
      if (lane < num_warps) warp_total[lane] = w;
    }
    __syncthreads();
    if (warp > 0) incl += warp_total[warp - 1];
    if (live) {
      // Exact when the layout's rows fit in int32: pack_plan checks that on the host where it knows the count
      // (padded text), otherwise the caller does from stats[0], which is exact (64-bit), before any use.
      text_start[p] = static_cast<int32_t>(carry + incl - q);
      text_q_len[p] = q;
      text_k_len[p] = k;
      atomicMax(&max_q, q);
      atomicMin(&min_k, k);
      atomicMax(&max_k, k);
    }
    __syncthreads();  // every thread has read carry and warp_total before they change
    if (tid == 0) carry += warp_total[num_warps - 1];
    __syncthreads();
  }
  const long long total = carry;
  for (int64_t p = tid; p < P; p += blockDim.x) {
    image_start[p] = static_cast<int32_t>(total + p * image_len);
    image_len_out[p] = image_len;
  }
  if (tid == 0) {
    stats[0] = total;
    stats[1] = max_q;
    stats[2] = P ? min_k : 0;
    stats[3] = P ? max_k : 0;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// row_pair: one block per pair fills its text and image rows of row_pair int32 (num_rows,).
__global__ void row_pair_kernel(const int32_t* __restrict__ text_start, const int32_t* __restrict__ text_q_len,
                                const int32_t* __restrict__ image_start, int32_t image_len, int64_t num_rows,
                                int32_t* __restrict__ row_pair) {
  const int32_t p = blockIdx.x;
  const int64_t ts = text_start[p], tq = text_q_len[p], is = image_start[p];
  for (int64_t i = threadIdx.x; i < tq; i += blockDim.x)
    if (ts + i >= 0 && ts + i < num_rows) row_pair[ts + i] = p;
  for (int64_t i = threadIdx.x; i < image_len; i += blockDim.x)
    if (is + i >= 0 && is + i < num_rows) row_pair[is + i] = p;
}

// ---------------------------------------------------------------------------------------------------------------
// copy_segments: V is the copy unit (1 to 16 bytes).  padded (P, seg_rows, row_vecs) and packed (num_packed_rows,
// row_vecs) in units of V.  Block b handles rows [r0, r0 + rows_per_block) of pair b / blocks_per_pair.
template <typename V>
__global__ void copy_segments_kernel(const V* __restrict__ src, V* __restrict__ dst, const int32_t* __restrict__ start,
                                     const int32_t* __restrict__ len, int64_t seg_rows, int64_t row_vecs,
                                     int64_t rows_per_block, int64_t blocks_per_pair, int64_t num_packed_rows,
                                     bool to_packed) {
  const int64_t p = blockIdx.x / blocks_per_pair;
  const int64_t r0 = (blockIdx.x % blocks_per_pair) * rows_per_block;
  const int64_t r1 = min(r0 + rows_per_block, seg_rows);
  const int64_t n = len ? min(max(static_cast<int64_t>(len[p]), int64_t{0}), seg_rows) : seg_rows;
  if (to_packed && r0 >= n) return;  // nothing to copy, and no padding to fill on this side
  const int64_t s = start[p];
  const int64_t count = (r1 - r0) * row_vecs;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) {
    const int64_t r = r0 + k / row_vecs, c = k % row_vecs;
    const int64_t padded = (p * seg_rows + r) * row_vecs + c;
    const bool inside = r < n && s + r >= 0 && s + r < num_packed_rows;
    const int64_t packed = (s + r) * row_vecs + c;
    if (to_packed) {
      if (inside) dst[packed] = src[padded];
    } else {
      dst[padded] = inside ? src[packed] : V{};
    }
  }
}

template <typename V>
const char* launch_copy(const void* src, void* dst, const int32_t* start, const int32_t* len, int64_t P,
                        int64_t seg_rows, int64_t row_bytes, int64_t num_packed_rows, bool to_packed,
                        cudaStream_t stream) {
  const int64_t row_vecs = row_bytes / static_cast<int64_t>(sizeof(V));
  int64_t rows_per_block = kBlockBytes / row_bytes;
  rows_per_block = rows_per_block < 1 ? 1 : (rows_per_block > seg_rows ? seg_rows : rows_per_block);
  const int64_t blocks_per_pair = (seg_rows + rows_per_block - 1) / rows_per_block;
  const int64_t blocks = P * blocks_per_pair;
  if (blocks > INT_MAX) return "vlmo_fast: too many rows for one copy launch";
  copy_segments_kernel<V><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const V*>(src), static_cast<V*>(dst), start, len, seg_rows, row_vecs, rows_per_block,
      blocks_per_pair, num_packed_rows, to_packed);
  return launch_status();
}

// ---------------------------------------------------------------------------------------------------------------
// first_bad_segment: the smallest p whose segment fails segment_ok, by an atomic min over the pairs into a value
// preset to all ones (-1 as int64, the "all pass" answer).
__global__ void first_bad_segment_kernel(const int32_t* __restrict__ start, const int32_t* __restrict__ len,
                                         int64_t P, int64_t seg_rows, int64_t num_rows,
                                         unsigned long long* __restrict__ first_bad) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  if (!segment_ok(start[p], len ? len[p] : seg_rows, seg_rows, num_rows))
    atomicMin(first_bad, static_cast<unsigned long long>(p));
}

}  // namespace

const char* mask_lengths(const uint8_t* mask, int64_t P, int64_t L, int32_t* lens, void* stream) {
  if (P == 0) return nullptr;
  const int64_t blocks = (P + kThreads - 1) / kThreads;
  mask_lengths_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(mask, P, L,
                                                                                                        lens);
  return launch_status();
}

const char* plan(const int32_t* lens, int64_t P, int32_t image_len, int32_t pad, int32_t* text_start,
                 int32_t* text_q_len, int32_t* text_k_len, int32_t* image_start, int32_t* image_len_out,
                 int64_t* stats, void* stream) {
  // Launched for P == 0 too: the kernel writes the zero stats.
  plan_kernel<<<1, kPlanThreads, 0, static_cast<cudaStream_t>(stream)>>>(lens, P, image_len, pad, text_start,
                                                                         text_q_len, text_k_len, image_start,
                                                                         image_len_out, stats);
  return launch_status();
}

const char* row_pair(const int32_t* text_start, const int32_t* text_q_len, const int32_t* image_start, int64_t P,
                     int32_t image_len, int64_t num_rows, int32_t* row_pair, void* stream) {
  if (P == 0) return nullptr;
  if (P > INT_MAX) return "vlmo_fast: too many pairs for one launch";
  row_pair_kernel<<<static_cast<unsigned>(P), 128, 0, static_cast<cudaStream_t>(stream)>>>(
      text_start, text_q_len, image_start, image_len, num_rows, row_pair);
  return launch_status();
}

const char* copy_segments(const void* src, void* dst, const int32_t* start, const int32_t* len, int64_t P,
                          int64_t seg_rows, int64_t row_bytes, int64_t num_packed_rows, bool to_packed,
                          void* stream) {
  if (P == 0 || seg_rows == 0 || row_bytes == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  // The widest unit that divides the row size and both base addresses keeps every access aligned.
  const uint64_t bits = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) |
                        static_cast<uint64_t>(row_bytes);
  if (bits % 16 == 0) return launch_copy<uint4>(src, dst, start, len, P, seg_rows, row_bytes, num_packed_rows, to_packed, s);
  if (bits % 8 == 0) return launch_copy<uint2>(src, dst, start, len, P, seg_rows, row_bytes, num_packed_rows, to_packed, s);
  if (bits % 4 == 0) return launch_copy<uint32_t>(src, dst, start, len, P, seg_rows, row_bytes, num_packed_rows, to_packed, s);
  if (bits % 2 == 0) return launch_copy<uint16_t>(src, dst, start, len, P, seg_rows, row_bytes, num_packed_rows, to_packed, s);
  return launch_copy<uint8_t>(src, dst, start, len, P, seg_rows, row_bytes, num_packed_rows, to_packed, s);
}

const char* first_bad_segment(const int32_t* start, const int32_t* len, int64_t P, int64_t seg_rows,
                              int64_t num_rows, int64_t* first_bad, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (cudaMemsetAsync(first_bad, 0xff, sizeof(int64_t), s) != cudaSuccess) return launch_status();
  if (P == 0) return nullptr;
  const int64_t blocks = (P + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) return "vlmo_fast: too many pairs for one check launch";
  first_bad_segment_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
      start, len, P, seg_rows, num_rows, reinterpret_cast<unsigned long long*>(first_bad));
  return launch_status();
}

}  // namespace vlmo_fast::cuda
