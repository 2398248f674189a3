// Python binding of the masked_attention CUDA kernels. Everything crosses as plain ints: an operand
// is [data_ptr, stride_b, stride_h, stride_n] (strides in elements, head dim contiguous), the mask
// [data_ptr, stride_b, stride_h, stride_q] in int32 words (0 strides broadcast; data_ptr 0: no
// mask), buffers are data pointers, the stream is cudaStream_t as an int. The Python side is
// vitpose_kernels/cuda_backend/masked_attention.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "masked_attention_params.cuh"

namespace py = pybind11;
using vitpose::ma::Operand;
using vitpose::ma::Params;

namespace {

using Vec = std::vector<std::int64_t>;

void* as_mut(std::int64_t p) { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(p)); }
float* as_f32(std::int64_t p) { return static_cast<float*>(as_mut(p)); }

Operand operand(const Vec& o, const char* name) {
  if (o.size() != 4)
    throw std::invalid_argument(std::string("masked_attention: operand ") + name +
                                " must be [data_ptr, stride_b, stride_h, stride_n]");
  Operand r;
  r.ptr = as_mut(o[0]);
  r.sb = o[1];
  r.sh = o[2];
  r.sn = o[3];
  return r;
}

int as_int(std::int64_t x) {
  if (x < 0 || x > 0x7fffffff) throw std::invalid_argument("masked_attention: size out of int range");
  return static_cast<int>(x);
}

// The forward's arguments, which the backward takes too (it recomputes the probabilities).
Params forward_params(const Vec& q, const Vec& k, const Vec& v, const Vec& mask, std::int64_t out,
                      std::int64_t lse, const Vec& sizes, double scale) {
  if (mask.size() != 4) throw std::invalid_argument("masked_attention: mask must be [data_ptr, stride_b, stride_h, stride_q]");
  if (sizes.size() != 5) throw std::invalid_argument("masked_attention: sizes must be [B, H, Lq, Lk, D]");
  Params p;
  p.q = operand(q, "q");
  p.k = operand(k, "k");
  p.v = operand(v, "v");
  p.mask = static_cast<const std::int32_t*>(as_mut(mask[0]));
  p.msb = mask[1];
  p.msh = mask[2];
  p.msq = mask[3];
  p.out = as_mut(out);
  p.lse = as_f32(lse);
  int* dst[5] = {&p.B, &p.H, &p.Lq, &p.Lk, &p.D};
  for (int i = 0; i < 5; ++i) *dst[i] = as_int(sizes[i]);
  p.scale = static_cast<float>(scale);
  return p;
}

cudaStream_t stream_of(std::int64_t stream) { return vitpose::as_stream(static_cast<std::uintptr_t>(stream)); }

void fwd(const Vec& q, const Vec& k, const Vec& v, const Vec& mask, std::int64_t out, std::int64_t lse,
         const Vec& sizes, double scale, int dtype, std::int64_t stream) {
  vitpose::ma::forward(forward_params(q, k, v, mask, out, lse, sizes, scale), dtype, stream_of(stream));
}

void bwd(const Vec& q, const Vec& k, const Vec& v, const Vec& mask, const Vec& dout, std::int64_t out,
         std::int64_t lse, std::int64_t delta, std::int64_t dq, std::int64_t dk, std::int64_t dv, const Vec& sizes,
         double scale, int dtype, std::int64_t stream) {
  Params p = forward_params(q, k, v, mask, out, lse, sizes, scale);
  p.dout = operand(dout, "dout");
  p.delta = as_f32(delta);
  p.dq = as_mut(dq);
  p.dk = as_mut(dk);
  p.dv = as_mut(dv);
  vitpose::ma::backward(p, dtype, stream_of(stream));
}

}  // namespace

void bind_masked_attention(py::module_& m) {
  m.def("masked_attention_fwd", &fwd, py::call_guard<py::gil_scoped_release>(),
        "Masked cross-attention forward: writes out (B, H, Lq, D) and lse (B, H, Lq) float32 (natural log, "
        "+inf for rows without keys).",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("out"), py::arg("lse"), py::arg("sizes"),
        py::arg("scale"), py::arg("dtype"), py::arg("stream"));
  m.def("masked_attention_bwd", &bwd, py::call_guard<py::gil_scoped_release>(),
        "Masked cross-attention backward (deterministic): writes dq, dk, dv; delta (B, H, Lq) float32 is workspace.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("dout"), py::arg("out"), py::arg("lse"),
        py::arg("delta"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("sizes"), py::arg("scale"),
        py::arg("dtype"), py::arg("stream"));
}
