// decode_heatmaps: mmpose 1.x UDPHeatmap.decode (flip merge, argmax, DARK-UDP refinement) plus
// the box back-transform, a whole batch in one launch.
//
// A block of 256 threads serves a group of (instance, keypoint) maps: 256 / tpm maps with tpm
// threads each (tpm a power of two, 32..256, chosen so small maps do not leave threads idle).
// With method="udp" each map is staged in shared memory once (merged with its flipped twin on the
// way in; method="argmax" only reduces and needs no staging), then
//   argmax (first index on ties) -> horizontal blur into a second buffer -> vertical blur,
//   reduced to the blurred map's max (never stored) -> the 3x3 log-neighbourhood of the argmax
//   -> one Newton step and the back-transform by the map's first thread.
// method="dark" (TokenPose / HRNet+DARK get_final_preds) runs the same stages: a map whose maximum
// is not positive decodes to (0, 0); at interior maxima (1 < x < W-2, 1 < y < H-2) the 5x5
// log-neighbourhood (clip at 1e-10 from below only) gives one Taylor step with second differences
// over +-2 pixels, taken only when the Hessian's determinant is not 0; the back-transform is the
// HRNet one, similar about the centres with the factor (s_w - 1) / (W - 1).
// Every block-wide barrier is reached by all threads, also those of a group past the last map.
// The arithmetic after the blur is written with explicitly rounded intrinsics so that nvcc does
// not contract it into FMAs: the reference does each step as a separate PyTorch op, and on flat
// heatmaps the Newton step is ill-conditioned enough to amplify a one-ulp difference.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <array>
#include <cfloat>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"

