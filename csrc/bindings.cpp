// The pybind11 module vitpose_kernels._C. Each op has its own *_binding.cpp with a bind_<op>()
// function; this file only assembles them and reports what was built.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include "build_info.h"
#include "common.h"

namespace py = pybind11;

void bind_window_attention(py::module_& m);
void bind_simple_decoder(py::module_& m);
void bind_decode_heatmaps(py::module_& m);
void bind_udp_targets(py::module_& m);
void bind_masked_attention(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "vitpose_kernels CUDA kernels (raw pointers + strides + stream; no PyTorch linkage)";
  m.def("build_info", []() {
    py::dict d;
    d["archs"] = VITPOSE_CUDA_ARCHS;
    d["nvcc"] = VITPOSE_NVCC_VERSION;
    d["cudart"] = CUDART_VERSION;
    return d;
  });
  // Number of visible devices, or the CUDA error that stands in the way (e.g. no driver).
  m.def("device_status", []() {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    py::dict d;
    d["count"] = (err == cudaSuccess) ? n : 0;
    d["error"] = (err == cudaSuccess) ? std::string() : std::string(cudaGetErrorString(err));
    if (err != cudaSuccess) cudaGetLastError();  // clear the sticky-free error state
    return d;
  });
  bind_window_attention(m);
  bind_simple_decoder(m);
  bind_decode_heatmaps(m);
  bind_udp_targets(m);
  bind_masked_attention(m);
}
