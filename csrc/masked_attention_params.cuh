// The masked_attention kernels' argument block, shared by the CUDA launchers (masked_attention.cu)
// and the pybind11 binding (masked_attention_binding.cpp). Host-only C++: plain pointers, sizes and
// strides, no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "window_attention_params.cuh"  // wa::Operand: a (B, H, rows, D) operand read through strides

namespace vitpose {
namespace ma {

using wa::Operand;  // head dim contiguous, rows 16-byte aligned (the Python launcher guarantees it)

struct Params {
  // ---- inputs
  Operand q;     // (B, H, Lq, D)
  Operand k, v;  // (B, H, Lk, D)
  // Bit-packed key mask: int32 words (B|1, H|1, Lq|1, ceil(Lk/32)), bit i of word w = key 32*w + i
  // (1: the query may attend to the key). Word (b, h, i, w) at mask + b*msb + h*msh + i*msq + w;
  // zero strides broadcast. Null: every key is allowed.
  const int32_t* mask = nullptr;
  int64_t msb = 0, msh = 0, msq = 0;
  // ---- forward outputs
  void* out = nullptr;   // (B, H, Lq, D) contiguous, q's dtype
  float* lse = nullptr;  // (B, H, Lq) natural-log logsumexp; +inf for a row without keys
  // ---- backward
  Operand dout;            // (B, H, Lq, D)
  float* delta = nullptr;  // (B, H, Lq) workspace: rowsum(dout * out)
  void* dq = nullptr;      // (B, H, Lq, D) contiguous
  void* dk = nullptr;      // (B, H, Lk, D) contiguous
  void* dv = nullptr;      // (B, H, Lk, D) contiguous
  // ---- sizes
  int B = 0, H = 0, Lq = 0, Lk = 0, D = 0;
  float scale = 1.f;
};

// Host entry points (masked_attention.cu). dtype: DType code (fp16 or bf16). Throw
// std::runtime_error / std::invalid_argument naming the op.
void forward(const Params& p, int dtype, cudaStream_t stream);
void backward(const Params& p, int dtype, cudaStream_t stream);

}  // namespace ma
}  // namespace vitpose