namespace vitpose {

constexpr int kDecodeMaxTaps = 255;

namespace {

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
constexpr int kNbhd = 25;  // floats per map for the log-neighbourhood (3x3 for udp, 5x5 for dark)
enum Method : int { kArgmax = 0, kUdp = 1, kDark = 2 };

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

struct Taps {
  float w[kDecodeMaxTaps];  // the 1-D Gaussian, as the reference computes it
};

struct DecodeParams {
  const void* hm;
  std::array<int64_t, 4> hs;
  const void* flip;  // nullptr: no flip merge
  std::array<int64_t, 4> fs;
  const int64_t* flip_idx;
  int64_t fis;
  const float* centers;  // nullptr: no box transform
  std::array<int64_t, 2> cs;
  const float* scales;
  std::array<int64_t, 2> ss;
  float* keypoints;  // (B, K, 2) contiguous
  float* scores;     // (B, K) contiguous
  int B, K, H, W;
  int tpm;  // threads per map
  int ntaps;
  float in_w, in_h;
};

// (v, i) <- the better of (v, i) and (ov, oi): larger value, then smaller index.
__device__ __forceinline__ void argmax_merge(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    argmax_merge(v, i, ov, oi);
  }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Vertical pass of the separable blur at (y, x), over the horizontally blurred map t.
__device__ __forceinline__ float vblur(const float* t, const float* g, int ntaps, int H, int W, int y, int x) {
  const int r = ntaps / 2;
  const int jlo = max(0, r - y), jhi = min(ntaps - 1, H - 1 - y + r);
  float acc = 0.f;
  for (int j = jlo; j <= jhi; ++j) acc += g[j] * t[(y + j - r) * W + x];
  return acc;
}

// log(clamp(v, 1e-3, 50)) with torch.clamp's NaN propagation.
__device__ __forceinline__ float clamped_log(float v) {
  if (!(v != v)) v = fminf(fmaxf(v, 1e-3f), 50.f);
  return logf(v);
}

// log(max(v, 1e-10)) with NaN propagation (method="dark").
__device__ __forceinline__ float floored_log(float v) {
  if (!(v != v)) v = fmaxf(v, 1e-10f);
  return logf(v);
}

template <typename T, int kMethod>
__global__ void __launch_bounds__(kBlock) decode_heatmaps_kernel(DecodeParams p, Taps taps) {
  constexpr bool kRefine = kMethod != kArgmax;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int mpb = kBlock / p.tpm;  // maps per block
  const int HW = p.H * p.W;
  float* S = reinterpret_cast<float*>(smem_raw);        // mpb * HW merged maps (refine only)
  float* Tb = S + (kRefine ? mpb * HW : 0);              // mpb * HW horizontally blurred
  float* g = Tb + (kRefine ? mpb * HW : 0);              // ntaps
  float* red_v = g + (kRefine ? p.ntaps : 0);            // one partial per warp
  int* red_i = reinterpret_cast<int*>(red_v + kWarps);
  float* nine = reinterpret_cast<float*>(red_i + kWarps);  // mpb * kNbhd log-neighbourhoods

  const int sub = threadIdx.x / p.tpm, lane = threadIdx.x % p.tpm;
  const int warp = threadIdx.x / 32, wpm = p.tpm / 32, first_warp = sub * wpm;
  const int r = p.ntaps / 2;
  if (kRefine)
    for (int j = threadIdx.x; j < p.ntaps; j += kBlock) g[j] = taps.w[j];

  const int64_t nmaps = static_cast<int64_t>(p.B) * p.K;
  const int64_t ngroups = (nmaps + mpb - 1) / mpb;
  for (int64_t group = blockIdx.x; group < ngroups; group += gridDim.x) {
    __syncthreads();  // the previous group is done with shared memory (and g is loaded)
    const int64_t m = group * mpb + sub;
    const bool valid = m < nmaps;
    const int b = valid ? static_cast<int>(m / p.K) : 0;
    const int k = valid ? static_cast<int>(m % p.K) : 0;
    float* Sm = S + sub * HW;
    float* Tm = Tb + sub * HW;

    // 1. stage (and flip-merge) the map; per-thread argmax
    float best = -INFINITY;
    int best_i = INT_MAX;
    if (valid) {
      const T* src = static_cast<const T*>(p.hm) + b * p.hs[0] + k * p.hs[1];
      const T* fsrc = p.flip == nullptr ? nullptr
                                        : static_cast<const T*>(p.flip) + b * p.fs[0] + p.flip_idx[k * p.fis] * p.fs[1];
      for (int i = lane; i < HW; i += p.tpm) {
        const int y = i / p.W, x = i - y * p.W;
        float v = to_f32(src[y * p.hs[2] + x * p.hs[3]]);
        if (fsrc != nullptr) v = __fmul_rn(__fadd_rn(v, to_f32(fsrc[y * p.fs[2] + (p.W - 1 - x) * p.fs[3]])), 0.5f);
        if (kRefine) Sm[i] = v;
        if (v > best) {
          best = v;
          best_i = i;
        }
      }
    }
    warp_argmax(best, best_i);
    if (threadIdx.x % 32 == 0) {
      red_v[warp] = best;
      red_i[warp] = best_i;
    }
    __syncthreads();
    best = red_v[first_warp];
    best_i = red_i[first_warp];
    for (int w = 1; w < wpm; ++w) argmax_merge(best, best_i, red_v[first_warp + w], red_i[first_warp + w]);
    int x0 = best_i % p.W, y0 = best_i / p.W;  // only used where valid (best_i < HW)
    if (kMethod == kDark && !(best > 0.f)) x0 = y0 = 0;  // get_max_preds' mask
    const bool interior = x0 > 1 && x0 < p.W - 2 && y0 > 1 && y0 < p.H - 2;
    float kx = static_cast<float>(x0), ky = static_cast<float>(y0);

    if (kRefine) {
      // 2. horizontal pass over a zero border
      if (valid) {
        for (int i = lane; i < HW; i += p.tpm) {
          const int y = i / p.W, x = i - y * p.W;
          const int jlo = max(0, r - x), jhi = min(p.ntaps - 1, p.W - 1 - x + r);
          const float* row = Sm + y * p.W + x - r;
          float acc = 0.f;
          for (int j = jlo; j <= jhi; ++j) acc += g[j] * row[j];
          Tm[i] = acc;
        }
      }
      __syncthreads();  // Tm complete; everyone has read red_* above
      // 3. vertical pass, reduced to the blurred map's max
      float bmax = -INFINITY;
      if (valid)
        for (int i = lane; i < HW; i += p.tpm) {
          const int y = i / p.W, x = i - y * p.W;
          bmax = fmaxf(bmax, vblur(Tm, g, p.ntaps, p.H, p.W, y, x));
        }
      bmax = warp_max(bmax);
      if (threadIdx.x % 32 == 0) red_v[warp] = bmax;
      __syncthreads();
      for (int w = 0; w < wpm; ++w) bmax = fmaxf(bmax, red_v[first_warp + w]);
      // 4. log of the renormalised blurred map at the 3x3 neighbourhood (edge-replicated; dark:
      // the 5x5 one of an interior maximum)
      const int side = kMethod == kDark ? 5 : 3, reach = side / 2;
      if (valid && lane < side * side && (kMethod != kDark || interior)) {
        const float scale = __fdiv_rn(best, bmax);  // best is the original map's max
        const int yy = min(max(y0 + lane / side - reach, 0), p.H - 1);
        const int xx = min(max(x0 + lane % side - reach, 0), p.W - 1);
        const float v = __fmul_rn(vblur(Tm, g, p.ntaps, p.H, p.W, yy, xx), scale);
        nine[sub * kNbhd + lane] = kMethod == kDark ? floored_log(v) : clamped_log(v);
      }
      __syncthreads();
      if (kMethod == kDark && valid && lane == 0 && interior) {
        // 5'. the DARK code's taylor(), term by term as the reference
        const float* n = nine + sub * kNbhd;  // n[(dy + 2) * 5 + dx + 2]
        const float c = n[12];
        const float gx = __fmul_rn(0.5f, __fsub_rn(n[13], n[11]));
        const float gy = __fmul_rn(0.5f, __fsub_rn(n[17], n[7]));
        const float gxx = __fmul_rn(0.25f, __fadd_rn(__fsub_rn(n[14], __fmul_rn(2.f, c)), n[10]));
        const float gyy = __fmul_rn(0.25f, __fadd_rn(__fsub_rn(n[22], __fmul_rn(2.f, c)), n[2]));
        float t = __fsub_rn(n[18], n[8]);
        t = __fsub_rn(t, n[16]);
        t = __fadd_rn(t, n[6]);
        const float gxy = __fmul_rn(0.25f, t);
        const float hdet = __fsub_rn(__fmul_rn(gxx, gyy), __fmul_rn(gxy, gxy));
        if (hdet != 0.f) {
          const float tstep_x = __fdiv_rn(__fsub_rn(__fmul_rn(gyy, gx), __fmul_rn(gxy, gy)), hdet);
          const float tstep_y = __fdiv_rn(__fsub_rn(__fmul_rn(gxx, gy), __fmul_rn(gxy, gx)), hdet);
          kx = __fsub_rn(kx, tstep_x);
          ky = __fsub_rn(ky, tstep_y);
        }
      }
      if (kMethod == kUdp && valid && lane == 0) {
        // 5. one Newton step, term by term as mmpose's refine_keypoints_dark_udp
        const float* n = nine + sub * kNbhd;  // n[(dy + 1) * 3 + dx + 1]
        const float i_ = n[4], ix1 = n[5], ix1_ = n[3], iy1 = n[7], iy1_ = n[1], ix1y1 = n[8], ix1_y1_ = n[0];
        const float dx = __fmul_rn(0.5f, __fsub_rn(ix1, ix1_));
        const float dy = __fmul_rn(0.5f, __fsub_rn(iy1, iy1_));
        const float dxx = __fadd_rn(__fsub_rn(ix1, __fmul_rn(2.f, i_)), ix1_);
        const float dyy = __fadd_rn(__fsub_rn(iy1, __fmul_rn(2.f, i_)), iy1_);
        float s = __fsub_rn(ix1y1, ix1);
        s = __fsub_rn(s, iy1);
        s = __fadd_rn(s, i_);
        s = __fadd_rn(s, i_);
        s = __fsub_rn(s, ix1_);
        s = __fsub_rn(s, iy1_);
        s = __fadd_rn(s, ix1_y1_);
        const float dxy = __fmul_rn(0.5f, s);
        const float a = __fadd_rn(dxx, FLT_EPSILON), bb = dxy, d = __fadd_rn(dyy, FLT_EPSILON);
        const float det = __fsub_rn(__fmul_rn(a, d), __fmul_rn(bb, bb));
        const float step_x = __fdiv_rn(__fsub_rn(__fmul_rn(d, dx), __fmul_rn(bb, dy)), det);
        const float step_y = __fdiv_rn(__fsub_rn(__fmul_rn(a, dy), __fmul_rn(bb, dx)), det);
        kx = __fsub_rn(kx, step_x);
        ky = __fsub_rn(ky, step_y);
      }
    }

    if (kMethod == kDark && valid && lane == 0) {
      // 6'. the HRNet geometry: image = c + (kp - mid) (s_w - 1) / (W - 1); crop pixels without boxes
      const float mx = __fmul_rn(static_cast<float>(p.W - 1), 0.5f), my = __fmul_rn(static_cast<float>(p.H - 1), 0.5f);
      if (p.centers != nullptr) {
        const float f = __fdiv_rn(__fsub_rn(p.scales[b * p.ss[0]], 1.f), static_cast<float>(p.W - 1));
        kx = __fadd_rn(p.centers[b * p.cs[0]], __fmul_rn(__fsub_rn(kx, mx), f));
        ky = __fadd_rn(p.centers[b * p.cs[0] + p.cs[1]], __fmul_rn(__fsub_rn(ky, my), f));
      } else {
        const float f = __fdiv_rn(__fsub_rn(p.in_w, 1.f), static_cast<float>(p.W - 1));
        kx = __fadd_rn(__fmul_rn(__fsub_rn(p.in_w, 1.f), 0.5f), __fmul_rn(__fsub_rn(kx, mx), f));
        ky = __fadd_rn(__fmul_rn(__fsub_rn(p.in_h, 1.f), 0.5f), __fmul_rn(__fsub_rn(ky, my), f));
      }
      p.keypoints[2 * m] = kx;
      p.keypoints[2 * m + 1] = ky;
      p.scores[m] = best;
    } else if (valid && lane == 0) {
      // 6. crop pixels, then (optionally) image pixels, in the reference's order
      kx = __fmul_rn(__fdiv_rn(kx, static_cast<float>(p.W - 1)), p.in_w);
      ky = __fmul_rn(__fdiv_rn(ky, static_cast<float>(p.H - 1)), p.in_h);
      if (p.centers != nullptr) {
        const float sx = p.scales[b * p.ss[0]], sy = p.scales[b * p.ss[0] + p.ss[1]];
        const float cx = p.centers[b * p.cs[0]], cy = p.centers[b * p.cs[0] + p.cs[1]];
        kx = __fsub_rn(__fadd_rn(__fmul_rn(__fdiv_rn(kx, p.in_w), sx), cx), __fmul_rn(sx, 0.5f));
        ky = __fsub_rn(__fadd_rn(__fmul_rn(__fdiv_rn(ky, p.in_h), sy), cy), __fmul_rn(sy, 0.5f));
      }
      p.keypoints[2 * m] = kx;
      p.keypoints[2 * m + 1] = ky;
      p.scores[m] = best;
    }
  }
}

// Threads per map: enough that each thread sees at most ~8 pixels, at least one warp.
int threads_per_map(int hw) {
  int tpm = 32;
  while (tpm < kBlock && tpm * 8 < hw) tpm *= 2;
  return tpm;
}

}  // namespace

int decode_heatmaps_max_taps() { return kDecodeMaxTaps; }

// Dynamic shared memory of one block, in bytes (also used by the Python side's reasons).
int64_t decode_heatmaps_smem_bytes(int H, int W, int ntaps, bool refine) {
  const int64_t mpb = kBlock / threads_per_map(H * W);
  const int64_t floats = (refine ? 2 * mpb * H * W + ntaps : 0) + 2 * kWarps + kNbhd * mpb;
  return floats * 4;
}

template <typename T, int kMethod>
static void launch_decode(const DecodeParams& p, const Taps& taps, cudaStream_t stream) {
  const int64_t smem = decode_heatmaps_smem_bytes(p.H, p.W, p.ntaps, kMethod != kArgmax);
  auto kernel = decode_heatmaps_kernel<T, kMethod>;
  if (smem > 48 * 1024) {
    int dev = 0, optin = 0;
    VITPOSE_CUDA_CHECK("decode_heatmaps", cudaGetDevice(&dev));
    VITPOSE_CUDA_CHECK("decode_heatmaps",
                       cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem > optin)
      throw std::invalid_argument("vitpose_kernels.decode_heatmaps: heatmaps of " + std::to_string(p.H) + "x" +
                                  std::to_string(p.W) + " need " + std::to_string(smem) +
                                  " bytes of shared memory per block; this GPU allows " + std::to_string(optin));
    VITPOSE_CUDA_CHECK("decode_heatmaps", cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                               static_cast<int>(smem)));
  }
  const int64_t mpb = kBlock / p.tpm;
  const int64_t groups = (static_cast<int64_t>(p.B) * p.K + mpb - 1) / mpb;
  const unsigned grid = static_cast<unsigned>(groups < (1 << 30) ? groups : (1 << 30));
  kernel<<<grid, kBlock, static_cast<size_t>(smem), stream>>>(p, taps);
}

