// vpemu: a CPU emulation of the CUDA device environment that csrc/*.cu use, so that the real
// kernel sources compile with a host C++ compiler and their *logic* can be checked without a GPU.
//
// Execution model (runtime.cpp): blocks run one after another; the threads of a block are
// cooperative fibers on one OS thread. A fiber runs until it reaches a synchronisation point
// (__syncthreads, a warp collective such as __shfl_xor_sync, ldmatrix or mma.sync) and then yields;
// a warp collective is computed once every participating lane has arrived, a barrier is released
// once every live thread of the block has arrived. Divergent collectives, collectives with exited
// lanes and deadlocks are reported as errors instead of hanging.
//
// Numerics: fast-math intrinsics (__expf, __fdividef, ...) map to exact host math; *_rn
// intrinsics are plain IEEE operations (the library is built with -ffp-contract=off, so nothing
// is fused behind their back). mma.sync accumulates its 16 exact products in double and rounds
// once, which is at least as accurate as the tensor cores.
//
// The PTX wrappers in csrc/window_attention_mma.cuh call the vpemu::ptx_* functions below when
// VITPOSE_CPU_EMULATION is defined. Their semantics are written from the PTX ISA's description of
// the fragment layouts, independently of the kernel author's comments (see runtime.cpp).
#pragma once

#ifndef VITPOSE_CPU_EMULATION
#error "vpemu.h is the CPU emulation of the CUDA device environment; build with -DVITPOSE_CPU_EMULATION"
#endif

#include <math.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------------------ keywords
#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __constant__ static
// Static __shared__ arrays become function-local statics: one copy, shared by the block's
// fibers, exactly the CUDA scope because blocks never overlap. `extern __shared__` declarations
// are rewritten by the build script to point at the launch's dynamic shared memory.
#define __shared__ static
#define __CUDACC_EMULATED__ 1

// ------------------------------------------------------------------------------ vector types
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3() = default;
  constexpr dim3(unsigned a, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
using uint3 = dim3;

#define VPEMU_VEC2(name, T, al)                 \
  struct __attribute__((aligned(al))) name {    \
    T x, y;                                     \
  };                                            \
  inline name make_##name(T a, T b) { return name{a, b}; }
#define VPEMU_VEC4(name, T, al)                  \
  struct __attribute__((aligned(al))) name {     \
    T x, y, z, w;                                \
  };                                             \
  inline name make_##name(T a, T b, T c, T d) { return name{a, b, c, d}; }
VPEMU_VEC2(int2, int, 8)
VPEMU_VEC2(uint2, unsigned, 8)
VPEMU_VEC2(float2, float, 8)
VPEMU_VEC4(int4, int, 16)
VPEMU_VEC4(uint4, unsigned, 16)
VPEMU_VEC4(float4, float, 16)
#undef VPEMU_VEC2
#undef VPEMU_VEC4

// Per-fiber built-ins: the scheduler sets them before resuming a fiber. They are ordinary
// globals, so every opaque call (each synchronisation point) makes the compiler reload them.
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

// ------------------------------------------------------------------------------ runtime API
typedef int cudaError_t;
enum : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
};
#define CUDART_VERSION 12000
typedef struct CUstream_st* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace vpemu {
// The emulated device: an H100's limits (227 KB of opt-in shared memory, 48 KB without).
constexpr int kSmemOptin = 227 * 1024;
constexpr int kSmemDefault = 48 * 1024;
constexpr int kMaxThreads = 1024;

void set_last_error(cudaError_t e);
cudaError_t take_last_error();
void set_func_smem(const void* fn, int bytes);
}  // namespace vpemu

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int dev);
template <class F>
cudaError_t cudaFuncSetAttribute(F* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > vpemu::kSmemOptin) return cudaErrorInvalidValue;
  vpemu::set_func_smem(reinterpret_cast<const void*>(fn), value);
  return cudaSuccess;
}

// ------------------------------------------------------------------------------ half types
namespace vpemu {
uint16_t f32_to_f16_rn(float f);
float f16_to_f32(uint16_t h);
inline uint16_t f32_to_bf16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace vpemu

struct __attribute__((aligned(2))) __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(vpemu::f32_to_f16_rn(f)) {}
  __half(double f) : __half(static_cast<float>(f)) {}
  operator float() const { return vpemu::f16_to_f32(__x); }
};
struct __attribute__((aligned(4))) __half2 {
  __half x, y;
};
struct __attribute__((aligned(2))) __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(vpemu::f32_to_bf16_rn(f)) {}
  __nv_bfloat16(double f) : __nv_bfloat16(static_cast<float>(f)) {}
  operator float() const { return vpemu::bf16_to_f32(__x); }
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
typedef __half half;
typedef __half2 half2;

inline float __half2float(__half h) { return vpemu::f16_to_f32(h.__x); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__half(lo), __half(hi)}; }
inline __half2 __float2half2_rn(float f) { return __floats2half2_rn(f, f); }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }
inline float __bfloat162float(__nv_bfloat16 b) { return vpemu::bf16_to_f32(b.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__nv_bfloat16(lo), __nv_bfloat16(hi)};
}
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __floats2bfloat162_rn(f, f); }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }

