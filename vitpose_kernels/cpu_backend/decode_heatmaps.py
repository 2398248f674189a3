"""CPU decode_heatmaps: mmpose 1.x UDPHeatmap.decode for a whole batch, vectorised over every map,
with the DARK blur evaluated only where the refinement reads it.

The reference blurs every map in full (two 1-channel conv2d over B*K maps), which is nearly all
of its time on a CPU. The refinement reads the blurred log-map only on the 3x3 (edge-clamped)
neighbourhood of each argmax; those nine values need a 13x13 patch of the map (11 taps), taken
here for all maps at once with one gather, then the two passes of the separable kernel as small
products. The full blur is needed only for the renormalisation factor max(map) / max(blurred),
and that factor cancels in the central differences of the log unless the [1e-3, 50] clip bites;
the argument of the Triton kernel (``triton_backend/decode_heatmaps.py``) carries over: with zero
padding, when the nine blurred values are >= 1e-3 and max(map) <= 50 the clip cannot bite, so the
factor is not needed. Maps that fail the test (weak or noisy ones) get the reference's full blur,
as in the Triton kernel's fallback.

Argmax: numpy's, which returns the first maximum as the spec asks (the reference forces it with
an extra pass because torch.max does not promise it) and runs about three times faster than
torch.max on one thread. Everything else is batched torch. The flip merge, the Newton step and
the mapping to image pixels are the reference's own operations.

method="dark" (TokenPose's post-processing): the same, with the 5x5 neighbourhood of the
interior maxima only (the others are not refined), the clip at 1e-10 from below (the shortcut is
exact when the 25 values are >= 1e-10) and the reference's Taylor step and HRNet back-transform.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .. import _alloc, dispatch
from ..reference.decode_heatmaps import dark_to_pixels, flip_back, gaussian_kernel_1d

# Margins for the rounding of the renormalisation factor (the Triton kernel's): inside them the
# shortcut is exact; outside, the full blur decides.
_FLOOR = 1.0e-3 * (1.0 + 1e-5)
_CEILING = 50.0 * (1.0 - 1e-5)
_DARK_FLOOR = 1.0e-10 * (1.0 + 1e-5)


@functools.lru_cache(maxsize=None)
def _taps(size: int) -> torch.Tensor:
    return torch.tensor(gaussian_kernel_1d(size), dtype=torch.float32)


def first_argmax(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H*W) float32 contiguous -> index of the first maximum (N,) int64 and the maximum (N,)."""
    arr = flat.numpy()
    idx = arr.argmax(axis=1)
    scores = np.take_along_axis(arr, idx[:, None], axis=1)[:, 0]
    return torch.from_numpy(idx), torch.from_numpy(scores)


