"""The low-precision yardstick: window_attention computed with the kernels' precision model.

A float16/bfloat16 kernel is compared with the float64 truth, and how far it may be off is
measured against what the same computation loses when done the way the kernels do it
(FlashAttention's criterion, factor <= 2): every product takes operands in the low dtype and
accumulates in float32; logits, the softmax and every running sum stay float32; a value is rounded
to the low dtype only where a kernel stores it or feeds it to a tensor-core product: P before
P.V and P^T.dO, dS before dS.K and dS^T.Q, the pooled tile means, the outputs and the gradients.

This is an independent, dense formulation of the spec (a mask over all N + P keys, with the
FlashAttention-2 backward written out), so it also cross-checks the reference. Memory is
N x (N + P) floats per (batch, head), computed one head at a time.
"""
from __future__ import annotations

import torch

def rounding(dtype):
    """float32 -> dtype (round to nearest even, as GPUs convert) -> float32."""
    return lambda t: t.to(dtype).float()


def _layout(grid, window, shift, num_global, pool, device):
    """Index bookkeeping of one call: which (query, key) pairs are allowed, the in-cell relative
    offsets of grid pairs, and the (P, Hg*Wg) averaging matrix of the pooled tiles."""
    hg, wg = grid
    wh, ww = window or grid
    sh, sw = shift
    G = num_global
    y = torch.arange(hg, device=device).repeat_interleave(wg)
    x = torch.arange(wg, device=device).repeat(hg)
    top, left = (wh - sh) % wh, (ww - sw) % ww  # the first cell boundary sits at `shift`
    cell = ((y + top) // wh) * (wg + ww) + (x + left) // ww
    same_cell = cell[:, None] == cell[None, :]
    ntw = -(-wg // ww)
    P = -(-hg // wh) * ntw if pool else 0
    tile = (y // wh) * ntw + x // ww
    avg = torch.zeros(P, hg * wg, device=device)
    if P:
        avg[tile, torch.arange(hg * wg, device=device)] = 1.0
        avg /= avg.sum(1, keepdim=True)
    N = G + hg * wg
    allowed = torch.zeros(N, N + P, dtype=torch.bool, device=device)
    allowed[:G, :N] = True          # global queries: every real token, no pooled ones
    allowed[G:, :G] = True          # grid queries: the global tokens,
    allowed[G:, G:N] = same_cell    # their cell,
    allowed[G:, N:] = True          # and every pooled tile
    rel_h = torch.where(same_cell, y[:, None] - y[None, :] + wh - 1, 0)
    rel_w = torch.where(same_cell, x[:, None] - x[None, :] + ww - 1, 0)
    return dict(G=G, N=N, P=P, allowed=allowed, same_cell=same_cell, avg=avg, rel_h=rel_h, rel_w=rel_w)


def _head(q, k, v, rh, rw, dout, L, scale, rnd):
    """Forward and FlashAttention-2 backward of one (batch, head), float32 with the kernels'
    roundings `rnd`. -> [out, dq, dk, dv] (rounded), and the rel-pos gradients' unrounded
    partial sums."""
    G, N = L["G"], L["N"]
    q, k, v, dout = (t.float() for t in (q, k, v, dout))
    keys = torch.cat([k, rnd(L["avg"] @ k[G:])])
    values = torch.cat([v, rnd(L["avg"] @ v[G:])])
    s = (q @ keys.T) * scale
    rel = [(r.float(), L[idx]) for r, idx in ((rh, "rel_h"), (rw, "rel_w")) if r is not None]
    for r, idx in rel:  # q . R[offset] on same-cell grid pairs
        s[G:, G:N] += torch.where(L["same_cell"], torch.gather(q[G:] @ r.T, 1, idx), 0.0)
    s = s.masked_fill(~L["allowed"], float("-inf"))
    p = torch.softmax(s, dim=-1)
    out = rnd(rnd(p) @ values)

    delta = (dout * out).sum(-1, keepdim=True)
    ds = p * (dout @ values.T - delta)
    dvals = rnd(p).T @ dout
    dkeys = (rnd(ds).T @ q) * scale
    dq = (rnd(ds) @ keys) * scale
    drel = []
    for r, idx in rel:  # per grid row, the logit gradient summed per relative offset
        cell_ds = torch.where(L["same_cell"], ds[G:, G:N], 0.0)
        rows = torch.zeros(N - G, r.shape[0], device=q.device).scatter_add_(1, idx, cell_ds)
        dq[G:] += rows @ r
        drel.append(rows.T @ q[G:])
    dk, dv = dkeys[:N].clone(), dvals[:N].clone()
    dk[G:] += L["avg"].T @ dkeys[N:]  # a pooled key's gradient, spread over its tile
    dv[G:] += L["avg"].T @ dvals[N:]
    return [out, rnd(dq), rnd(dk), rnd(dv)], drel


def window_attention(q, k, v, rel_pos_h, rel_pos_w, dout, *, grid, window=None, shift=(0, 0), pool=False,
                     num_global=0, scale=None):
    """The yardstick of a low-precision window_attention call and its backward for `dout`:
    [out, dq, dk, dv, drel_pos_h?, drel_pos_w?] (present rel-pos gradients only), in q's dtype."""
    dtype = q.dtype
    rnd = rounding(dtype)
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    L = _layout(grid, window, shift, num_global, pool, q.device)
    results = [torch.empty(B, H, N, D, dtype=dtype, device=q.device) for _ in range(4)]
    drel = None
    for b in range(B):
        for h in range(H):
            per_head, parts = _head(q[b, h], k[b, h], v[b, h], rel_pos_h, rel_pos_w, dout[b, h], L, scale, rnd)
            for res, t in zip(results, per_head):
                res[b, h] = t.to(dtype)  # exact: t holds rounded values
            drel = parts if drel is None else [a + c for a, c in zip(drel, parts)]
    rels = [r for r in (rel_pos_h, rel_pos_w) if r is not None]
    return results + [rnd(d).to(r.dtype) for d, r in zip(drel, rels)]
