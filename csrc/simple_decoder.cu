// simple_decoder (ViTPose Eq. 3): conv_k(upsample_s(relu(x))) without the upsampled map.
//
// Bilinear upsampling and the conv's channel mixing are both linear, so they commute: the Python
// side contracts relu(x) with all k*k taps' weights at low resolution (one GEMM, C -> k*k*K
// "tap maps" P), and the kernels here do the rest:
//   forward:  out[b,o,Y,X] = bias[o] + sum_t up(P[b,t*K+o])[Y+ty-p, X+tx-p]   (zero outside)
//   backward: dP[t*K+o,b,r,c] = sum_{u,v} Wr(u,r) Wc(v,c) grad[b,o,u-ty+p,v-tx+p]
// where up() is PyTorch's bilinear interpolation (align_corners=False, clamped source index) and
// Wr/Wc its interpolation weights. The backward is a gather (no atomics): each thread owns one
// low-resolution pixel of one output channel and produces all k*k of its tap gradients.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <array>
#include <cstdint>

#include "common.h"

namespace vitpose {
namespace {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Where high-resolution index u samples the low-resolution axis of length n: PyTorch's
// area_pixel_compute_source_index (align_corners=False, clamped at 0) with scale = 1/s in float.
struct Stencil {
  int i0, i1;    // the two source indices (equal at the last one)
  float l0, l1;  // their weights
};

__device__ __forceinline__ Stencil stencil(int u, int n, float scale) {
  float src = scale * (static_cast<float>(u) + 0.5f) - 0.5f;
  src = src < 0.f ? 0.f : src;
  Stencil st;
  st.i0 = static_cast<int>(src);
  st.i1 = st.i0 + (st.i0 < n - 1 ? 1 : 0);
  st.l1 = src - static_cast<float>(st.i0);
  st.l0 = 1.f - st.l1;
  return st;
}

// Weight of low-resolution index r in the interpolation at high-resolution index u.
__device__ __forceinline__ float weight_of(int u, int r, int n, float scale) {
  const Stencil st = stencil(u, n, scale);
  return (st.i0 == r ? st.l0 : 0.f) + (st.i1 == r ? st.l1 : 0.f);
}

// The high-resolution indices [lo, hi] whose stencil touches low-resolution index r, i.e. whose
// first source index is r-1 or r (the source index is monotone in u). An integer estimate from
// src ~ (u + 0.5)/s - 0.5, then corrected against the exact float formula.
__device__ __forceinline__ void touching(int r, int n, int out_len, int s, float scale, int& lo, int& hi) {
  lo = s * r - (s + 1) / 2;
  lo = lo < 0 ? 0 : (lo > out_len - 1 ? out_len - 1 : lo);
  while (lo > 0 && stencil(lo - 1, n, scale).i0 >= r - 1) --lo;
  while (lo < out_len - 1 && stencil(lo, n, scale).i0 < r - 1) ++lo;
  hi = s * r + (3 * s) / 2;
  hi = hi < 0 ? 0 : (hi > out_len - 1 ? out_len - 1 : hi);
  while (hi < out_len - 1 && stencil(hi + 1, n, scale).i0 <= r) ++hi;
  while (hi > 0 && stencil(hi, n, scale).i0 > r) --hi;
}

struct Geometry {
  int B, K, h, w, s;  // batch, output channels, low-res size, scale factor
  float scale;        // 1/s as PyTorch computes it
};

// One thread per output element (X fastest, so writes coalesce and the P reads of neighbouring
// threads hit the same L1 lines: a warp touches a handful of low-res columns).
template <typename T, int KS>
__global__ void __launch_bounds__(256) simple_decoder_fwd_kernel(const T* __restrict__ taps,
                                                                 std::array<int64_t, 4> ts,
                                                                 const T* __restrict__ bias,
                                                                 T* __restrict__ out, Geometry g) {
  constexpr int P = KS / 2;
  const int OH = g.h * g.s, OW = g.w * g.s;
  const int64_t total = static_cast<int64_t>(g.B) * g.K * OH * OW;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int X = static_cast<int>(idx % OW);
    int64_t rest = idx / OW;
    const int Y = static_cast<int>(rest % OH);
    rest /= OH;
    const int o = static_cast<int>(rest % g.K);
    const int b = static_cast<int>(rest / g.K);

    Stencil rs[KS], cs[KS];
    bool rv[KS], cv[KS];
#pragma unroll
    for (int t = 0; t < KS; ++t) {
      const int u = Y + t - P, v = X + t - P;
      rv[t] = u >= 0 && u < OH;
      cv[t] = v >= 0 && v < OW;
      rs[t] = stencil(rv[t] ? u : 0, g.h, g.scale);
      cs[t] = stencil(cv[t] ? v : 0, g.w, g.scale);
    }
    float acc = bias != nullptr ? to_f32(bias[o]) : 0.f;
    const T* base = taps + b * ts[0];
#pragma unroll
    for (int ty = 0; ty < KS; ++ty) {
      if (!rv[ty]) continue;
      const int64_t r0 = rs[ty].i0 * ts[2], r1 = rs[ty].i1 * ts[2];
#pragma unroll
      for (int tx = 0; tx < KS; ++tx) {
        if (!cv[tx]) continue;
        const T* p = base + static_cast<int64_t>((ty * KS + tx) * g.K + o) * ts[1];
        const int64_t c0 = cs[tx].i0 * ts[3], c1 = cs[tx].i1 * ts[3];
        const float top = cs[tx].l0 * to_f32(p[r0 + c0]) + cs[tx].l1 * to_f32(p[r0 + c1]);
        const float bot = cs[tx].l0 * to_f32(p[r1 + c0]) + cs[tx].l1 * to_f32(p[r1 + c1]);
        acc += rs[ty].l0 * top + rs[ty].l1 * bot;
      }
    }
    out[idx] = from_f32<T>(acc);
  }
}

// One thread per (o, b, r, c) low-res pixel (c fastest), all KS*KS tap gradients at once: the
// thread walks the grad_out window its stencils touch once and scatters each value into the
// taps whose shifted stencil covers it.
template <typename T, int KS>
__global__ void __launch_bounds__(256) simple_decoder_bwd_kernel(const T* __restrict__ grad,
                                                                 std::array<int64_t, 4> gs,
                                                                 T* __restrict__ dtaps,
                                                                 std::array<int64_t, 4> ds, Geometry g) {
  constexpr int P = KS / 2;
  const int OH = g.h * g.s, OW = g.w * g.s;
  const int64_t total = static_cast<int64_t>(g.B) * g.K * g.h * g.w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % g.w);
    int64_t rest = idx / g.w;
    const int r = static_cast<int>(rest % g.h);
    rest /= g.h;
    const int b = static_cast<int>(rest % g.B);
    const int o = static_cast<int>(rest / g.B);

