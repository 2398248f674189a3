// The window_attention kernels' argument block and launch plan, shared by the CUDA launchers
// (window_attention.cu) and the pybind11 binding (window_attention_binding.cpp). Host-only C++:
// plain pointers, sizes and strides, no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace vitpose {
namespace wa {

// A (B, H, rows, D) operand read or written through its strides (elements) of batch, head and
// row; the head dim is contiguous and every row 16-byte aligned (strides multiples of 8), which
// the Python launcher guarantees (copying only a view that does not qualify).
struct Operand {
  const void* ptr = nullptr;
  int64_t sb = 0, sh = 0, sn = 0;
};
struct OutOperand {
  void* ptr = nullptr;
  int64_t sb = 0, sh = 0, sn = 0;
};

struct Params {
  // ---- inputs
  Operand q, k, v;                                   // (B, H, N, D): views of a packed qkv are read in place
  const void* rel_h = nullptr, *rel_w = nullptr;     // (Rh, D), (Rw, D) contiguous, already in q's dtype
  // ---- forward outputs (the backward's saved inputs)
  void* out = nullptr;    // (B, H, N, D) contiguous, q's dtype
  float* lse = nullptr;   // (B, H, N) natural-log logsumexp per query row
  void* extra = nullptr;  // (2, B, H, E, D) contiguous, q's dtype: the E = P + G extra keys / values
  // ---- backward
  Operand dout;                       // (B, H, N, D)
  OutOperand dq, dk, dv;              // (B, H, N, D), the caller's layout (strided views of one packed
                                      // (B, N, 3, H, D) gradient when q, k, v were views of one qkv)
  float* drel_h = nullptr;            // (Rh, D) float32 gradient of rel_pos_h, or null
  float* drel_w = nullptr;            // (Rw, D)
  float* work = nullptr;              // float32 workspace of workspace_floats(...) elements
  // ---- sizes: [B, H, N, D] + the op's geometry [Hg, Wg, wh, ww, sh, sw, G] + [P, Rh, Rw]
  int B = 0, H = 0, N = 0, D = 0;
  int Hg = 0, Wg = 0, wh = 0, ww = 0, sh = 0, sw = 0, G = 0;
  int P = 0;           // pooled tokens (0 without pooling)
  int Rh = 0, Rw = 0;  // rows of rel_pos_h / rel_pos_w (0 when absent)
  float scale = 1.f;
  int resident = 1;  // 0: never take the head-resident path (tests of the streamed kernels on its shapes)
};

// Host entry points (window_attention.cu). dtype: DType code (fp16 or bf16). They throw
// std::invalid_argument / std::runtime_error (bad arguments, CUDA errors) naming the op.
void forward(const Params& p, int dtype, cudaStream_t stream);
void backward(const Params& p, int dtype, cudaStream_t stream);
// float32 elements of the backward's workspace, and the dynamic shared memory (bytes) the largest
// launch of the call needs (the Python side checks it against the device before choosing us).
int64_t workspace_floats(const Params& p);
int64_t max_smem_bytes(const Params& p, int dtype);

}  // namespace wa
}  // namespace vitpose
