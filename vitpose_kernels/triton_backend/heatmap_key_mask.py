"""Triton heatmap_key_mask: TAR-ViTPose's JTA mask from the initial heatmaps in one launch (the
spec: vitpose_kernels.reference.heatmap_key_mask).

The PyTorch route is about ten launches (amin, amax, subtract, add, divide, interpolate, compare,
view, repeat over the heads, pack) and writes a normalised copy of every heatmap. Here one program
builds one mask row (clip b, joint query j): it finds the min and max of the T heatmaps feeding
the row, then for every key (frame-major token of the feature grid) samples its four bilinear taps,
normalises them, interpolates as F.interpolate(bilinear, align_corners=False) does, thresholds and
writes the row straight into its final layout, bit-packed or as bools. Each heatmap feeds exactly
one row, so every map is read once.

Arithmetic in float32: for float32 heatmaps the result equals the reference's except, possibly,
for keys within float rounding of the threshold (the tests allow exactly those); for fp16/bf16
heatmaps (which the reference processes in their own dtype) within that dtype's rounding.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .. import _alloc, dispatch
from ..reference.heatmap_key_mask import EPS
from ..reference.masked_attention import mask_words
from .window_attention.host import _pow2

MAP_BLOCK = 1024  # heatmap pixels per step of the min/max pass
KEY_BLOCK = 512  # keys per step of the sampling pass (a multiple of 32: whole mask words)


@triton.jit
def _source(row, chunk, T, J, OFFICIAL: tl.constexpr):
    """(frame, joint) of the heatmap behind chunk `chunk` of mask row `row` (a program id)."""
    if OFFICIAL:  # the official forward's view of (T, J) as (J, T)
        flat = row * T + chunk
        return flat // J, flat % J
    else:
        return row * 0 + chunk, row + chunk * 0


@triton.jit
def _axis(out_idx, scale, size):
    """F.interpolate's bilinear source taps along one axis (align_corners=False): i0, i1, w0, w1."""
    src = tl.maximum((out_idx.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = src.to(tl.int32)  # src >= 0: truncation is floor
    i1 = i0 + (i0 < size - 1).to(tl.int32)
    w1 = src - i0.to(tl.float32)
    return i0, i1, 1.0 - w1, w1


@triton.jit
def _heatmap_key_mask_kernel(HM, OUT, shb, sht, shj, shy, shx, T, J, HH, WH, HF, WF, LK, NW,
                             scale_y, scale_x, threshold, eps,
                             OFFICIAL: tl.constexpr, PACKED: tl.constexpr, T_PAD: tl.constexpr,
                             MAP_BLOCK: tl.constexpr, KEY_BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = tl.program_id(1)
    HM += b.to(tl.int64) * shb
    # Pass 1: min and max of each of the T maps feeding this row, kept as T_PAD-vectors.
    t_idx = tl.arange(0, T_PAD)
    lo_t = tl.zeros([T_PAD], dtype=tl.float32)
    hi_t = tl.zeros([T_PAD], dtype=tl.float32)
    pix = tl.arange(0, MAP_BLOCK)
    for c in range(0, T):
        frame, joint = _source(row, c, T, J, OFFICIAL)
        base = HM + frame.to(tl.int64) * sht + joint.to(tl.int64) * shj
        lo = tl.full([MAP_BLOCK], float("inf"), dtype=tl.float32)
        hi = tl.full([MAP_BLOCK], float("-inf"), dtype=tl.float32)
        for p0 in range(0, HH * WH, MAP_BLOCK):
            p = p0 + pix
            ok = p < HH * WH
            x = tl.load(base + (p // WH) * shy + (p % WH) * shx, mask=ok, other=0.0).to(tl.float32)
            lo = tl.minimum(lo, tl.where(ok, x, float("inf")))
            hi = tl.maximum(hi, tl.where(ok, x, float("-inf")))
        lo_t = tl.where(t_idx == c, tl.min(lo, 0), lo_t)
        hi_t = tl.where(t_idx == c, tl.max(hi, 0), hi_t)
    # Pass 2: every key of the row, KEY_BLOCK (a multiple of 32) at a time.
    hw = HF * WF
    for k0 in range(0, LK, KEY_BLOCK):
        key = k0 + tl.arange(0, KEY_BLOCK)
        key_ok = key < LK
        chunk = key // hw
        cell = key - chunk * hw
        frame, joint = _source(row, chunk, T, J, OFFICIAL)
        pick = chunk[:, None] == t_idx[None, :]  # a one-hot gather of the chunk's min and max
        lo = tl.sum(tl.where(pick, lo_t[None, :], 0.0), 1)
        rng = tl.sum(tl.where(pick, hi_t[None, :], 0.0), 1) - lo + eps  # (max - min) + eps
        y0, y1, wy0, wy1 = _axis(cell // WF, scale_y, HH)
        x0, x1, wx0, wx1 = _axis(cell % WF, scale_x, WH)
        base = HM + frame.to(tl.int64) * sht + joint.to(tl.int64) * shj
        n00 = (tl.load(base + y0 * shy + x0 * shx, mask=key_ok, other=0.0).to(tl.float32) - lo) / rng
        n01 = (tl.load(base + y0 * shy + x1 * shx, mask=key_ok, other=0.0).to(tl.float32) - lo) / rng
        n10 = (tl.load(base + y1 * shy + x0 * shx, mask=key_ok, other=0.0).to(tl.float32) - lo) / rng
        n11 = (tl.load(base + y1 * shy + x1 * shx, mask=key_ok, other=0.0).to(tl.float32) - lo) / rng
        value = wy0 * (wx0 * n00 + wx1 * n01) + wy1 * (wx0 * n10 + wx1 * n11)
        allowed = (~(value < threshold)) & key_ok  # the official `value < threshold` is masked out
        if PACKED:
            bits = allowed.to(tl.int32) << (tl.arange(0, KEY_BLOCK) % 32)
            words = tl.sum(tl.reshape(bits, (KEY_BLOCK // 32, 32)), 1)  # distinct bits: sum == or
            w = k0 // 32 + tl.arange(0, KEY_BLOCK // 32)
            tl.store(OUT + (b * J + row).to(tl.int64) * NW + w, words.to(tl.int32), mask=w < NW)
        else:
            tl.store(OUT + (b * J + row).to(tl.int64) * LK + key, allowed.to(tl.int8), mask=key_ok)


def _heatmap_key_mask(heatmaps, grid, threshold, layout, packed):
    B, T, J, HH, WH = heatmaps.shape
    HF, WF = grid
    lk = T * HF * WF
    nw = mask_words(lk)
    if packed:
        out = _alloc.empty(B, 1, J, nw, dtype=torch.int32, device=heatmaps.device)
    else:
        out = _alloc.empty(B, 1, J, lk, dtype=torch.uint8, device=heatmaps.device)
    _heatmap_key_mask_kernel[(J, B)](
        heatmaps, out, *heatmaps.stride(), T, J, HH, WH, HF, WF, lk, nw,
        # F.interpolate(size=...) with align_corners=False: scale = input / output, in float32
        float(np.float32(HH) / np.float32(HF)), float(np.float32(WH) / np.float32(WF)),
        threshold, EPS, OFFICIAL=layout == "official", PACKED=packed, T_PAD=_pow2(T, 2),
        MAP_BLOCK=min(_pow2(HH * WH, 32), MAP_BLOCK), KEY_BLOCK=min(_pow2(lk, 32), KEY_BLOCK))
    return out if packed else out.view(torch.bool)


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def heatmap_key_mask_reasons(heatmaps, grid, threshold, layout, packed) -> list:
    why = []
    if heatmaps.dtype not in _DTYPES:
        why.append(f"heatmaps.dtype={heatmaps.dtype}: the Triton kernel takes float32, float16 or bfloat16")
    if heatmaps.device.type == "cpu":
        if not dispatch.interpreting():
            why.append("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1), else a CUDA device")
    elif heatmaps.device.type != "cuda":
        why.append(f"heatmaps.device={heatmaps.device}: the Triton kernel runs on CUDA (or the CPU interpreter)")
    return why


@dispatch.register("heatmap_key_mask", "triton", reasons=heatmap_key_mask_reasons)
def heatmap_key_mask(heatmaps, grid, threshold, layout, packed):
    return _heatmap_key_mask(heatmaps, grid, threshold, layout, packed)
