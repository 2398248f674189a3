// udp_targets: mmpose 1.x UDPHeatmap.encode (gaussian) for a whole batch in one launch.
//
// One thread per heatmap pixel. The per-keypoint numbers (centre, box, weight) are recomputed by
// every thread of the map: a dozen flops against a 4-byte store, and the two loads they need are
// warp-wide broadcasts. The thread of pixel (0, 0) also writes the keypoint's weight. The float
// arithmetic follows the reference op by op (float32, no FMA contraction) so that box edges and
// the weight test land on exactly the same side.
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "common.h"

namespace vitpose {
namespace {

struct TargetParams {
  const float* kp;  // (B, K, 2)
  std::array<int64_t, 3> ks;
  const float* vis;  // (B, K)
  std::array<int64_t, 2> vs;
  float* heatmaps;  // (B, K, H, W) contiguous
  float* weights;   // (B, K) contiguous
  int B, K, H, W;
  float fx, fy;     // (heatmap - 1) / (input - 1), rounded to float like the reference's tensor
  float radius;     // 3 sigma
  float size;       // ceil(2 radius + 1): the Gaussian patch's side
  float half;       // (2 radius + 1) // 2
  float two_var;    // 2 sigma^2
};

// The 1-D factor of pixel `pos` along one axis, or 0 outside the keypoint's patch.
__device__ __forceinline__ float axis_factor(int pos, float lo, float hi, float centre, const TargetParams& p) {
  const float d = __fsub_rn(static_cast<float>(pos), lo);  // patch coordinate
  const bool keep = d >= 0.f && d < p.size && d < __fsub_rn(hi, lo);
  const float e = __fsub_rn(d, centre);
  return keep ? expf(__fdiv_rn(-__fmul_rn(e, e), p.two_var)) : 0.f;  // a select: NaN * 0 would be NaN
}

__global__ void __launch_bounds__(256) udp_targets_kernel(TargetParams p) {
  const int64_t total = static_cast<int64_t>(p.B) * p.K * p.H * p.W;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int x = static_cast<int>(idx % p.W);
    const int y = static_cast<int>((idx / p.W) % p.H);
    const int64_t m = idx / (static_cast<int64_t>(p.W) * p.H);
    const int b = static_cast<int>(m / p.K), k = static_cast<int>(m % p.K);
    const float* kp = p.kp + b * p.ks[0] + k * p.ks[1];
    const float ax = __fmul_rn(kp[0], p.fx), ay = __fmul_rn(kp[p.ks[2]], p.fy);  // unbiased centre
    const float mx = truncf(__fadd_rn(ax, 0.5f)), my = truncf(__fadd_rn(ay, 0.5f));
    const float lox = truncf(__fsub_rn(mx, p.radius)), loy = truncf(__fsub_rn(my, p.radius));
    const float hix = truncf(__fadd_rn(__fadd_rn(mx, p.radius), 1.f));
    const float hiy = truncf(__fadd_rn(__fadd_rn(my, p.radius), 1.f));
    const float vis = p.vis[b * p.vs[0] + k * p.vs[1]];
    // NaN/inf coordinates fail every comparison: not inside, as mmpose's int64 cast makes them.
    const bool inside = lox < p.W && loy < p.H && hix >= 0.f && hiy >= 0.f;
    // mmpose: an unlabelled keypoint (visibility < 0.5) keeps its visibility as the weight and has an
    // empty map; a labelled one whose patch misses the map gets weight 0.
    const bool labelled = vis >= 0.5f;
    const float weight = (labelled && !inside) ? 0.f : vis;
    const float cx = __fadd_rn(p.half, __fsub_rn(ax, mx)), cy = __fadd_rn(p.half, __fsub_rn(ay, my));
    const float v = __fmul_rn(axis_factor(y, loy, hiy, cy, p), axis_factor(x, lox, hix, cx, p));
    p.heatmaps[idx] = (labelled && inside) ? v : 0.f;
    if (x == 0 && y == 0) p.weights[m] = weight;
  }
}

}  // namespace

// keypoints (B, K, 2) float32 and visible (B, K) float32 with element strides; heatmap_size and
// input_size as (W, H); heatmaps (B, K, H, W) and weights (B, K) contiguous float32.
void udp_targets(std::uintptr_t keypoints, std::array<int64_t, 3> ks, std::uintptr_t visible,
                 std::array<int64_t, 2> vs, int B, int K, int heatmap_w, int heatmap_h, int input_w, int input_h,
                 double sigma, std::uintptr_t heatmaps, std::uintptr_t weights, std::uintptr_t stream) {
  if (heatmap_w < 2 || heatmap_h < 2 || input_w < 2 || input_h < 2 || !(sigma > 0))
    throw std::invalid_argument("vitpose_kernels.udp_targets: sizes must be >= 2 and sigma > 0");
  const int64_t total = static_cast<int64_t>(B) * K * heatmap_w * heatmap_h;
  if (total == 0) return;
  TargetParams p{};
  p.kp = reinterpret_cast<const float*>(keypoints);
  p.ks = ks;
  p.vis = reinterpret_cast<const float*>(visible);
  p.vs = vs;
  p.heatmaps = reinterpret_cast<float*>(heatmaps);
  p.weights = reinterpret_cast<float*>(weights);
  p.B = B;
  p.K = K;
  p.H = heatmap_h;
  p.W = heatmap_w;
  // Python computes these in double and the reference rounds them to float32 once.
  p.fx = static_cast<float>(static_cast<double>(heatmap_w - 1) / (input_w - 1));
  p.fy = static_cast<float>(static_cast<double>(heatmap_h - 1) / (input_h - 1));
  const double radius = 3 * sigma;
  p.radius = static_cast<float>(radius);
  p.size = static_cast<float>(std::ceil(2 * radius + 1));
  p.half = static_cast<float>(std::floor((2 * radius + 1) / 2));
  p.two_var = static_cast<float>(2 * sigma * sigma);
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  udp_targets_kernel<<<static_cast<unsigned>(blocks < (1 << 30) ? blocks : (1 << 30)), kThreads, 0,
                       as_stream(stream)>>>(p);
  check_launch("udp_targets");
}

}  // namespace vitpose
