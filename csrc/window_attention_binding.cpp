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
using vitpose::wa::OutOperand;
using vitpose::wa::Params;

namespace {

using Vec = std::vector<std::int64_t>;

const void* as_ptr(std::int64_t p) { return reinterpret_cast<const void*>(static_cast<std::uintptr_t>(p)); }
void* as_mut(std::int64_t p) { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(p)); }
float* as_f32(std::int64_t p) { return static_cast<float*>(as_mut(p)); }

void check_operand_list(const Vec& o, const char* name) {
  if (o.size() != 4)
    throw std::invalid_argument(std::string("window_attention: operand ") + name +
                                " must be [data_ptr, stride_b, stride_h, stride_n]");
}

Operand operand(const Vec& o, const char* name) {
  check_operand_list(o, name);
  Operand r;
  r.ptr = as_ptr(o[0]);
  r.sb = o[1];
  r.sh = o[2];
  r.sn = o[3];
  return r;
}

OutOperand out_operand(const Vec& o, const char* name) {
  check_operand_list(o, name);
  OutOperand r;
  r.ptr = as_mut(o[0]);
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
Params sized(const Vec& s, double scale, int resident) {
  if (s.size() != 14)
    throw std::invalid_argument("window_attention: sizes must be [B, H, N, D, Hg, Wg, wh, ww, sh, sw, G, P, Rh, Rw]");
  Params p;
  int* dst[14] = {&p.B, &p.H, &p.N, &p.D, &p.Hg, &p.Wg, &p.wh, &p.ww, &p.sh, &p.sw, &p.G, &p.P, &p.Rh, &p.Rw};
  for (int i = 0; i < 14; ++i) *dst[i] = as_int(s[i]);
  p.scale = static_cast<float>(scale);
  p.resident = resident;
  return p;
}

// The forward's arguments, which the backward takes too (it recomputes the probabilities).
Params forward_params(const Vec& q, const Vec& k, const Vec& v, std::int64_t rel_h, std::int64_t rel_w,
                      std::int64_t out, std::int64_t lse, std::int64_t extra, const Vec& sizes, double scale,
                      int resident) {
  Params p = sized(sizes, scale, resident);
  p.q = operand(q, "q");
  p.k = operand(k, "k");
  p.v = operand(v, "v");
  p.rel_h = as_ptr(rel_h);
  p.rel_w = as_ptr(rel_w);
  p.out = as_mut(out);
  p.lse = as_f32(lse);
  p.extra = as_mut(extra);
  return p;
}

cudaStream_t stream_of(std::int64_t stream) { return vitpose::as_stream(static_cast<std::uintptr_t>(stream)); }

void fwd(const Vec& q, const Vec& k, const Vec& v, std::int64_t rel_h, std::int64_t rel_w, std::int64_t out,
         std::int64_t lse, std::int64_t extra, const Vec& sizes, double scale, int dtype, std::int64_t stream,
         int resident) {
  vitpose::wa::forward(forward_params(q, k, v, rel_h, rel_w, out, lse, extra, sizes, scale, resident), dtype,
                       stream_of(stream));
}

void bwd(const Vec& q, const Vec& k, const Vec& v, const Vec& dout, std::int64_t rel_h, std::int64_t rel_w,
         std::int64_t out, std::int64_t lse, std::int64_t extra, const Vec& dq, const Vec& dk, const Vec& dv,
         std::int64_t drel_h, std::int64_t drel_w, std::int64_t work, const Vec& sizes, double scale, int dtype,
         std::int64_t stream, int resident) {
  Params p = forward_params(q, k, v, rel_h, rel_w, out, lse, extra, sizes, scale, resident);
  p.dout = operand(dout, "dout");
  p.dq = out_operand(dq, "dq");
  p.dk = out_operand(dk, "dk");
  p.dv = out_operand(dv, "dv");
  p.drel_h = as_f32(drel_h);
  p.drel_w = as_f32(drel_w);
  p.work = as_f32(work);
  vitpose::wa::backward(p, dtype, stream_of(stream));
}

}  // namespace

void bind_window_attention(py::module_& m) {
  m.def("window_attention_fwd", &fwd, py::call_guard<py::gil_scoped_release>(),
        "Fused windowed attention forward: writes out (B, H, N, D), lse (B, H, N) float32 (natural log) "
        "and extra (2, B, H, P + G, D), the pooled and global keys/values.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("rel_h"), py::arg("rel_w"), py::arg("out"), py::arg("lse"),
        py::arg("extra"), py::arg("sizes"), py::arg("scale"), py::arg("dtype"), py::arg("stream"),
        py::arg("resident") = 1);
  m.def("window_attention_bwd", &bwd, py::call_guard<py::gil_scoped_release>(),
        "Fused windowed attention backward (deterministic): writes dq, dk, dv (through their strides) and "
        "drel_h, drel_w (float32); work is a float32 workspace of window_attention_workspace(sizes) elements.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("dout"), py::arg("rel_h"), py::arg("rel_w"), py::arg("out"),
        py::arg("lse"), py::arg("extra"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("drel_h"),
        py::arg("drel_w"), py::arg("work"), py::arg("sizes"), py::arg("scale"), py::arg("dtype"), py::arg("stream"),
        py::arg("resident") = 1);
  m.def(
      "window_attention_workspace",
      [](const Vec& sizes, int resident) { return vitpose::wa::workspace_floats(sized(sizes, 1.0, resident)); },
      "float32 elements of the backward's workspace for these sizes.", py::arg("sizes"), py::arg("resident") = 1);
  m.def(
      "window_attention_smem",
      [](const Vec& sizes, int dtype, int resident) {
        return vitpose::wa::max_smem_bytes(sized(sizes, 1.0, resident), dtype);
      },
      "Dynamic shared memory (bytes) the largest launch of a call with these sizes needs.", py::arg("sizes"),
      py::arg("dtype"), py::arg("resident") = 1);
}
