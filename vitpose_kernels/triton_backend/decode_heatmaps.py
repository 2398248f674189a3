"""Triton decode_heatmaps: mmpose 1.x UDPHeatmap.decode (or TokenPose's "dark" post-processing)
for a whole batch in one launch.

One program per (instance, keypoint) map, held in registers: flip merge, max and first argmax,
then DARK-UDP refinement, which needs the blurred log-map only at the 3x3 (edge-clamped)
neighbourhood of the argmax. Those nine blurred values are computed directly (13 rows x 3 columns
of the 11-tap horizontal pass, then the vertical pass).

What is exact about skipping the rest of the blur: the renormalisation multiplies every blurred
value by max(map) / max(blurred) and only then clips to [1e-3, 50] and takes the log. The factor
cancels in the central differences of the log unless the clip bites. With zero padding the blur is
a sub-convex combination, so max(blurred) <= max(map) when max(map) >= 0, and a blurred value v
renormalises to v * max(map) / max(blurred) in [v, max(map)]. Hence if all nine v >= 1e-3 and
max(map) <= 50 the clip cannot bite whatever max(blurred) is, and the refinement equals mmpose's
without the full blur. Otherwise (weak or noisy maps) the program blurs its whole map, chunk by
chunk as products with banded Toeplitz blocks in exact fp32 (tl.dot, ieee), to get max(blurred).

method="dark" (TokenPose / HRNet+DARK get_final_preds) needs the blurred map at the 5x5
neighbourhood of an interior maximum (second differences over +-2 pixels); its clip is only from
below, at 1e-10, so the same argument holds with the 25 values >= 1e-10 (scale >= 1 when the map's
maximum is positive, the only case it refines).
"""
from __future__ import annotations

import functools
import torch
import triton
import triton.language as tl

from .. import _alloc, dispatch
from .._head_ops import define_decode_heatmaps
from ..reference.decode_heatmaps import gaussian_kernel_1d

_MAX_SIDE = 128  # one map per program, held in registers for the max/argmax
_MAX_BLUR = 31
_METHODS = {"argmax": 0, "udp": 1, "dark": 2}
_FLOOR = {"argmax": 1.0e-3, "udp": 1.0e-3, "dark": 1.0e-10}  # the log's clip from below


@triton.jit
def _merged(hm_ptr, fl_ptr, rows, cols, ok, W, s_h, s_w, f_h, f_w, FLIP: tl.constexpr):
    """The (flip-merged) heatmap at (rows, cols) in float32, 0 where not ok (the zero border)."""
    v = tl.load(hm_ptr + rows * s_h + cols * s_w, mask=ok, other=0.0).to(tl.float32)
    if FLIP:
        f = tl.load(fl_ptr + rows * f_h + (W - 1 - cols) * f_w, mask=ok, other=0.0).to(tl.float32)
        v = (v + f) * 0.5
    return v


@triton.jit
def _pick(t, rr, cc, r: tl.constexpr, c: tl.constexpr):
    """Element (r, c) of a small tile as a scalar (a sum with a single nonzero term is exact)."""
    return tl.sum(tl.sum(tl.where((rr == r) & (cc == c), t, 0.0), axis=1), axis=0)


@triton.jit
def _blurred_tile(hm, fl, ny, nx, g_ptr, H, W, s_h, s_w, f_h, f_w, FLIP: tl.constexpr, T: tl.constexpr,
                  KS: tl.constexpr, BK: tl.constexpr):
    """The separable blur (zero border) at the T x T positions (ny (T, 1), nx (1, T)): the horizontal
    pass on rows ny + i - R (i < KS) as a 3-D tile (o, i, c), then the vertical pass."""
    R: tl.constexpr = KS // 2
    ii = tl.arange(0, BK)[None, :, None]
    rows = ny[:, :, None] + ii - R
    row_ok = (ii < KS) & (rows >= 0) & (rows < H)
    hsum = tl.zeros([T, BK, T], dtype=tl.float32)
    for j in tl.static_range(KS):
        cols = nx[:, None, :] + (j - R)
        ok = row_ok & (cols >= 0) & (cols < W)
        hsum += tl.load(g_ptr + j) * _merged(hm, fl, rows, cols, ok, W, s_h, s_w, f_h, f_w, FLIP)
    gv = tl.load(g_ptr + ii, mask=ii < KS, other=0.0)
    return tl.sum(hsum * gv, axis=1)