    int ulo, uhi, vlo, vhi;
    touching(r, g.h, OH, g.s, g.scale, ulo, uhi);
    touching(c, g.w, OW, g.s, g.scale, vlo, vhi);
    float acc[KS][KS];
#pragma unroll
    for (int ty = 0; ty < KS; ++ty)
#pragma unroll
      for (int tx = 0; tx < KS; ++tx) acc[ty][tx] = 0.f;

    const T* gb = grad + b * gs[0] + o * gs[1];
    // grad row Y feeds tap row ty through upsampled row u = Y + ty - P.
    const int ylo = max(ulo + P - (KS - 1), 0), yhi = min(uhi + P, OH - 1);
    const int xlo = max(vlo + P - (KS - 1), 0), xhi = min(vhi + P, OW - 1);
    for (int Y = ylo; Y <= yhi; ++Y) {
      float wr[KS];
#pragma unroll
      for (int ty = 0; ty < KS; ++ty) {
        const int u = Y + ty - P;
        wr[ty] = (u >= ulo && u <= uhi) ? weight_of(u, r, g.h, g.scale) : 0.f;
      }
      const T* grow = gb + Y * gs[2];
      for (int X = xlo; X <= xhi; ++X) {
        const float gv = to_f32(grow[X * gs[3]]);
#pragma unroll
        for (int tx = 0; tx < KS; ++tx) {
          const int v = X + tx - P;
          if (v < vlo || v > vhi) continue;
          const float wc = weight_of(v, c, g.w, g.scale) * gv;
#pragma unroll
          for (int ty = 0; ty < KS; ++ty) acc[ty][tx] += wr[ty] * wc;
        }
      }
    }
    T* db = dtaps + b * ds[1] + r * ds[2] + c * ds[3];
#pragma unroll
    for (int ty = 0; ty < KS; ++ty)
#pragma unroll
      for (int tx = 0; tx < KS; ++tx)
        db[static_cast<int64_t>((ty * KS + tx) * g.K + o) * ds[0]] = from_f32<T>(acc[ty][tx]);
  }
}

constexpr int kThreads = 256;

