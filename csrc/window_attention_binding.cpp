// Python binding of the window_attention CUDA kernels. Everything crosses as plain ints: an
// operand is [data_ptr, stride_b, stride_h, stride_n] (strides in elements, head dim contiguous),
// buffers are data pointers (0 = absent), the stream is cudaStream_t as an int. The Python side is
// vitpose_kernels/cuda_backend/window_attention.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "window_attention_params.cuh"

namespace py = pybind11;
using vitpose::wa::Operand;
using vitpose::wa::Params;

namespace {

const void* as_ptr(std::int64_t p) { return reinterpret_cast<const void*>(static_cast<std::uintptr_t>(p)); }
void* as_mut(std::int64_t p) { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(p)); }
float* as_f32(std::int64_t p) { return static_cast<float*>(as_mut(p)); }

Operand operand(const std::vector<std::int64_t>& o, const char* name) {
  if (o.size() != 4)
    throw std::invalid_argument(std::string("window_attention: operand ") + name +
                                " must be [data_ptr, stride_b, stride_h, stride_n]");
  Operand r;
  r.ptr = as_ptr(o[0]);
  r.sb = o[1];
  r.sh = o[2];
  r.sn = o[3];
  return r;
}

int as_int(std::int64_t x) {
  if (x < 0 || x > 0x7fffffff) throw std::invalid_argument("window_attention: size out of int range");
  return static_cast<int>(x);
}

// sizes = [B, H, N, D] + the op's geometry [Hg, Wg, wh, ww, sh, sw, G] (the order of the op schema
// shared by every backend, vitpose_kernels/_attention_ops.py) + [P, Rh, Rw]
void set_sizes(Params& p, const std::vector<std::int64_t>& s) {
  if (s.size() != 14)
    throw std::invalid_argument("window_attention: sizes must be [B, H, N, D, Hg, Wg, wh, ww, sh, sw, G, P, Rh, Rw]");
  int* dst[14] = {&p.B, &p.H, &p.N, &p.D, &p.Hg, &p.Wg, &p.wh, &p.ww, &p.sh, &p.sw, &p.G, &p.P, &p.Rh, &p.Rw};
  for (int i = 0; i < 14; ++i) *dst[i] = as_int(s[i]);
}

using Vec = std::vector<std::int64_t>;

// The forward's arguments, which the backward takes too (it recomputes the probabilities).
Params forward_params(const Vec& q, const Vec& k, const Vec& v, const Vec& kp, const Vec& vp, std::int64_t qrh,
                      std::int64_t qrw, std::int64_t out, std::int64_t lse, const Vec& sizes, double scale) {
  Params p;
  p.q = operand(q, "q");
  p.k = operand(k, "k");
  p.v = operand(v, "v");
  p.kp = operand(kp, "kp");
  p.vp = operand(vp, "vp");
  p.qrh = as_f32(qrh);
  p.qrw = as_f32(qrw);
  p.out = as_mut(out);
  p.lse = as_f32(lse);
  set_sizes(p, sizes);
  p.scale = static_cast<float>(scale);
  return p;
}

cudaStream_t stream_of(std::int64_t stream) { return vitpose::as_stream(static_cast<std::uintptr_t>(stream)); }

void fwd(const Vec& q, const Vec& k, const Vec& v, const Vec& kp, const Vec& vp, std::int64_t qrh,
         std::int64_t qrw, std::int64_t out, std::int64_t lse, const Vec& sizes, double scale, int dtype,
         std::int64_t stream) {
  vitpose::wa::forward(forward_params(q, k, v, kp, vp, qrh, qrw, out, lse, sizes, scale), dtype, stream_of(stream));
}

void bwd(const Vec& q, const Vec& k, const Vec& v, const Vec& kp, const Vec& vp, const Vec& dout,
         std::int64_t qrh, std::int64_t qrw, std::int64_t out, std::int64_t lse, std::int64_t delta,
         std::int64_t dq, std::int64_t dk, std::int64_t dv, std::int64_t dkp, std::int64_t dvp,
         std::int64_t dqrh, std::int64_t dqrw, const Vec& sizes, double scale, int dtype, std::int64_t stream) {
  Params p = forward_params(q, k, v, kp, vp, qrh, qrw, out, lse, sizes, scale);
  p.dout = operand(dout, "dout");
  p.delta = as_f32(delta);
  p.dq = as_mut(dq);
  p.dk = as_mut(dk);
  p.dv = as_mut(dv);
  p.dkp = as_mut(dkp);
  p.dvp = as_mut(dvp);
  p.dqrh = as_f32(dqrh);
  p.dqrw = as_f32(dqrw);
  vitpose::wa::backward(p, dtype, stream_of(stream));
}

}  // namespace

void bind_window_attention(py::module_& m) {
  m.def("window_attention_fwd", &fwd, py::call_guard<py::gil_scoped_release>(),
        "Fused windowed attention forward: writes out (B, H, N, D) and lse (B, H, N) float32.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kp"), py::arg("vp"), py::arg("qrh"), py::arg("qrw"),
        py::arg("out"), py::arg("lse"), py::arg("sizes"), py::arg("scale"), py::arg("dtype"), py::arg("stream"));
  m.def("window_attention_bwd", &bwd, py::call_guard<py::gil_scoped_release>(),
        "Fused windowed attention backward (deterministic): writes dq, dk, dv, dkp, dvp, dqrh, dqrw; "
        "delta (B, H, N) float32 is workspace.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("kp"), py::arg("vp"), py::arg("dout"), py::arg("qrh"),
        py::arg("qrw"), py::arg("out"), py::arg("lse"), py::arg("delta"), py::arg("dq"), py::arg("dk"),
        py::arg("dv"), py::arg("dkp"), py::arg("dvp"), py::arg("dqrh"), py::arg("dqrw"), py::arg("sizes"),
        py::arg("scale"), py::arg("dtype"), py::arg("stream"));
}