@triton.jit
def _blurred_max(hm, fl, g_ptr, H, W, s_h, s_w, f_h, f_w, FLIP: tl.constexpr, KS: tl.constexpr,
                 CH: tl.constexpr, CI: tl.constexpr):
    """max(blurred) over the whole map, in CH x CH output chunks. A chunk's blur reads a CI x CI
    window of the map (CI >= CH + 2R), reloaded from cache; both passes are products with banded
    Toeplitz blocks of the kernel, in exact fp32 (ieee), so shared memory stays small whatever
    the map size."""
    R: tl.constexpr = KS // 2
    p = tl.arange(0, CH)[:, None]
    q = tl.arange(0, CI)[None, :]
    gyb = tl.load(g_ptr + (q - p), mask=(q - p >= 0) & (q - p < KS), other=0.0)  # (CH, CI)
    q2 = tl.arange(0, CI)[:, None]
    s2 = tl.arange(0, CH)[None, :]
    gxb = tl.load(g_ptr + (q2 - s2), mask=(q2 - s2 >= 0) & (q2 - s2 < KS), other=0.0)
    bmax = tl.full([], float("-inf"), tl.float32)
    for r0 in range(0, H, CH):
        for c0 in range(0, W, CH):
            ri = r0 - R + q2
            ci = c0 - R + q
            in_map = (ri >= 0) & (ri < H) & (ci >= 0) & (ci < W)
            window = _merged(hm, fl, ri, ci, in_map, W, s_h, s_w, f_h, f_w, FLIP)
            vert = tl.dot(gyb, window, input_precision="ieee")  # rows r0 + p
            chunk = tl.dot(vert, gxb, input_precision="ieee")   # (CH, CH) at (r0, c0)
            valid = (r0 + p < H) & (c0 + s2 < W)
            bmax = tl.maximum(bmax, tl.max(tl.max(tl.where(valid, chunk, float("-inf")), axis=1), axis=0))
    return bmax


