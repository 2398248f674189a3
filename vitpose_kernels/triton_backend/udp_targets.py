"""Triton udp_targets: mmpose 1.x UDPHeatmap.encode (unbiased Gaussian targets), batched.

One launch: program (instance * K + keypoint, row block) evaluates the separable Gaussian for its
rows, so a map is written once and nothing is scattered. The float32 arithmetic follows the
reference step by step (centre, C-style truncations, the patch bounds) so that which pixels are
inside the 3-sigma patch, and which keypoints fall off the map, agree exactly.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import _alloc, dispatch
from .._head_ops import define_udp_targets


@triton.jit
def _trunc(x):
    return tl.where(x >= 0, tl.floor(x), tl.ceil(x))


@triton.jit
def _axis(n_idx, kp, factor, radius, size, c0, two_sigma2):
    """Unnormalised 1-D Gaussian of one axis at integer positions n_idx (zero outside the patch),
    and the patch bounds [lo, hi)."""
    mu_ac = kp * factor
    mu = _trunc(mu_ac + 0.5)
    lo = _trunc(mu - radius)
    hi = _trunc(mu + radius + 1.0)
    centre = c0 + (mu_ac - mu)
    pos = n_idx.to(tl.float32) - lo
    keep = (pos >= 0) & (pos < size) & (pos < hi - lo)
    d = pos - centre
    return tl.where(keep, tl.exp(-(d * d) / two_sigma2), 0.0), lo, hi


@triton.jit
def _udp_kernel(kp_ptr, vis_ptr, hm_ptr, w_ptr, H, W, s_kn, s_kc, fx, fy, radius, size, c0,
                two_sigma2, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    n = tl.program_id(0)  # instance * K + keypoint
    rb = tl.program_id(1)
    kx = tl.load(kp_ptr + n.to(tl.int64) * s_kn).to(tl.float32)
    ky = tl.load(kp_ptr + n.to(tl.int64) * s_kn + s_kc).to(tl.float32)
    vis = tl.load(vis_ptr + n)
    ys = rb * BLOCK_H + tl.arange(0, BLOCK_H)
    xs = tl.arange(0, BLOCK_W)
    gx, lo_x, hi_x = _axis(xs, kx, fx, radius, size, c0, two_sigma2)
    gy, lo_y, hi_y = _axis(ys, ky, fy, radius, size, c0, two_sigma2)
    inside = (lo_x < W) & (lo_y < H) & (hi_x >= 0) & (hi_y >= 0)  # False for NaN/inf coordinates
    # mmpose: unlabelled (visibility < 0.5) keeps its visibility as the weight with an empty map; a
    # labelled keypoint whose patch misses the map gets weight 0.
    labelled = vis >= 0.5
    weight = tl.where(labelled & ~inside, 0.0, vis)
    tl.store(w_ptr + n, weight, mask=rb == 0)
    hm = tl.where(labelled & inside, gy[:, None] * gx[None, :], 0.0)
    mask = (ys[:, None] < H) & (xs[None, :] < W)
    tl.store(hm_ptr + n.to(tl.int64) * H * W + ys[:, None] * W + xs[None, :], hm, mask=mask)


def _targets(keypoints, visible, heatmap_size, input_size, sigma):
    B, K, _ = keypoints.shape
    W, H = heatmap_size
    heatmaps = _alloc.empty(B, K, H, W, dtype=torch.float32, device=keypoints.device)
    weights = _alloc.empty(B, K, dtype=torch.float32, device=keypoints.device)
    if B * K == 0:
        return heatmaps, weights
    kp = keypoints.reshape(B * K, 2)  # a view whenever the (B, K) dims can be flattened
    vis = visible.reshape(B * K).to(torch.float32).contiguous()
    radius = 3 * sigma
    BW = triton.next_power_of_2(W)
    BH = max(1, min(triton.next_power_of_2(H), 4096 // BW))
    grid = (B * K, triton.cdiv(H, BH))
    _udp_kernel[grid](kp, vis, heatmaps, weights, H, W, kp.stride(0), kp.stride(1),
                      (W - 1) / (input_size[0] - 1), (H - 1) / (input_size[1] - 1), radius,
                      float(math.ceil(2 * radius + 1)), float((2 * radius + 1) // 2),
                      2 * sigma ** 2, BLOCK_H=BH, BLOCK_W=BW)
    return heatmaps, weights


udp_targets_op = define_udp_targets("triton", _targets)


def reasons(keypoints, visible, heatmap_size, input_size, sigma) -> list[str]:
    out = []
    if keypoints.device.type != "cuda" and not (keypoints.device.type == "cpu" and dispatch.interpreting()):
        out.append(f"keypoints.device={keypoints.device}: Triton needs a CUDA tensor "
                   "(or CPU with TRITON_INTERPRET=1)")
    if heatmap_size[0] > 4096:
        out.append(f"heatmap width {heatmap_size[0]} > 4096 (one row block per program)")
    return out


@dispatch.register("udp_targets", "triton", reasons=reasons)
def udp_targets(keypoints, visible, heatmap_size, input_size, sigma):
    return udp_targets_op(keypoints, visible, list(heatmap_size), list(input_size), sigma)
