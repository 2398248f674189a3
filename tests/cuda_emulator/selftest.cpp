// Self-test of the emulator: the PTX models agree with plain matrix products when the fragments
// are addressed as the PTX ISA tables say, and the error paths fire. Run by vpemu_selftest()
// (tests/test_cuda_emulated.py). Written in CUDA style against vpemu.h.
#include <cstdio>
#include <stdexcept>
#include <string>

#include "vpemu.h"

namespace {

using vpemu::MmaType;

// smem layout (16-bit elements, rows padded to 24 so row addresses are 48 bytes apart):
//   A [16][24] row-major; Bt [8][24] (B^T, n-major); Bk [16][24] (B, k-major, 8 columns used)
constexpr int kLd = 24;

struct MmaArgs {
  const uint16_t* A;   // 16x16 row-major bits
  const uint16_t* B;   // 16x8 row-major bits (k, n)
  float* D_frag;       // [32][4] via ldmatrix non-trans B
  float* D_frag_t;     // [32][4] via ldmatrix .trans B
  MmaType t;
};

void mma_kernel(MmaArgs a) {
  uint16_t* s = reinterpret_cast<uint16_t*>(vpemu::dynamic_smem());
  uint16_t* sA = s;
  uint16_t* sBt = sA + 16 * kLd;
  uint16_t* sBk = sBt + 8 * kLd;
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * 16; i += 32) sA[(i / 16) * kLd + i % 16] = a.A[i];
  for (int i = lane; i < 16 * 8; i += 32) {
    const int k = i / 8, n = i % 8;
    sBt[n * kLd + k] = a.B[i];
    sBk[k * kLd + n] = a.B[i];
  }
  __syncthreads();
  // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
  uint32_t ra[4], rb[4], rbt[4];
  const int m = lane / 8, r = lane % 8;
  vpemu::ptx_ldmatrix_m8n8_b16(ra, 4, false, __cvta_generic_to_shared(sA + ((m & 1) * 8 + r) * kLd + (m >> 1) * 8));
  // B from B^T rows (n), k halves 0-7 and 8-15: x2, lanes 0-15 give the addresses.
  vpemu::ptx_ldmatrix_m8n8_b16(rb, 2, false, __cvta_generic_to_shared(sBt + r * kLd + (m & 1) * 8));
  // B from k-major rows with .trans: matrix 0 = k rows 0-7, matrix 1 = k rows 8-15.
  vpemu::ptx_ldmatrix_m8n8_b16(rbt, 2, true, __cvta_generic_to_shared(sBk + ((m & 1) * 8 + r) * kLd));
  float c[4] = {0.25f, -0.5f, 1.f, 2.f}, d[4], dt[4];
  vpemu::ptx_mma_m16n8k16_f32(a.t, d, ra, rb, c);
  vpemu::ptx_mma_m16n8k16_f32(a.t, dt, ra, rbt, c);
  for (int i = 0; i < 4; ++i) a.D_frag[lane * 4 + i] = d[i], a.D_frag_t[lane * 4 + i] = dt[i];
}

std::string check_mma(MmaType t) {
  uint16_t A[256], B[128];
  double Af[256], Bf[128];
  for (int i = 0; i < 256; ++i) {
    const float v = static_cast<float>((i * 37) % 29 - 14) / 8.f;
    A[i] = t == MmaType::kBF16 ? vpemu::f32_to_bf16_rn(v) : vpemu::f32_to_f16_rn(v);
    Af[i] = t == MmaType::kBF16 ? vpemu::bf16_to_f32(A[i]) : vpemu::f16_to_f32(A[i]);
  }
  for (int i = 0; i < 128; ++i) {
    const float v = static_cast<float>((i * 11) % 17 - 8) / 4.f;
    B[i] = t == MmaType::kBF16 ? vpemu::f32_to_bf16_rn(v) : vpemu::f32_to_f16_rn(v);
    Bf[i] = t == MmaType::kBF16 ? vpemu::bf16_to_f32(B[i]) : vpemu::f16_to_f32(B[i]);
  }
  float D[128], Dt[128];
  vpemu::launch("selftest_mma", mma_kernel, dim3(1), dim3(32), size_t(40 * kLd * 2), nullptr,
                MmaArgs{A, B, D, Dt, t});
  const float c[4] = {0.25f, -0.5f, 1.f, 2.f};
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      // C/D fragment (PTX table): row = lane/4 (+8 for c2, c3), col = 2*(lane%4) + (i&1).
      const int row = lane / 4 + (i >= 2 ? 8 : 0), col = 2 * (lane % 4) + (i & 1);
      double ref = c[i];
      for (int k = 0; k < 16; ++k) ref += Af[row * 16 + k] * Bf[k * 8 + col];
      if (D[lane * 4 + i] != static_cast<float>(ref) || Dt[lane * 4 + i] != static_cast<float>(ref)) {
        char buf[200];
        snprintf(buf, sizeof buf, "mma %s: D[%d][%d] = %g (B via ldmatrix) / %g (B via ldmatrix.trans), expected %g",
                 t == MmaType::kBF16 ? "bf16" : "f16", row, col, D[lane * 4 + i], Dt[lane * 4 + i], ref);
        return buf;
      }
    }
  return "";
}