@triton.jit
def _decode_kernel(hm_ptr, fl_ptr, fidx_ptr, g_ptr, ctr_ptr, scl_ptr, kp_ptr, score_ptr,
                   K, H, W, s_b, s_k, s_h, s_w, f_b, f_k, f_h, f_w, size_x, size_y,
                   shortcut_floor,
                   FLIP: tl.constexpr, METHOD: tl.constexpr, HAS_BOX: tl.constexpr,
                   KS: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                   CH: tl.constexpr, CI: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // K
    k = pid % K
    hm = hm_ptr + b.to(tl.int64) * s_b + k.to(tl.int64) * s_k
    fl = fl_ptr
    if FLIP:
        fk = tl.load(fidx_ptr + k)
        fl = fl_ptr + b.to(tl.int64) * f_b + fk * f_k

    ys = tl.arange(0, BH)[:, None]
    xs = tl.arange(0, BW)[None, :]
    inb = (ys < H) & (xs < W)
    m = _merged(hm, fl, ys, xs, inb, W, s_h, s_w, f_h, f_w, FLIP)
    masked = tl.where(inb, m, float("-inf"))
    score = tl.max(tl.max(masked, axis=1), axis=0)
    flat = ys * W + xs
    idx = tl.min(tl.min(tl.where(masked == score, flat, BH * BW), axis=1), axis=0)  # first on ties
    ay = idx // W
    ax = idx % W
    px = ax.to(tl.float32)
    py = ay.to(tl.float32)

    if METHOD == 1:  # "udp"
        # The 3x3 neighbourhood (edge-replicated, i.e. clamped) laid out in a 4x4 tile.
        o = tl.arange(0, 4)[:, None]
        c = tl.arange(0, 4)[None, :]
        ny = tl.minimum(tl.maximum(ay + o - 1, 0), H - 1)
        nx = tl.minimum(tl.maximum(ax + c - 1, 0), W - 1)
        blurred = _blurred_tile(hm, fl, ny, nx, g_ptr, H, W, s_h, s_w, f_h, f_w, FLIP, 4, KS, BK)  # row/col 3 unused

        nine = (o < 3) & (c < 3)
        vmin = tl.min(tl.min(tl.where(nine, blurred, float("inf")), axis=1), axis=0)
        # shortcut_floor is 1e-3 plus a margin for the rounding of the renormalisation factor
        # (+inf in tests, to force the full blur); likewise the margin under 50.
        need_full = (vmin < shortcut_floor) | (score > 50.0 * (1.0 - 1e-5))
        scale = tl.full([], 1.0, tl.float32)
        if need_full:
            scale = score / _blurred_max(hm, fl, g_ptr, H, W, s_h, s_w, f_h, f_w, FLIP, KS, CH, CI)
        # The clip propagates NaN, as the reference's and mmpose's do: an all-zero map renormalises
        # by 0 / 0 and decodes to NaN (min/max on a GPU would drop the NaN).
        modulated = blurred * scale
        logm = tl.log(tl.where(modulated != modulated, modulated,
                               tl.minimum(tl.maximum(modulated, 1.0e-3), 50.0)))

        i_ = _pick(logm, o, c, 1, 1)
        ix1 = _pick(logm, o, c, 1, 2)
        ix1_ = _pick(logm, o, c, 1, 0)
        iy1 = _pick(logm, o, c, 2, 1)
        iy1_ = _pick(logm, o, c, 0, 1)
        ix1y1 = _pick(logm, o, c, 2, 2)
        ix1_y1_ = _pick(logm, o, c, 0, 0)
        dx = 0.5 * (ix1 - ix1_)
        dy = 0.5 * (iy1 - iy1_)
        dxx = ix1 - 2 * i_ + ix1_
        dyy = iy1 - 2 * i_ + iy1_
        dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
        # Hessian + eps * I with eps = float32 eps, as mmpose
        ha = dxx + 1.1920928955078125e-07
        hd = dyy + 1.1920928955078125e-07
        det = ha * hd - dxy * dxy
        px = px - (hd * dx - dxy * dy) / det
        py = py - (ha * dy - dxy * dx) / det

    if METHOD == 2:  # "dark": TokenPose's get_final_preds
        # get_max_preds: a map whose maximum is not positive decodes to (0, 0), which is no
        # interior point, so it is not refined.
        ax = tl.where(score > 0, ax, 0)
        ay = tl.where(score > 0, ay, 0)
        px = ax.to(tl.float32)
        py = ay.to(tl.float32)
        if (ax > 1) & (ax < W - 2) & (ay > 1) & (ay < H - 2):
            # The 5x5 neighbourhood (all inside the map) in an 8x8 tile.
            o = tl.arange(0, 8)[:, None]
            c = tl.arange(0, 8)[None, :]
            ny = tl.minimum(ay + o - 2, H - 1)
            nx = tl.minimum(ax + c - 2, W - 1)
            blurred = _blurred_tile(hm, fl, ny, nx, g_ptr, H, W, s_h, s_w, f_h, f_w, FLIP, 8, KS, BK)
            vmin = tl.min(tl.min(tl.where((o < 5) & (c < 5), blurred, float("inf")), axis=1), axis=0)
            scale = tl.full([], 1.0, tl.float32)
            if vmin < shortcut_floor:
                scale = score / _blurred_max(hm, fl, g_ptr, H, W, s_h, s_w, f_h, f_w, FLIP, KS, CH, CI)
            modulated = blurred * scale
            logm = tl.log(tl.where(modulated != modulated, modulated, tl.maximum(modulated, 1.0e-10)))
            at0 = _pick(logm, o, c, 2, 2)
            gx = 0.5 * (_pick(logm, o, c, 2, 3) - _pick(logm, o, c, 2, 1))
            gy = 0.5 * (_pick(logm, o, c, 3, 2) - _pick(logm, o, c, 1, 2))
            gxx = 0.25 * (_pick(logm, o, c, 2, 4) - 2 * at0 + _pick(logm, o, c, 2, 0))
            gxy = 0.25 * (_pick(logm, o, c, 3, 3) - _pick(logm, o, c, 1, 3) - _pick(logm, o, c, 3, 1)
                          + _pick(logm, o, c, 1, 1))
            gyy = 0.25 * (_pick(logm, o, c, 4, 2) - 2 * at0 + _pick(logm, o, c, 0, 2))
            hdet = gxx * gyy - gxy * gxy
            if hdet != 0:  # the official taylor() steps only with an invertible Hessian
                px = px - (gyy * gx - gxy * gy) / hdet
                py = py - (gxx * gy - gxy * gx) / hdet
        # HRNet geometry: similar about the centers, one factor from the widths
        mx = (W - 1).to(tl.float32) * 0.5
        my = (H - 1).to(tl.float32) * 0.5
        if HAS_BOX:
            f = (tl.load(scl_ptr + 2 * b) - 1.0) / (W - 1).to(tl.float32)
            kx = tl.load(ctr_ptr + 2 * b) + (px - mx) * f
            ky = tl.load(ctr_ptr + 2 * b + 1) + (py - my) * f
        else:
            f = (size_x - 1.0) / (W - 1).to(tl.float32)
            kx = (size_x - 1.0) * 0.5 + (px - mx) * f
            ky = (size_y - 1.0) * 0.5 + (py - my) * f
    else:
        kx = px / (W - 1).to(tl.float32) * size_x
        ky = py / (H - 1).to(tl.float32) * size_y
        if HAS_BOX:
            cx = tl.load(ctr_ptr + 2 * b)
            cy = tl.load(ctr_ptr + 2 * b + 1)
            sx = tl.load(scl_ptr + 2 * b)
            sy = tl.load(scl_ptr + 2 * b + 1)
            kx = kx / size_x * sx + cx - sx * 0.5
            ky = ky / size_y * sy + cy - sy * 0.5
    tl.store(kp_ptr + 2 * pid, kx)
    tl.store(kp_ptr + 2 * pid + 1, ky)
    tl.store(score_ptr + pid, score)


@functools.lru_cache(maxsize=None)
def _blur_taps(size: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(gaussian_kernel_1d(size), dtype=torch.float32, device=device)


def _decode(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
            blur_kernel_size, always_full_blur=False):
    """always_full_blur=True disables the exact shortcut (tests compare the two paths)."""
    B, K, H, W = heatmaps.shape
    keypoints = _alloc.empty(B, K, 2, dtype=torch.float32, device=heatmaps.device)
    scores = _alloc.empty(B, K, dtype=torch.float32, device=heatmaps.device)
    if B * K == 0:
        return keypoints, scores
    flip = flip_heatmaps is not None
    box = bbox_centers is not None
    g = _blur_taps(blur_kernel_size, heatmaps.device)
    BH, BW = max(16, triton.next_power_of_2(H)), max(16, triton.next_power_of_2(W))
    _decode_kernel[(B * K,)](
        heatmaps, flip_heatmaps if flip else heatmaps, flip_indices if flip else g, g,
        bbox_centers.contiguous() if box else g, bbox_scales.contiguous() if box else g,
        keypoints, scores, K, H, W, *heatmaps.stride(),
        *(flip_heatmaps.stride() if flip else heatmaps.stride()),
        float(input_size[0]), float(input_size[1]),
        float("inf") if always_full_blur else _FLOOR[method] * (1.0 + 1e-5),
        FLIP=flip, METHOD=_METHODS[method], HAS_BOX=box, KS=blur_kernel_size,
        BK=triton.next_power_of_2(blur_kernel_size), BH=BH, BW=BW,
        CH=16, CI=triton.next_power_of_2(16 + 2 * (blur_kernel_size // 2)), num_stages=1,
        num_warps=4 if BH * BW <= 4096 else 8)
    return keypoints, scores


decode_heatmaps_op = define_decode_heatmaps("triton", _decode)


def reasons(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
            blur_kernel_size) -> list[str]:
    out = []
    for name, t in (("heatmaps", heatmaps), ("flip_heatmaps", flip_heatmaps)):
        if t is not None and t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            out.append(f"{name}.dtype={t.dtype}: the Triton kernel reads float32/float16/bfloat16")
    H, W = heatmaps.shape[-2:]
    if max(H, W) > _MAX_SIDE:
        out.append(f"heatmaps of {H}x{W}: the Triton kernel holds one map per program, at most "
                   f"{_MAX_SIDE} per side")
    if blur_kernel_size > _MAX_BLUR:
        out.append(f"blur_kernel_size={blur_kernel_size} > {_MAX_BLUR}")
    if heatmaps.device.type != "cuda" and not (heatmaps.device.type == "cpu" and dispatch.interpreting()):
        out.append(f"heatmaps.device={heatmaps.device}: Triton needs a CUDA tensor "
                   "(or CPU with TRITON_INTERPRET=1)")
    return out


@dispatch.register("decode_heatmaps", "triton", reasons=reasons)
def decode_heatmaps(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales,
                    method, blur_kernel_size):
    return decode_heatmaps_op(heatmaps, flip_heatmaps, flip_indices, list(input_size), bbox_centers,
                              bbox_scales, method, blur_kernel_size)
