// Tensor-core and async-copy primitives for the window_attention kernels (sm_80+): inline PTX
// for mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulate), ldmatrix and 16-byte cp.async.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   A (16x16, row-major), four 32-bit registers of two halves each:
//     a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16x8, "col"): b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C (16x8, fp32):  c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// So the C fragments of two neighbouring 16x8 products (columns 0-7 and 8-15) are, packed to
// 16-bit pairs, exactly the A fragment of the next product: P = softmax(S) never leaves registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace vitpose {
namespace wa {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// VITPOSE_CPU_EMULATION (tests/cuda_emulator only, never nvcc): each asm statement below is
// replaced by a call into the emulator's model of the same PTX instruction, with the same operands.

// 16-byte global -> shared copy; with valid == false the 16 bytes are zero-filled and nothing is
// read (src must still be a mapped address: callers pass the operand's base).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#ifdef VITPOSE_CPU_EMULATION
  vpemu::ptx_cp_async(smem_u32(smem), gmem, 16, valid ? 16 : 0, true);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef VITPOSE_CPU_EMULATION
  vpemu::ptx_cp_async_commit_group();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef VITPOSE_CPU_EMULATION
  vpemu::ptx_cp_async_wait_group(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
#ifdef VITPOSE_CPU_EMULATION
  vpemu::ptx_ldmatrix_m8n8_b16(r, 4, false, smem_u32(p));
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
#ifdef VITPOSE_CPU_EMULATION
  vpemu::ptx_ldmatrix_m8n8_b16(r, 4, true, smem_u32(p));
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}

// Lane offsets (row, column) into a row-major smem tile for one ldsm_x4 that yields
//  - an A fragment of rows r0..r0+15, cols c0..c0+15 (also: with .trans, the B fragments of
//    two n8 tiles, B[k][n] = M[k][n], k = rows r0.., n = cols c0..c0+7 then c0+8..c0+15);
__device__ __forceinline__ int lrow_a(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int lcol_a(int lane) { return (lane >> 4) * 8; }
//  - the B fragments of two n8 tiles with B[k][n] = M[n][k] (n = rows r0..r0+15, k = cols
//    c0..c0+15): registers {0,1} for rows r0..r0+7, {2,3} for rows r0+8..r0+15.
__device__ __forceinline__ int lrow_b(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int lcol_b(int lane) { return ((lane >> 3) & 1) * 8; }

template <typename T>
struct Mma;

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef VITPOSE_CPU_EMULATION
    const uint32_t b[2] = {b0, b1};
    vpemu::ptx_mma_m16n8k16_f32(vpemu::MmaType::kBF16, c, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

template <>
struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef VITPOSE_CPU_EMULATION
    const uint32_t b[2] = {b0, b1};
    vpemu::ptx_mma_m16n8k16_f32(vpemu::MmaType::kF16, c, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
};

}  // namespace wa
}  // namespace vitpose
