"""Reference window_attention: the spec, in plain differentiable PyTorch.

Grid tokens are gathered into their (possibly shifted, possibly partial) cells by padding the grid
so that cell boundaries fall on multiples of the window; padded positions are masked out as keys.
Each grid query then attends to its cell, the pooled tile means and the global tokens; each
global query attends to every real token. This is how ViTDet/Swin-style code computes windowed
attention (memory ~ cells x cell_size^2, not N^2), so it doubles as the "reference ops" baseline
in the benchmarks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validate import AttentionSpec


def _cell_padding(size: int, window: int, shift: int) -> tuple[int, int]:
    # Cell index of row y is floor((y - shift) / window); padding `before` rows makes that
    # floor((y + before) / window) + const, so cells become plain reshapes of the padded grid.
    before = (window - shift) % window
    after = -(size + before) % window
    return before, after


def _to_cells(x: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """(B, H, Hg, Wg, C) -> (B, H, cells, wh*ww, C), zero-padded at partial cells."""
    (hg, wg), (wh, ww), (sh, sw) = spec.grid, spec.window, spec.shift
    top, bottom = _cell_padding(hg, wh, sh)
    left, right = _cell_padding(wg, ww, sw)
    x = F.pad(x, (0, 0, left, right, top, bottom))
    B, H, ph, pw, C = x.shape
    x = x.view(B, H, ph // wh, wh, pw // ww, ww, C).transpose(3, 4)
    return x.reshape(B, H, (ph // wh) * (pw // ww), wh * ww, C)


def _from_cells(x: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """Inverse of _to_cells, dropping the padding: (B, H, cells, wh*ww, C) -> (B, H, Hg*Wg, C)."""
    (hg, wg), (wh, ww), (sh, sw) = spec.grid, spec.window, spec.shift
    top, bottom = _cell_padding(hg, wh, sh)
    left, right = _cell_padding(wg, ww, sw)
    B, H, _, _, C = x.shape
    nh, nw = (hg + top + bottom) // wh, (wg + left + right) // ww
    x = x.view(B, H, nh, nw, wh, ww, C).transpose(3, 4).reshape(B, H, nh * wh, nw * ww, C)
    return x[:, :, top:top + hg, left:left + wg].reshape(B, H, hg * wg, C)


def pooled_tokens(x: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """Means of the grid tokens over each tile of the unshifted window tiling: (B, H, P, D)."""
    (hg, wg), (wh, ww) = spec.grid, spec.window
    B, H, _, D = x.shape
    grid = x.reshape(B, H, hg, wg, D).permute(0, 1, 4, 2, 3).reshape(B * H, D, hg, wg)
    # ceil_mode + zero padding-free average: partial edge tiles average their real members only.
    pooled = F.avg_pool2d(grid, (wh, ww), stride=(wh, ww), ceil_mode=True)
    return pooled.reshape(B, H, D, -1).transpose(2, 3)


def _rel_pos_logits(q_cells: torch.Tensor, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> torch.Tensor:
    """Decomposed relative position (ViTDet/SAM): (B, H, cells, S, S) additive logits."""
    wh, ww = spec.window
    B, H, nc, S, D = q_cells.shape
    iy = torch.arange(wh, device=q_cells.device)
    ix = torch.arange(ww, device=q_cells.device)
    bias = q_cells.new_zeros(B, H, nc, wh, ww, wh, ww)
    q = q_cells.reshape(B, H, nc, wh, ww, D)
    if rel_pos_h is not None:
        rh = rel_pos_h[iy[:, None] - iy[None, :] + wh - 1].to(q.dtype)  # (wh_q, wh_k, D)
        bias = bias + torch.einsum("bhcyxd,ykd->bhcyxk", q, rh)[..., :, None]
    if rel_pos_w is not None:
        rw = rel_pos_w[ix[:, None] - ix[None, :] + ww - 1].to(q.dtype)  # (ww_q, ww_k, D)
        bias = bias + torch.einsum("bhcyxd,xkd->bhcyxk", q, rw)[..., None, :]
    return bias.reshape(B, H, nc, S, S)


def window_attention(q, k, v, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> torch.Tensor:
    """See vitpose_kernels.window_attention. Logits in the input dtype (fp32 accumulate on GPUs),
    softmax in float32, output in q's dtype."""
    B, H, N, D = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # float32 softmax; float64 kept for gradcheck
    G, (hg, wg) = spec.num_global, spec.grid
    qg, kg, vg = q[:, :, :G], k[:, :, :G], v[:, :, :G]
    grid = [t[:, :, G:].reshape(B, H, hg, wg, D) for t in (q, k, v)]
    qc, kc, vc = (_to_cells(t, spec) for t in grid)

    # Which cell positions hold real tokens (the rest is padding of partial cells).
    valid = _to_cells(q.new_ones(1, 1, hg, wg, 1), spec)[0, 0, :, :, 0] > 0  # (cells, S)

    logits = [torch.matmul(qc, kc.transpose(-1, -2)) * spec.scale]
    if rel_pos_h is not None or rel_pos_w is not None:
        logits[0] = logits[0] + _rel_pos_logits(qc, rel_pos_h, rel_pos_w, spec)
    logits[0] = logits[0].masked_fill(~valid[:, None, :], float("-inf"))
    values = [vc]
    if spec.pool:
        kp, vp = pooled_tokens(k[:, :, G:], spec), pooled_tokens(v[:, :, G:], spec)
        logits.append(torch.matmul(qc, kp[:, :, None].transpose(-1, -2)) * spec.scale)
        values.append(vp[:, :, None].expand(-1, -1, qc.shape[2], -1, -1))
    if G:
        logits.append(torch.matmul(qc, kg[:, :, None].transpose(-1, -2)) * spec.scale)
        values.append(vg[:, :, None].expand(-1, -1, qc.shape[2], -1, -1))
    probs = torch.softmax(torch.cat(logits, dim=-1), dim=-1, dtype=acc).to(v.dtype)
    out_cells = torch.matmul(probs, torch.cat(values, dim=-2))
    out = _from_cells(out_cells, spec)

    if G:
        # Global queries see every token (global and grid, not pooled), without relative position.
        g_logits = torch.matmul(qg, k.transpose(-1, -2)) * spec.scale
        g_probs = torch.softmax(g_logits, dim=-1, dtype=acc).to(v.dtype)
        out = torch.cat([torch.matmul(g_probs, v), out], dim=2)
    return out.to(q.dtype)
