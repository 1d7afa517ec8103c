// The packing ops of vlmo_fast._C: schemas, input validation, allocation, and the call into the CPU or CUDA
// kernels (packing_kernels.h).  One function per op serves both devices, so the checks are written once.
//
// Fake (meta) implementations and autograd live on the Python side (vlmo_fast/ops/_ext.py), which is where
// torch.compile looks for them.  Tensors here are already flattened by the Python wrappers: padded data
// (P, L, D), packed data (T, D), any dtype (the ops move rows and never compute on them).
#include "packing_kernels.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>
#include <vector>

#ifdef VLMO_FAST_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

// Runs `call` (an expression using `stream`) on the tensor's device and current stream.
#define VLMO_FAST_CUDA_LAUNCH(tensor, call)                                               \
  do {                                                                                    \
    const c10::cuda::CUDAGuard device_guard((tensor).device());                          \
    void* stream = c10::cuda::getCurrentCUDAStream().stream();                             \
    const char* err = (call);                                                             \
    TORCH_CHECK(err == nullptr, "vlmo_fast: CUDA kernel launch failed: ", err);           \
  } while (0)
#else
// Only the CPU kernels are registered in this build, so a CUDA tensor never gets here; keep a clear error.
#define VLMO_FAST_CUDA_LAUNCH(tensor, call) \
  TORCH_CHECK(false, "vlmo_fast._C was built without its CUDA kernels (torch had no CUDA at build time)")
#endif