unsigned blocks_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < (1 << 30) ? b : (1 << 30));
}

Geometry make_geometry(int B, int K, int h, int w, int scale_factor) {
  return Geometry{B, K, h, w, scale_factor, static_cast<float>(1.0 / scale_factor)};
}

template <typename T>
void launch_fwd(std::uintptr_t taps, const std::array<int64_t, 4>& ts, std::uintptr_t bias, std::uintptr_t out,
                const Geometry& g, int ksize, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(g.B) * g.K * g.h * g.s * g.w * g.s;
  const auto* p = reinterpret_cast<const T*>(taps);
  const auto* bp = reinterpret_cast<const T*>(bias);
  auto* op = reinterpret_cast<T*>(out);
  if (ksize == 3)
    simple_decoder_fwd_kernel<T, 3><<<blocks_for(total), kThreads, 0, stream>>>(p, ts, bp, op, g);
  else
    simple_decoder_fwd_kernel<T, 1><<<blocks_for(total), kThreads, 0, stream>>>(p, ts, bp, op, g);
}

template <typename T>
void launch_bwd(std::uintptr_t grad, const std::array<int64_t, 4>& gs, std::uintptr_t dtaps,
                const std::array<int64_t, 4>& ds, const Geometry& g, int ksize, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(g.B) * g.K * g.h * g.w;
  const auto* gp = reinterpret_cast<const T*>(grad);
  auto* dp = reinterpret_cast<T*>(dtaps);
  if (ksize == 3)
    simple_decoder_bwd_kernel<T, 3><<<blocks_for(total), kThreads, 0, stream>>>(gp, gs, dp, ds, g);
  else
    simple_decoder_bwd_kernel<T, 1><<<blocks_for(total), kThreads, 0, stream>>>(gp, gs, dp, ds, g);
}

void check_args(int ksize, int scale_factor, int dtype) {
  if (ksize != 1 && ksize != 3) throw std::invalid_argument("vitpose_kernels.simple_decoder: ksize must be 1 or 3");
  if (scale_factor < 1) throw std::invalid_argument("vitpose_kernels.simple_decoder: scale_factor must be >= 1");
  if (dtype < 0 || dtype > 2) throw std::invalid_argument("vitpose_kernels.simple_decoder: unknown dtype code");
}

}  // namespace

// taps: (B, ksize*ksize*K, h, w) with element strides ts (tap t of channel o at t*K + o);
// out: contiguous (B, K, s*h, s*w); bias: (K,) contiguous or 0.
void simple_decoder_forward(std::uintptr_t taps, std::array<int64_t, 4> ts, std::uintptr_t bias, std::uintptr_t out,
                            int B, int K, int h, int w, int ksize, int scale_factor, int dtype,
                            std::uintptr_t stream) {
  check_args(ksize, scale_factor, dtype);
  if (static_cast<int64_t>(B) * K * h * w == 0) return;
  const Geometry g = make_geometry(B, K, h, w, scale_factor);
  const cudaStream_t st = as_stream(stream);
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32: launch_fwd<float>(taps, ts, bias, out, g, ksize, st); break;
    case DType::kFloat16: launch_fwd<__half>(taps, ts, bias, out, g, ksize, st); break;
    case DType::kBFloat16: launch_fwd<__nv_bfloat16>(taps, ts, bias, out, g, ksize, st); break;
  }
  check_launch("simple_decoder (forward)");
}

// grad: (B, K, s*h, s*w) with element strides gs; dtaps: (ksize*ksize*K, B, h, w) with element
// strides ds (channel, batch, row, column).
void simple_decoder_backward(std::uintptr_t grad, std::array<int64_t, 4> gs, std::uintptr_t dtaps,
                             std::array<int64_t, 4> ds, int B, int K, int h, int w, int ksize, int scale_factor,
                             int dtype, std::uintptr_t stream) {
  check_args(ksize, scale_factor, dtype);
  if (static_cast<int64_t>(B) * K * h * w == 0) return;
  const Geometry g = make_geometry(B, K, h, w, scale_factor);
  const cudaStream_t st = as_stream(stream);
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32: launch_bwd<float>(grad, gs, dtaps, ds, g, ksize, st); break;
    case DType::kFloat16: launch_bwd<__half>(grad, gs, dtaps, ds, g, ksize, st); break;
    case DType::kBFloat16: launch_bwd<__nv_bfloat16>(grad, gs, dtaps, ds, g, ksize, st); break;
  }
  check_launch("simple_decoder (backward)");
}

}  // namespace vitpose
