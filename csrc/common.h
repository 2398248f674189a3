// Shared helpers for the CUDA kernels: error checking that turns every CUDA failure into a
// C++ exception (pybind11 maps it to a Python RuntimeError naming the op), and the tensor
// descriptor the Python side passes in place of a torch.Tensor.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace vitpose {

// dtype codes shared with vitpose_kernels/cuda_backend/_launch.py
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline void check_cuda(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("vitpose_kernels.") + op + ": " + what + ": " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
}

// Call after every kernel launch: catches bad launch configurations at once.
inline void check_launch(const char* op) { check_cuda(cudaGetLastError(), op, "kernel launch failed"); }

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace vitpose

#define VITPOSE_CUDA_CHECK(op, expr) ::vitpose::check_cuda((expr), (op), #expr)