def map_patches(flat: torch.Tensor, H: int, W: int, x: torch.Tensor, y: torch.Tensor, side: int) -> torch.Tensor:
    """The side x side patch of each (flattened) map centred on (x, y), zeros outside the map."""
    N, half = flat.shape[0], side // 2
    top, left = y - half, x - half
    values = flat.reshape(-1)  # reads by global index: no copy of the maps themselves
    patches = flat.new_empty(N, side, side)
    interior = (top >= 0) & (top + side <= H) & (left >= 0) & (left + side <= W)
    # Most maxima are away from the border: one offset pattern, one gather.
    sel = interior.nonzero()[:, 0]
    offsets = (torch.arange(side)[:, None] * W + torch.arange(side)).view(1, -1)
    start = sel * (H * W) + top[sel] * W + left[sel]
    patches[sel] = _take(values, start[:, None] + offsets).view(-1, side, side)
    # Near the border: clamp the reads, zero what lies outside (the reference's zero padding).
    sel = (~interior).nonzero()[:, 0]
    if len(sel):
        span = torch.arange(side)
        rows, cols = top[sel, None] + span, left[sel, None] + span
        inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
        where = (sel * (H * W))[:, None, None] + rows.clamp(0, H - 1)[:, :, None] * W \
            + cols.clamp(0, W - 1)[:, None, :]
        patches[sel] = _take(values, where) * inside
    return patches


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] for a flat CPU tensor: numpy's take, about 3x faster than torch's indexing here."""
    return torch.from_numpy(np.take(values.numpy(), index.numpy()))


def blurred_neighbourhood(flat: torch.Tensor, H: int, W: int, x: torch.Tensor, y: torch.Tensor,
                          size: int) -> torch.Tensor:
    """The zero-padded, separable Gaussian blur of each map at its 3x3 neighbourhood of (x, y),
    clamped to the map (the reference's replicate padding): (N, 3, 3), rows dy, columns dx."""
    patch = map_patches(flat, H, W, x, y, 3 + 2 * (size // 2))           # (N, P, P)
    g = _taps(size)
    # Offsets of the clamped neighbours among the three candidate positions x-1, x, x+1.
    dx = (x[:, None] + torch.arange(-1, 2)).clamp(0, W - 1) - x[:, None] + 1     # (N, 3)
    dy = (y[:, None] + torch.arange(-1, 2)).clamp(0, H - 1) - y[:, None] + 1
    horizontal = patch.unfold(2, size, 1) @ g                              # (N, P, 3) at x-1, x, x+1
    horizontal = horizontal.gather(2, dx[:, None, :].expand(-1, horizontal.shape[1], -1))
    vertical = horizontal.unfold(1, size, 1) @ g                           # (N, 3, 3) at y-1, y, y+1
    return vertical.gather(1, dy[:, :, None].expand(-1, -1, 3))


def blurred_5x5(flat: torch.Tensor, H: int, W: int, x: torch.Tensor, y: torch.Tensor, size: int) -> torch.Tensor:
    """The zero-padded blur of each map at the 5x5 neighbourhood of an interior (x, y) (inside the
    map, so no clamping): (N, 5, 5), rows dy = -2..2, columns dx = -2..2."""
    patch = map_patches(flat, H, W, x, y, 5 + 2 * (size // 2))           # (N, P, P)
    g = _taps(size)
    horizontal = patch.unfold(2, size, 1) @ g                              # (N, P, 5)
    return horizontal.unfold(1, size, 1) @ g                               # (N, 5, 5)


def taylor_step(logm: torch.Tensor) -> torch.Tensor:
    """The reference's dark_refine step from the (N, 5, 5) log-neighbourhood -> (N, 2), zero where
    the Hessian's determinant is 0."""
    c = logm[:, 2, 2]
    dx = 0.5 * (logm[:, 2, 3] - logm[:, 2, 1])
    dy = 0.5 * (logm[:, 3, 2] - logm[:, 1, 2])
    dxx = 0.25 * (logm[:, 2, 4] - 2 * c + logm[:, 2, 0])
    dxy = 0.25 * (logm[:, 3, 3] - logm[:, 1, 3] - logm[:, 3, 1] + logm[:, 1, 1])
    dyy = 0.25 * (logm[:, 4, 2] - 2 * c + logm[:, 0, 2])
    det = dxx * dyy - dxy * dxy
    take = det != 0
    det = torch.where(take, det, torch.ones_like(det))
    step = torch.stack([(dyy * dx - dxy * dy) / det, (dxx * dy - dxy * dx) / det], dim=-1)
    return torch.where(take[:, None], step, torch.zeros_like(step))


def full_blur_max(maps: torch.Tensor, size: int) -> torch.Tensor:
    """max of the reference's full blur of each (n, H, W) map (its two conv2d passes)."""
    g, r = _taps(size), size // 2
    x = F.conv2d(F.pad(maps[:, None], (r, r, r, r)), g.view(1, 1, 1, -1))
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return x.amax(dim=(1, 2, 3))


def newton_step(logm: torch.Tensor) -> torch.Tensor:
    """The reference's DARK-UDP step from the (N, 3, 3) log-neighbourhood -> (N, 2) (x, y) step."""
    i_ = logm[:, 1, 1]
    ix1, ix1_ = logm[:, 1, 2], logm[:, 1, 0]
    iy1, iy1_ = logm[:, 2, 1], logm[:, 0, 1]
    ix1y1, ix1_y1_ = logm[:, 2, 2], logm[:, 0, 0]
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    eps = torch.finfo(torch.float32).eps
    a, b, d = dxx + eps, dxy, dyy + eps
    det = a * d - b * b
    return torch.stack([(d * dx - b * dy) / det, (a * dy - b * dx) / det], dim=-1)


def decode(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
           blur_kernel_size, always_full_blur: bool = False):
    """always_full_blur=True disables the exact shortcut (tests compare the two paths)."""
    hm = heatmaps.float()
    if flip_heatmaps is not None:
        hm = (hm + flip_back(flip_heatmaps.float(), flip_indices)) * 0.5
    B, K, H, W = hm.shape
    keypoints = _alloc.empty(B, K, 2, dtype=torch.float32, device=hm.device)
    scores = _alloc.empty(B, K, dtype=torch.float32, device=hm.device)
    if B * K == 0:
        return keypoints, scores
    flat = hm.reshape(B * K, H * W).contiguous()
    idx, best = first_argmax(flat)
    x, y = idx % W, idx // W
    if method == "dark":
        return _dark(flat, x, y, best, (B, K, H, W), input_size, bbox_centers, bbox_scales, blur_kernel_size,
                     always_full_blur, keypoints, scores)
    kp = torch.stack([x, y], dim=-1).float()
    if method == "udp":
        blurred = blurred_neighbourhood(flat, H, W, x, y, blur_kernel_size)
        scale = torch.ones(B * K)
        full = (blurred.amin(dim=(1, 2)) < _FLOOR) | (best > _CEILING)
        if always_full_blur:
            full[:] = True
        if bool(full.any()):
            sel = full.nonzero()[:, 0]
            scale[sel] = best[sel] / full_blur_max(flat[sel].view(-1, H, W), blur_kernel_size)
        logm = torch.log(torch.clamp(blurred * scale[:, None, None], 1e-3, 50.0))
        kp = kp - newton_step(logm)
    size = torch.tensor(input_size, dtype=torch.float32)
    kp = kp.view(B, K, 2) / torch.tensor([W - 1, H - 1], dtype=torch.float32) * size
    if bbox_centers is not None:
        kp = kp / size * bbox_scales[:, None] + bbox_centers[:, None] - bbox_scales[:, None] * 0.5
    keypoints.copy_(kp)
    scores.copy_(best.view(B, K))
    return keypoints, scores


def _dark(flat, x, y, best, shape, input_size, bbox_centers, bbox_scales, blur_kernel_size, always_full_blur,
          keypoints, scores):
    B, K, H, W = shape
    found = best > 0  # get_max_preds: a map whose maximum is not positive decodes to (0, 0)
    x, y = torch.where(found, x, 0), torch.where(found, y, 0)
    kp = torch.stack([x, y], dim=-1).float()
    sel = ((x > 1) & (x < W - 2) & (y > 1) & (y < H - 2)).nonzero()[:, 0]  # refined: interior maxima
    if len(sel):
        maps = flat[sel]
        blurred = blurred_5x5(maps, H, W, x[sel], y[sel], blur_kernel_size)
        scale = torch.ones(len(sel))
        full = blurred.amin(dim=(1, 2)) < _DARK_FLOOR
        if always_full_blur:
            full[:] = True
        if bool(full.any()):
            sub = full.nonzero()[:, 0]
            scale[sub] = best[sel][sub] / full_blur_max(maps[sub].view(-1, H, W), blur_kernel_size)
        logm = torch.log(torch.clamp(blurred * scale[:, None, None], min=1e-10))
        kp[sel] = kp[sel] - taylor_step(logm)
    keypoints.copy_(dark_to_pixels(kp.view(B, K, 2), (H, W), input_size, bbox_centers, bbox_scales))
    scores.copy_(best.view(B, K))
    return keypoints, scores


def reasons(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
            blur_kernel_size) -> list[str]:
    out = []
    for name, t in (("heatmaps", heatmaps), ("flip_heatmaps", flip_heatmaps), ("bbox_centers", bbox_centers)):
        if t is not None and t.device.type != "cpu":
            out.append(f"{name}.device={t.device}: the CPU backend takes CPU tensors")
    if heatmaps.requires_grad or (flip_heatmaps is not None and flip_heatmaps.requires_grad):
        out.append("heatmaps require grad: the CPU backend does not differentiate (the reference does)")
    return out


@dispatch.register("decode_heatmaps", "cpu", reasons=reasons)
def decode_heatmaps(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales,
                    method, blur_kernel_size):
    return decode(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
                  blur_kernel_size)