template <typename T>
static void launch_by_method(int method, const DecodeParams& p, const Taps& taps, cudaStream_t stream) {
  if (method == kUdp)
    launch_decode<T, kUdp>(p, taps, stream);
  else if (method == kDark)
    launch_decode<T, kDark>(p, taps, stream);
  else
    launch_decode<T, kArgmax>(p, taps, stream);
}

// heatmaps / flip_heatmaps: (B, K, H, W) of one dtype with element strides; flip_idx: (K,) int64
// (flip == 0: no merge); taps: the 1-D blur kernel (empty: method="argmax"); method: 0 argmax,
// 1 udp, 2 dark; centers/scales: (B, 2) float32 (0: no box transform); keypoints (B, K, 2) and
// scores (B, K): contiguous float32.
void decode_heatmaps(std::uintptr_t hm, std::array<int64_t, 4> hs, std::uintptr_t flip, std::array<int64_t, 4> fs,
                     std::uintptr_t flip_idx, int64_t fis, int dtype, int B, int K, int H, int W,
                     const std::vector<float>& taps, int method, int input_w, int input_h, std::uintptr_t centers,
                     std::array<int64_t, 2> cs, std::uintptr_t scales, std::array<int64_t, 2> ss,
                     std::uintptr_t keypoints, std::uintptr_t scores, std::uintptr_t stream) {
  if (dtype < 0 || dtype > 2) throw std::invalid_argument("vitpose_kernels.decode_heatmaps: unknown dtype code");
  if (H < 2 || W < 2) throw std::invalid_argument("vitpose_kernels.decode_heatmaps: maps must be at least 2x2");
  if (taps.size() > static_cast<size_t>(kDecodeMaxTaps) || (!taps.empty() && taps.size() % 2 == 0))
    throw std::invalid_argument("vitpose_kernels.decode_heatmaps: blur kernel must have an odd size <= " +
                                std::to_string(kDecodeMaxTaps));
  if (method < kArgmax || method > kDark || (method == kArgmax) != taps.empty())
    throw std::invalid_argument("vitpose_kernels.decode_heatmaps: method must be 0 (argmax, no taps), 1 (udp) or "
                                "2 (dark), with the blur taps for 1 and 2");
  if ((flip != 0) != (flip_idx != 0) || (centers != 0) != (scales != 0))
    throw std::invalid_argument("vitpose_kernels.decode_heatmaps: flip/flip_idx and centers/scales come in pairs");
  if (static_cast<int64_t>(B) * K == 0) return;
  DecodeParams p{};
  p.hm = reinterpret_cast<const void*>(hm);
  p.hs = hs;
  p.flip = reinterpret_cast<const void*>(flip);
  p.fs = fs;
  p.flip_idx = reinterpret_cast<const int64_t*>(flip_idx);
  p.fis = fis;
  p.centers = reinterpret_cast<const float*>(centers);
  p.cs = cs;
  p.scales = reinterpret_cast<const float*>(scales);
  p.ss = ss;
  p.keypoints = reinterpret_cast<float*>(keypoints);
  p.scores = reinterpret_cast<float*>(scores);
  p.B = B;
  p.K = K;
  p.H = H;
  p.W = W;
  p.tpm = threads_per_map(H * W);
  p.ntaps = static_cast<int>(taps.size());
  p.in_w = static_cast<float>(input_w);
  p.in_h = static_cast<float>(input_h);
  Taps t{};
  for (size_t j = 0; j < taps.size(); ++j) t.w[j] = taps[j];
  const cudaStream_t st = as_stream(stream);
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32:
      launch_by_method<float>(method, p, t, st);
      break;
    case DType::kFloat16:
      launch_by_method<__half>(method, p, t, st);
      break;
    case DType::kBFloat16:
      launch_by_method<__nv_bfloat16>(method, p, t, st);
      break;
  }
  check_launch("decode_heatmaps");
}

}  // namespace vitpose
