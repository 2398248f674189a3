// Python binding of the simple_decoder CUDA kernels: plain ints in (pointers, sizes, element
// strides, dtype code, stream), nothing of PyTorch. Launchers: vitpose_kernels/cuda_backend/simple_decoder.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

namespace py = pybind11;

namespace vitpose {
void simple_decoder_forward(std::uintptr_t taps, std::array<int64_t, 4> ts, std::uintptr_t bias, std::uintptr_t out,
                            int B, int K, int h, int w, int ksize, int scale_factor, int dtype, std::uintptr_t stream);
void simple_decoder_backward(std::uintptr_t grad, std::array<int64_t, 4> gs, std::uintptr_t dtaps,
                             std::array<int64_t, 4> ds, int B, int K, int h, int w, int ksize, int scale_factor,
                             int dtype, std::uintptr_t stream);
}  // namespace vitpose

void bind_simple_decoder(py::module_& m) {
  m.def("simple_decoder_forward", &vitpose::simple_decoder_forward,
        "out (B, K, s*h, s*w, contiguous) = bias + shift-sum over the k*k taps of the bilinearly upsampled tap "
        "maps taps (B, k*k*K, h, w; tap t of channel o at t*K + o)",
        py::arg("taps"), py::arg("taps_strides"), py::arg("bias"), py::arg("out"), py::arg("B"), py::arg("K"),
        py::arg("h"), py::arg("w"), py::arg("ksize"), py::arg("scale_factor"), py::arg("dtype"), py::arg("stream"));
  m.def("simple_decoder_backward", &vitpose::simple_decoder_backward,
        "dtaps (k*k*K, B, h, w) = transpose of simple_decoder_forward applied to grad (B, K, s*h, s*w)",
        py::arg("grad"), py::arg("grad_strides"), py::arg("dtaps"), py::arg("dtaps_strides"), py::arg("B"),
        py::arg("K"), py::arg("h"), py::arg("w"), py::arg("ksize"), py::arg("scale_factor"), py::arg("dtype"),
        py::arg("stream"));
}