namespace vlmo_fast {
namespace {

const int32_t* i32(const at::Tensor& t) { return t.const_data_ptr<int32_t>(); }

// Metadata vectors are (P,) int32 on the data's device; contiguity is enforced by the caller's .contiguous().
at::Tensor meta(const at::Tensor& t, int64_t P, const at::Device& dev, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == P, "vlmo_fast: ", name, " must have shape (", P, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kInt, "vlmo_fast: ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == dev, "vlmo_fast: ", name, " is on ", t.device(), " but the data is on ", dev);
  return t.contiguous();
}

// One kind of segment of every pair: pair p's rows start at start[p] and number len[p] (no len: seg_rows).
struct Segments {
  const at::Tensor& start;
  const at::Tensor* len;
  int64_t seg_rows;
  const char* what;
};

// Refuses segments outside the tensors (segment_ok), with the same message on both devices.  On the CPU the
// metadata is read where it lies; on CUDA a kernel finds the first bad pair of each kind and the host reads
// those few int64 in one transfer, so a CUDA op reads the device once, before any kernel trusts the metadata.
void check_segments(std::initializer_list<Segments> kinds, int64_t num_rows) {
  std::vector<int64_t> first_bad;
  const at::Tensor& any_start = kinds.begin()->start;
  if (any_start.is_cuda()) {
    at::Tensor found = at::empty({static_cast<int64_t>(kinds.size())}, any_start.options().dtype(at::kLong));
    [[maybe_unused]] int64_t* out = found.mutable_data_ptr<int64_t>();  // unused in a CPU-only build
    for (const Segments& k : kinds) {
      [[maybe_unused]] const int32_t* n = k.len ? i32(*k.len) : nullptr;
      VLMO_FAST_CUDA_LAUNCH(k.start, cuda::first_bad_segment(i32(k.start), n, k.start.size(0), k.seg_rows,
                                                             num_rows, out++, stream));
    }
    const at::Tensor host = found.cpu();
    first_bad.assign(host.const_data_ptr<int64_t>(), host.const_data_ptr<int64_t>() + host.numel());
  } else {
    for (const Segments& k : kinds)
      first_bad.push_back(cpu::first_bad_segment(i32(k.start), k.len ? i32(*k.len) : nullptr, k.start.size(0),
                                                 k.seg_rows, num_rows));
  }
  auto bad = first_bad.begin();
  for (const Segments& k : kinds) {
    const int64_t p = *bad++;
    if (p < 0) continue;
    const int64_t rows = k.len ? (*k.len)[p].item<int64_t>() : k.seg_rows, start = k.start[p].item<int64_t>();
    TORCH_CHECK(rows >= 0 && rows <= k.seg_rows, "vlmo_fast: pair ", p, " has ", rows, " ", k.what,
                " rows, outside [0, ", k.seg_rows, "]");
    TORCH_CHECK(false, "vlmo_fast: pair ", p, "'s ", k.what, " segment [", start, ", ", start + rows,
                ") lies outside the ", num_rows, " packed rows");
  }
}

// Every packed row index is int32 (PackedLayout), so the layout's rows must fit in one.
void check_row_count(int64_t text_rows, int64_t P, int64_t image_len) {
  const int64_t rows = text_rows + P * image_len;
  TORCH_CHECK(rows <= kInt32Limit, "vlmo_fast: the packed layout would have ", rows, " rows (", text_rows,
              " text + ", P, " pairs x ", image_len, " image), over the int32 row-index limit of ", kInt32Limit);
}

// Copies between the padded (P, L, D) tensor and the packed (T, D) tensor; see copy_segments.
void copy_segments(const at::Tensor& padded, const at::Tensor& packed, const at::Tensor& start, const at::Tensor* len,
                   bool to_packed) {
  const int64_t P = padded.size(0), L = padded.size(1), row_bytes = padded.size(2) * padded.element_size();
  if (P == 0 || L == 0 || row_bytes == 0) return;
  const void* src = to_packed ? padded.const_data_ptr() : packed.const_data_ptr();
  void* dst = to_packed ? packed.mutable_data_ptr() : padded.mutable_data_ptr();
  const int32_t* n = len ? i32(*len) : nullptr;
  if (padded.is_cuda()) {
    VLMO_FAST_CUDA_LAUNCH(padded, cuda::copy_segments(src, dst, i32(start), n, P, L, row_bytes, packed.size(0),
                                                      to_packed, stream));
  } else {
    cpu::copy_segments(src, dst, i32(start), n, P, L, row_bytes, to_packed);
  }
}

at::Tensor mask_lengths(const at::Tensor& mask) {
  TORCH_CHECK(mask.dim() == 2, "vlmo_fast: the text mask must be (P, L), got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte,
              "vlmo_fast: mask_lengths takes a bool or uint8 mask, got ", mask.scalar_type());
  TORCH_CHECK(mask.size(1) <= kInt32Limit, "vlmo_fast: the text mask has ", mask.size(1),
              " positions, over the int32 length limit of ", kInt32Limit);
  at::Tensor m = mask.contiguous();
  if (m.scalar_type() == at::kBool) m = m.view(at::kByte);  // bool is stored as one byte, 0 or 1
  const int64_t P = m.size(0), L = m.size(1);
  at::Tensor lens = at::empty({P}, m.options().dtype(at::kInt));
  if (P == 0) return lens;
  if (m.is_cuda()) {
    VLMO_FAST_CUDA_LAUNCH(m, cuda::mask_lengths(m.const_data_ptr<uint8_t>(), P, L, lens.mutable_data_ptr<int32_t>(),
                                                stream));
  } else {
    cpu::mask_lengths(m.const_data_ptr<uint8_t>(), P, L, lens.mutable_data_ptr<int32_t>());
  }
  return lens;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_plan(
    const at::Tensor& text_lens, int64_t image_len, int64_t text_q_len) {
  TORCH_CHECK(text_lens.dim() == 1 && text_lens.scalar_type() == at::kInt,
              "vlmo_fast: text_lens must be a 1-D int32 tensor, got ", text_lens.scalar_type(), " ", text_lens.sizes());
  TORCH_CHECK(image_len >= 0 && image_len <= kInt32Limit, "vlmo_fast: image_len must be in [0, 2^31), got ", image_len);
  TORCH_CHECK(text_q_len >= -1 && text_q_len <= kInt32Limit,
              "vlmo_fast: text_q_len must be -1 (drop padding) or a padded length >= 0, got ", text_q_len);
  const int64_t P = text_lens.size(0);
  TORCH_CHECK(P <= kInt32Limit, "vlmo_fast: ", P, " pairs, over the int32 pair-index limit of ", kInt32Limit);
  // What the host knows before the kernel runs: the image rows, and all rows when text segments are padded.
  check_row_count(text_q_len >= 0 ? P * text_q_len : 0, P, image_len);
  const at::Tensor lens = text_lens.contiguous();
  const auto opt = lens.options();
  at::Tensor start = at::empty({P}, opt), q = at::empty({P}, opt), k = at::empty({P}, opt);
  at::Tensor istart = at::empty({P}, opt), ilen = at::empty({P}, opt);
  at::Tensor stats = at::empty({4}, opt.dtype(at::kLong));
  auto out = [](at::Tensor& t) { return t.mutable_data_ptr<int32_t>(); };
  if (lens.is_cuda()) {
    VLMO_FAST_CUDA_LAUNCH(lens, cuda::plan(i32(lens), P, static_cast<int32_t>(image_len),
                                           static_cast<int32_t>(text_q_len), out(start), out(q), out(k), out(istart),
                                           out(ilen), stats.mutable_data_ptr<int64_t>(), stream));
  } else {
    cpu::plan(i32(lens), P, static_cast<int32_t>(image_len), static_cast<int32_t>(text_q_len), out(start), out(q),
              out(k), out(istart), out(ilen), stats.mutable_data_ptr<int64_t>());
    // The exact text rows are known now.  A negative length (stats[2] < 0) makes the plan invalid anyway;
    // the caller reports that.  On CUDA the caller reads stats once and plan_row_pair checks the total.
    const int64_t* st = stats.const_data_ptr<int64_t>();
    if (st[2] >= 0) check_row_count(st[0], P, image_len);
  }
  return {start, q, k, istart, ilen, stats};
}

at::Tensor plan_row_pair(const at::Tensor& text_start, const at::Tensor& text_q_len, const at::Tensor& image_start,
                         int64_t image_len, int64_t num_rows) {
  const int64_t P = text_start.size(0);
  const at::Device dev = text_start.device();
  TORCH_CHECK(image_len >= 0 && num_rows >= 0, "vlmo_fast: image_len and num_rows must be >= 0, got ", image_len,
              " and ", num_rows);
  TORCH_CHECK(num_rows <= kInt32Limit, "vlmo_fast: the packed layout has ", num_rows,
              " rows, over the int32 row-index limit of ", kInt32Limit);
  TORCH_CHECK(P <= kInt32Limit, "vlmo_fast: ", P, " pairs, over the int32 pair-index limit of ", kInt32Limit);
  const at::Tensor s = meta(text_start, P, dev, "text_start"), q = meta(text_q_len, P, dev, "text_q_len");
  const at::Tensor is = meta(image_start, P, dev, "image_start");
  check_segments({{s, &q, kInt32Limit, "text"}, {is, nullptr, image_len, "image"}}, num_rows);
  at::Tensor row_pair = at::empty({num_rows}, s.options());
  if (P == 0 || num_rows == 0) return row_pair;
  if (s.is_cuda()) {
    VLMO_FAST_CUDA_LAUNCH(s, cuda::row_pair(i32(s), i32(q), i32(is), P, static_cast<int32_t>(image_len), num_rows,
                                            row_pair.mutable_data_ptr<int32_t>(), stream));
  } else {
    cpu::row_pair(i32(s), i32(q), i32(is), P, static_cast<int32_t>(image_len), row_pair.mutable_data_ptr<int32_t>());
  }
  return row_pair;
}

at::Tensor pack_rows(const at::Tensor& text, const std::optional<at::Tensor>& image, const at::Tensor& text_start,
                     const at::Tensor& text_q_len, const at::Tensor& image_start, int64_t num_rows) {
  TORCH_CHECK(text.dim() == 3, "vlmo_fast: padded text must be (P, L, D), got ", text.sizes());
  const int64_t P = text.size(0), D = text.size(2);
  const at::Device dev = text.device();
  TORCH_CHECK(num_rows >= 0, "vlmo_fast: num_rows must be >= 0, got ", num_rows);
  const at::Tensor s = meta(text_start, P, dev, "text_start"), q = meta(text_q_len, P, dev, "text_q_len");
  const at::Tensor is = meta(image_start, P, dev, "image_start");
  const at::Tensor t = text.contiguous();
  if (!image.has_value()) {
    check_segments({{s, &q, t.size(1), "text"}}, num_rows);
    at::Tensor out = at::empty({num_rows, D}, t.options());
    copy_segments(t, out, s, &q, /*to_packed=*/true);
    return out;
  }
  const at::Tensor im = image->contiguous();
  TORCH_CHECK(im.dim() == 3 && im.size(0) == P && im.size(2) == D, "vlmo_fast: image must be (", P, ", N, ", D,
              ") to match the text, got ", im.sizes());
  TORCH_CHECK(im.scalar_type() == t.scalar_type() && im.device() == dev,
              "vlmo_fast: image and text must share dtype and device");
  check_segments({{s, &q, t.size(1), "text"}, {is, nullptr, im.size(1), "image"}}, num_rows);
  at::Tensor out = at::empty({num_rows, D}, t.options());
  copy_segments(t, out, s, &q, /*to_packed=*/true);
  copy_segments(im, out, is, nullptr, /*to_packed=*/true);
  return out;
}

std::tuple<at::Tensor, at::Tensor> unpack_rows(const at::Tensor& x, const at::Tensor& text_start,
                                               const at::Tensor& text_q_len, const at::Tensor& image_start,
                                               int64_t padded_len, int64_t image_len) {
  TORCH_CHECK(x.dim() == 2, "vlmo_fast: packed rows must be (T, D), got ", x.sizes());
  TORCH_CHECK(padded_len >= 0 && image_len >= 0, "vlmo_fast: padded_len and image_len must be >= 0, got ",
              padded_len, " and ", image_len);
  const int64_t P = text_start.size(0), D = x.size(1), T = x.size(0);
  const at::Device dev = x.device();
  const at::Tensor s = meta(text_start, P, dev, "text_start"), q = meta(text_q_len, P, dev, "text_q_len");
  const at::Tensor is = meta(image_start, P, dev, "image_start");
  const at::Tensor xc = x.contiguous();
  at::Tensor text = at::empty({P, padded_len, D}, xc.options());
  at::Tensor image = at::empty({P, image_len, D}, xc.options());
  check_segments({{s, &q, padded_len, "text"}, {is, nullptr, image_len, "image"}}, T);
  copy_segments(text, xc, s, &q, /*to_packed=*/false);
  copy_segments(image, xc, is, nullptr, /*to_packed=*/false);
  return {text, image};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vlmo_fast, m) {
  m.def("mask_lengths(Tensor mask) -> Tensor");
  m.def("pack_plan(Tensor text_lens, int image_len, int text_q_len) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("plan_row_pair(Tensor text_start, Tensor text_q_len, Tensor image_start, int image_len, int num_rows) "
        "-> Tensor");
  m.def("pack_rows(Tensor text, Tensor? image, Tensor text_start, Tensor text_q_len, Tensor image_start, "
        "int num_rows) -> Tensor");
  m.def("unpack_rows(Tensor x, Tensor text_start, Tensor text_q_len, Tensor image_start, int padded_len, "
        "int image_len) -> (Tensor, Tensor)");
}

#define VLMO_FAST_REGISTER_KERNELS(m)            \
  m.impl("mask_lengths", &mask_lengths);         \
  m.impl("pack_plan", &pack_plan);               \
  m.impl("plan_row_pair", &plan_row_pair);       \
  m.impl("pack_rows", &pack_rows);               \
  m.impl("unpack_rows", &unpack_rows)

TORCH_LIBRARY_IMPL(vlmo_fast, CPU, m) { VLMO_FAST_REGISTER_KERNELS(m); }

#ifdef VLMO_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(vlmo_fast, CUDA, m) { VLMO_FAST_REGISTER_KERNELS(m); }
#endif

}  // namespace vlmo_fast
