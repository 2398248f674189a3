// The window_attention kernels' argument block, shared by the CUDA launchers
// (window_attention.cu) and the pybind11 binding (window_attention_binding.cpp). Host-only C++:
// plain pointers, sizes and strides, no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace vitpose {
namespace wa {

// A (B, H, rows, D) operand: element pointer and strides in elements of batch, head and row; the
// head dim must be contiguous (stride 1) and every row 16-byte aligned (strides multiples of 8),
// which the Python launcher guarantees, copying where a view does not qualify.
struct Operand {
  const void* ptr = nullptr;
  int64_t sb = 0, sh = 0, sn = 0;
};

struct Params {
  // ---- inputs
  Operand q, k, v;    // (B, H, N, D)
  Operand kp, vp;     // pooled keys / values (B, H, P, D); ptr null when P == 0
  const float* qrh = nullptr;  // q . rel_pos_h^T for grid queries: (B, H, Hg*Wg, Rh) contiguous, or null
  const float* qrw = nullptr;  // q . rel_pos_w^T: (B, H, Hg*Wg, Rw) contiguous, or null
  // ---- forward outputs
  void* out = nullptr;   // (B, H, N, D) contiguous, q's dtype
  float* lse = nullptr;  // (B, H, N) natural-log logsumexp of each query row
  // ---- backward
  Operand dout;                 // (B, H, N, D)
  float* delta = nullptr;       // (B, H, N) workspace: rowsum(dout * out)
  void* dq = nullptr;           // (B, H, N, D) contiguous
  void* dk = nullptr;           // (B, H, N, D) contiguous
  void* dv = nullptr;           // (B, H, N, D) contiguous
  void* dkp = nullptr;          // (B, H, P, D) contiguous, or null when P == 0
  void* dvp = nullptr;          // (B, H, P, D) contiguous
  float* dqrh = nullptr;        // (B, H, Hg*Wg, Rh) contiguous, or null
  float* dqrw = nullptr;        // (B, H, Hg*Wg, Rw) contiguous, or null
  // ---- sizes
  int B = 0, H = 0, N = 0, D = 0;
  int G = 0;           // global tokens (the first G of N)
  int Hg = 0, Wg = 0;  // grid
  int wh = 0, ww = 0;  // window (the grid for full attention)
  int sh = 0, sw = 0;  // shift
  int P = 0;           // pooled tokens (0 without pooling)
  int Rh = 0, Rw = 0;  // rows of rel_pos_h / rel_pos_w (0 when absent)
  float scale = 1.f;
};

// Host entry points (window_attention.cu). dtype: DType code (fp16 or bf16). Throw
// std::runtime_error (invalid arguments, CUDA errors) naming the op.
void forward(const Params& p, int dtype, cudaStream_t stream);
void backward(const Params& p, int dtype, cudaStream_t stream);

}  // namespace wa
}  // namespace vitpose