// cp.async lands at wait_group, not before; zero-fill with src-size 0.
void cp_async_kernel(const float* src, float* out) {
  float* s = reinterpret_cast<float*>(vpemu::dynamic_smem());
  if (threadIdx.x == 0) {
    vpemu::ptx_cp_async(__cvta_generic_to_shared(s), src, 16, 16, true);
    vpemu::ptx_cp_async(__cvta_generic_to_shared(s + 4), src, 16, 0, true);
    vpemu::ptx_cp_async_commit_group();
    vpemu::ptx_cp_async(__cvta_generic_to_shared(s + 8), src, 16, 8, true);
    vpemu::ptx_cp_async_commit_group();
    out[0] = s[0];  // not landed yet: the poison
    vpemu::ptx_cp_async_wait_group(1);
    out[1] = s[0];
    out[2] = s[4];
    out[3] = s[8];  // second group still pending
    vpemu::ptx_cp_async_wait_group(0);
    out[4] = s[8];
    out[5] = s[10];
  }
}

void early_exit_kernel(int* out) {
  if (threadIdx.x == 3) return;
  *out += __shfl_xor_sync(0xffffffffu, 1, 1);
}

void divergent_kernel(int* out) {
  if (threadIdx.x < 16)
    *out += __shfl_xor_sync(0xffffffffu, 1, 1);
  else
    __syncthreads();
}

void smem_limit_kernel() {}

void smem_overrun_kernel() {
  float* s = reinterpret_cast<float*>(vpemu::dynamic_smem());
  s[threadIdx.x + 1] = 0.f;  // 32 floats of dynamic shared memory: lane 31 writes one past the end
}

template <class F, class... A>
std::string expect_failure(const char* what, const char* needle, F kernel, size_t smem, A... args) {
  try {
    vpemu::launch(what, kernel, dim3(1), dim3(32), smem, nullptr, args...);
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).find(needle) == std::string::npos)
      return std::string(what) + ": unexpected error text: " + e.what();
    return "";
  }
  return std::string(what) + ": no error reported";
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const char* vpemu_selftest() {
  static std::string msg;
  msg.clear();
  for (MmaType t : {MmaType::kF16, MmaType::kBF16}) {
    msg = check_mma(t);
    if (!msg.empty()) return msg.c_str();
  }
  alignas(16) float src[4] = {1.f, 2.f, 3.f, 4.f};
  float out[6];
  vpemu::launch("selftest_cp_async", cp_async_kernel, dim3(1), dim3(32), size_t(64), nullptr,
                static_cast<const float*>(src), static_cast<float*>(out));
  if (!(out[0] != out[0]) || out[1] != 1.f || out[2] != 0.f || !(out[3] != out[3]) || out[4] != 1.f || out[5] != 0.f) {
    char buf[200];
    snprintf(buf, sizeof buf, "cp.async: got %g %g %g %g %g %g, expected nan 1 0 nan 1 0", out[0], out[1], out[2],
             out[3], out[4], out[5]);
    return (msg = buf).c_str();
  }
  int x = 0;
  msg = expect_failure("selftest_early_exit", "exited", early_exit_kernel, 0, &x);
  if (msg.empty()) msg = expect_failure("selftest_divergent", "deadlock", divergent_kernel, 0, &x);
  if (msg.empty()) msg = expect_failure("selftest_smem_overrun", "outside the launch", smem_overrun_kernel, 128);
  if (msg.empty()) {
    cudaGetLastError();
    vpemu::launch("selftest_smem_limit", smem_limit_kernel, dim3(1), dim3(32), size_t(64 * 1024), nullptr);
    if (cudaGetLastError() != cudaErrorInvalidValue)
      msg = "a launch with 64 KB of dynamic shared memory and no cudaFuncSetAttribute was not rejected";
  }
  return msg.c_str();
}
