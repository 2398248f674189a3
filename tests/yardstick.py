"""The low-precision yardstick: window_attention and masked_attention computed with the kernels'
precision model.

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
    """float32 -> dtype (round to nearest even, as GPUs convert) -> float32; .smallest_normal: the
    dtype's (below it rounding errors are absolute)."""
    def rnd(t):
        return t.to(dtype).float()
    rnd.smallest_normal = torch.finfo(dtype).smallest_normal
    return rnd


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


def _norm2(t):
    """Squared norm of each row (the last dimension)."""
    return t.square().sum(-1)


def _product_noise(p, ds, q, keys, values, dout, out, scale, rnd, allowed):
    """The squared noise scales of one attention's products, per row (batched over leading dims):
    "out" (of P.V), "dq" (of dS.K, without delta's term), "keys" (of dS^T.Q, with delta's term),
    "values" (of P^T.dO); and delta's pieces, "n_delta" and "grad_of_delta", which the caller
    combines into dq's delta term once it has added what else dq sums (rel-pos). allowed: where P
    may be nonzero (bool, broadcasts to P)."""
    mT = lambda t: t.transpose(-1, -2)
    rowdot = lambda a, n: (a @ n[..., None])[..., 0]  # a @ a column of squared norms
    # Rounding x to the low dtype is off by up to u * max(|x|, its smallest normal): below it the
    # error is absolute (float16 P underflows to subnormals or 0 where the float64 truth is not).
    low = lambda t: torch.where(allowed, rnd(t).abs().clamp_min(rnd.smallest_normal), 0.0).square()
    p2, ds2 = low(p), low(ds)
    # delta = rowsum(dO * out) carries out's rounding into every dS of its row (dS = P (dP - delta)):
    # where P is peaked dP - delta cancels, and this is the largest error of dq and dk.
    n_delta = _norm2(dout * out)
    return {"out": rowdot(p2, _norm2(values)),
            "dq": rowdot(ds2, _norm2(keys)) * scale ** 2,
            "n_delta": n_delta,
            "grad_of_delta": (p @ keys) * scale,  # d dq / d delta, per row
            "keys": rowdot(mT(ds2 + p.square() * n_delta[..., None]), _norm2(q)) * scale ** 2,
            "values": rowdot(mT(p2), _norm2(dout))}


def _head(q, k, v, rh, rw, dout, L, scale, rnd):
    """Forward and FlashAttention-2 backward of one (batch, head), float32 with the kernels'
    roundings `rnd`. -> [out, dq, dk, dv] (rounded), their row noise scales, and the rel-pos
    gradients' unrounded partial sums.

    A row's noise scale is the size of what its rounding errors are made of: the norm of the
    products its sum adds up (each carries the rounding of one operand, P or dS) plus the row
    itself (its own storage). The harness ranks rows by it to compare like with like; a small
    gradient summed from large terms is as noisy as the terms are."""
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

    terms = _product_noise(p, ds, q, keys, values, dout, out, scale, rnd, L["allowed"])
    n_dq, grad_of_delta = terms["dq"], terms["grad_of_delta"]
    for r, idx in rel:
        same = L["same_cell"]
        cell_ds = torch.where(same, ds[G:, G:N], 0.0)
        rows = torch.zeros(N - G, r.shape[0], device=q.device).scatter_add_(1, idx, cell_ds)
        n_dq[G:] += rows.square() @ _norm2(r)
        cell_p = torch.where(same, p[G:, G:N], 0.0)
        grad_of_delta[G:] += torch.zeros(N - G, r.shape[0], device=q.device).scatter_add_(1, idx, cell_p) @ r
    n_dq += terms["n_delta"] * _norm2(grad_of_delta)
    spread = L["avg"].T.square()
    n_dk, n_dv = terms["keys"][:N].clone(), terms["values"][:N].clone()
    n_dk[G:] += spread @ terms["keys"][N:]
    n_dv[G:] += spread @ terms["values"][N:]
    results = [out, rnd(dq), rnd(dk), rnd(dv)]
    noise = [(n + _norm2(x)).sqrt() for n, x in zip((terms["out"], n_dq, n_dk, n_dv), results)]
    return results, noise, drel


def window_attention(q, k, v, rel_pos_h, rel_pos_w, dout, *, grid, window=None, shift=(0, 0), pool=False,
                     num_global=0, scale=None, row_noise=False):
    """The yardstick of a low-precision window_attention call and its backward for `dout`:
    [out, dq, dk, dv, drel_pos_h?, drel_pos_w?] (present rel-pos gradients only), in q's dtype;
    with row_noise, also [the (B, H, N) row noise scales of out, dq, dk, dv] (see _head)."""
    dtype = q.dtype
    rnd = rounding(dtype)
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    L = _layout(grid, window, shift, num_global, pool, q.device)
    results = [torch.empty(B, H, N, D, dtype=dtype, device=q.device) for _ in range(4)]
    noise = [torch.empty(B, H, N, device=q.device) for _ in range(4)]
    drel = None
    for b in range(B):
        for h in range(H):
            per_head, head_noise, parts = _head(q[b, h], k[b, h], v[b, h], rel_pos_h, rel_pos_w, dout[b, h], L,
                                                scale, rnd)
            for res, t, nres, nt in zip(results, per_head, noise, head_noise):
                res[b, h] = t.to(dtype)  # exact: t holds rounded values
                nres[b, h] = nt
            drel = parts if drel is None else [a + c for a, c in zip(drel, parts)]
    rels = [r for r in (rel_pos_h, rel_pos_w) if r is not None]
    values = results + [rnd(d).to(r.dtype) for d, r in zip(drel, rels)]
    return (values, noise) if row_noise else values


def masked_attention(q, k, v, allowed, dout, *, scale=None, row_noise=False):
    """The yardstick of a low-precision masked_attention call and its backward for `dout`, with the
    same precision model: [out, dq, dk, dv] in q's dtype. allowed: (B, H, Lq, Lk) bool or None. A
    query without keys gets zeros, as in the spec. With row_noise, also [the row noise scales of
    out, dq (B, H, Lq), dk, dv (B, H, Lk)], as _head's: a small dq row summed from large dS terms
    that cancel ranks with the noisy rows, not with the small ones."""
    dtype = q.dtype
    rnd = rounding(dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, dout = (t.float() for t in (q, k, v, dout))
    s = (q @ k.transpose(-1, -2)) * scale
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    has_key = torch.isfinite(s).any(-1, keepdim=True)
    p = torch.softmax(s.masked_fill(~has_key, 0.0), dim=-1) * has_key
    out = rnd(rnd(p) @ v)
    delta = (dout * out).sum(-1, keepdim=True)
    ds = p * (dout @ v.transpose(-1, -2) - delta)
    dv = rnd(rnd(p).transpose(-1, -2) @ dout)
    dk = rnd((rnd(ds).transpose(-1, -2) @ q) * scale)
    dq = rnd((rnd(ds) @ k) * scale)
    results = [t.to(dtype) for t in (out, dq, dk, dv)]
    if not row_noise:
        return results
    terms = _product_noise(p, ds, q, k, v, dout, out, scale, rnd,
                           has_key if allowed is None else allowed & has_key)
    n_dq = terms["dq"] + terms["n_delta"] * _norm2(terms["grad_of_delta"])
    noise = [(n + _norm2(x)).sqrt() for n, x in zip((terms["out"], n_dq, terms["keys"], terms["values"]),
                                                    (out, dq, dk, dv))]
    return results, noise