// ------------------------------------------------------------------------------ math
// CUDA's overloaded min/max for mixed integer/float arguments (by value: a conditional of two
// lvalues would make decltype a reference to a parameter).
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float a) { return 1.f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __saturatef(float x) { return x != x ? 0.f : (x < 0.f ? 0.f : (x > 1.f ? 1.f : x)); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T>
inline T __ldg(const T* p) { return *p; }

// ------------------------------------------------------------------------------ synchronisation
namespace vpemu {
// Warp collectives. `mask` lanes take part; each lane passes its own operand bits and gets the
// result. kind names the instruction so that divergent warps are reported.
enum class Coll : int { kShfl, kShflUp, kShflDown, kShflXor, kVote, kSyncWarp, kLdmatrix, kMma };
void syncthreads();
int syncthreads_reduce(int pred, int op);  // 0: count, 1: and, 2: or
uint64_t shfl(Coll kind, unsigned mask, uint64_t bits, int arg, int width);
unsigned vote(unsigned mask, int pred);  // ballot of the lanes in mask
void syncwarp(unsigned mask);
unsigned active_mask();
[[noreturn]] void device_fail(const char* fmt, ...);

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 64 bits");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
}  // namespace vpemu

inline void __syncthreads() { vpemu::syncthreads(); }
inline int __syncthreads_count(int p) { return vpemu::syncthreads_reduce(p, 0); }
inline int __syncthreads_and(int p) { return vpemu::syncthreads_reduce(p, 1); }
inline int __syncthreads_or(int p) { return vpemu::syncthreads_reduce(p, 2); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { vpemu::syncwarp(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline unsigned __activemask() { return vpemu::active_mask(); }
inline unsigned __ballot_sync(unsigned mask, int pred) { return vpemu::vote(mask, pred); }
inline int __any_sync(unsigned mask, int pred) { return (vpemu::vote(mask, pred) & mask) != 0; }
inline int __all_sync(unsigned mask, int pred) { return (vpemu::vote(mask, pred) & mask) == mask; }
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return vpemu::from_bits<T>(vpemu::shfl(vpemu::Coll::kShfl, mask, vpemu::to_bits(v), src, width));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return vpemu::from_bits<T>(vpemu::shfl(vpemu::Coll::kShflUp, mask, vpemu::to_bits(v), static_cast<int>(delta), width));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return vpemu::from_bits<T>(
      vpemu::shfl(vpemu::Coll::kShflDown, mask, vpemu::to_bits(v), static_cast<int>(delta), width));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return vpemu::from_bits<T>(vpemu::shfl(vpemu::Coll::kShflXor, mask, vpemu::to_bits(v), lane_mask, width));
}

// Atomics: fibers never interleave inside one, so plain read-modify-write is atomic here.
template <class T>
inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <class T>
inline T atomicSub(T* p, T v) { T o = *p; *p = o - v; return o; }
template <class T>
inline T atomicMax(T* p, T v) { T o = *p; *p = o < v ? v : o; return o; }
template <class T>
inline T atomicMin(T* p, T v) { T o = *p; *p = v < o ? v : o; return o; }
template <class T>
inline T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
template <class T>
inline T atomicCAS(T* p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }
template <class T>
inline T atomicAnd(T* p, T v) { T o = *p; *p = o & v; return o; }
template <class T>
inline T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }

// ------------------------------------------------------------------------------ shared memory
namespace vpemu {
unsigned char* dynamic_smem();  // the running launch's dynamic shared memory
}
// The 32-bit shared-window address PTX instructions take: an offset into the dynamic shared
// memory; anything else is an error (the kernels only address dynamic shared memory this way).
uint32_t __cvta_generic_to_shared(const void* p);

// ------------------------------------------------------------------------------ PTX emulation
// Called from the #ifdef VITPOSE_CPU_EMULATION branches of the kernels' inline-PTX wrappers, one
// function per instruction form. Operands are the asm operands (shared addresses as 32-bit).
namespace vpemu {
enum class MmaType : int { kF16 = 0, kBF16 = 1 };
// cp.async.{ca,cg}.shared.global [dst], [src], cp_size, src_size: copies src_size bytes and
// zero-fills up to cp_size. The copy is performed when a cp.async.wait_group retires its group
// (as late as the PTX memory model allows), so a missing wait or barrier shows up as stale data.
void ptx_cp_async(uint32_t dst, const void* src, int cp_size, int src_size, bool cg);
void ptx_cp_async_commit_group();
void ptx_cp_async_wait_group(int n);
void ptx_cp_async_wait_all();
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16
void ptx_ldmatrix_m8n8_b16(uint32_t* r, int num, bool trans, uint32_t addr);
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 d, a, b, c
void ptx_mma_m16n8k16_f32(MmaType t, float* d, const uint32_t* a, const uint32_t* b, const float* c);
}  // namespace vpemu

// ------------------------------------------------------------------------------ launches
namespace vpemu {
struct Launch {
  const char* name;
  const void* fn;
  dim3 grid, block;
  size_t smem;
  void (*thread_body)(void*);
  void* ctx;
};
// Runs every block of the launch; a bad configuration sets the sticky launch error (like
// cudaLaunchKernel), a failure inside the kernel throws std::runtime_error naming the block and
// thread.
void run(const Launch& l);

// `kernel<<<grid, block, smem, stream>>>(args...)` is rewritten by the build script to
// `::vpemu::launch("kernel", kernel, grid, block, smem, stream, args...)`. Arguments are
// converted to the parameter types once (as the launch copies them), and every thread gets its
// own copy, as every CUDA thread does.
template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
            A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  struct Ctx {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...>* params;
  } ctx{kernel, &params};
  auto body = [](void* v) {
    Ctx* c = static_cast<Ctx*>(v);
    std::apply([c](auto... a) { c->k(a...); }, *c->params);
  };
  run(Launch{name, reinterpret_cast<const void*>(kernel), grid, block, smem, +body, &ctx});
}
}  // namespace vpemu
