"""Triton window_attention: one fused kernel family for full, windowed, shifted, pooled, global and
relative-position attention (the spec: vitpose_kernels.reference.window_attention).

Layout of the work. A grid query block is a block of one *cell* (the shifted window the query
falls in), so its keys are that cell's grid tokens, found by index arithmetic on the row-major
grid (no roll, no partition copy, no mask tensor: partial edge cells are masked slots), followed
by the E = P + G "extra" keys: the P pooled tile means and the G global tokens, gathered into one
small (B, H, E, D) buffer by `_extra_kv_kernel`. Global query blocks attend to all N tokens.
The softmax is online (FlashAttention), in base 2, with fp32 accumulation.

Backward (FlashAttention-2, recomputing probabilities from the saved log-sum-exp), deterministic:
no atomics; every gradient row is written by exactly one program.
  1. `_delta_kernel`: delta = rowsum(dO * O).
  2. `_bwd_extra_kernel`: dk/dv of the extra keys (pooled ones into a small fp32 buffer, global
     ones straight into dk/dv), each program looping over all queries that see its keys.
  3. `_bwd_cell_kernel`: dk/dv of the grid keys from their cell's queries and the global queries,
     plus the pooled-key gradient spread back as mean-grads over the tile members.
  4. `_bwd_q_kernel`: dq; with relative position also d(q.R) per row, which gives dq's relative
     position term in-kernel and d rel_pos (a small reduction done by torch afterwards).

Saved for backward: q, k, v, out, lse (and the rel_pos parameters). Nothing of size N x N or
cells x cell_size^2 is ever allocated; the only per-row temporaries are lse/delta (N floats) and,
with relative position, q.R_h / q.R_w (N x (2*wh - 1) floats).
"""
import functools
import os
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from .. import _alloc, dispatch
from .._validate import AttentionSpec

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
MAX_REL_ROWS = 512  # 2*wh - 1: the dq kernel holds a (BLOCK_M, next_pow2(2*wh-1)) tile


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    """tl.dot with fp32 accumulation. PREC "upcast" (bf16 under the interpreter, whose bf16
    tl.dot is wrong in triton 3.9) multiplies the exactly-upcast operands instead: same result."""
    if PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _head(PTR, bh, H, sb, sh):
    """PTR advanced to head bh = b * H + h of a strided (B, H, ...) tensor. Offsets in int64:
    B * H * N * D overflows int32 at ViTPose sizes."""
    b = bh // H
    h = bh - b * H
    return PTR + b.to(tl.int64) * sb + h.to(tl.int64) * sh


@triton.jit
def _rows(PTR, bh, n, width):
    """PTR advanced to head bh of a contiguous (B * H, n, width) buffer."""
    return PTR + bh.to(tl.int64) * n * width


@triton.jit
def _cell_tokens(cell, s, NCW, WH, WW, TOP, LEFT, HG, WG, G):
    """Slot s of cell `cell` -> (token index, slot holds a real token, row in cell, col in cell).

    Cell (cr, cc) covers grid rows cr*WH - TOP + [0, WH) and columns cc*WW - LEFT + [0, WW):
    boundaries at shift + i*window, as in the spec; slots outside the grid are masked."""
    cr = cell // NCW
    cc = cell - cr * NCW
    ly = s // WW
    lx = s - ly * WW
    y = cr * WH - TOP + ly
    x = cc * WW - LEFT + lx
    valid = (s < WH * WW) & (y >= 0) & (y < HG) & (x >= 0) & (x < WG)
    tok = tl.where(valid, G + y * WG + x, 0)
    return tok, valid, ly, lx


@triton.jit
def _query_block(pid, NCELLS, NCW, WH, WW, TOP, LEFT, HG, WG, G, BLOCK_M: tl.constexpr):
    """Query block `pid` of the forward and dq grids: the first NCELLS * per_cell blocks tile the
    cells, the rest tile the G global tokens. -> (cell, is_grid, token, valid, row in cell,
    col in cell); a global row's in-cell position is a placeholder (no relative position)."""
    per_cell = tl.cdiv(WH * WW, BLOCK_M)
    n_grid = NCELLS * per_cell
    offs_m = tl.arange(0, BLOCK_M)
    cell = pid // per_cell
    is_grid = pid < n_grid
    if is_grid:
        tok, valid, ly, lx = _cell_tokens(cell, (pid - cell * per_cell) * BLOCK_M + offs_m,
                                          NCW, WH, WW, TOP, LEFT, HG, WG, G)
    else:
        tok = (pid - n_grid) * BLOCK_M + offs_m
        valid = tok < G
        ly = offs_m * 0
        lx = offs_m * 0
    return cell, is_grid, tok, valid, ly, lx


@triton.jit
def _load_rows(PTR, tok, valid, sn, sd, d, dmask):
    """Rows `tok` of one head of a strided (N, D) tensor; masked rows and padded columns read 0."""
    return tl.load(PTR + tok.to(tl.int64)[:, None] * sn + d[None, :] * sd,
                   mask=valid[:, None] & dmask[None, :], other=0.0)


@triton.jit
def _load_kv(K, V, tok, valid, skn, skd, svn, svd, d, dmask):
    """k and v rows `tok` of one head."""
    return (_load_rows(K, tok, valid, skn, skd, d, dmask),
            _load_rows(V, tok, valid, svn, svd, d, dmask))


@triton.jit
def _load_extra_kv(KX, VX, e, E, d, dmask, D: tl.constexpr):
    """Extra keys/values e of one head of the contiguous (B, H, E, D) buffers."""
    m = (e < E)[:, None] & dmask[None, :]
    return (tl.load(KX + e[:, None] * D + d[None, :], mask=m, other=0.0),
            tl.load(VX + e[:, None] * D + d[None, :], mask=m, other=0.0))


@triton.jit
def _load_q_rows(Q, DO, LSE, DELTA, tok, valid, sqn, sqd, sdn, sdd, d, dmask):
    """What the backward needs of query rows `tok`: q, dO and the row's saved lse and delta."""
    q = _load_rows(Q, tok, valid, sqn, sqd, d, dmask)
    do = _load_rows(DO, tok, valid, sdn, sdd, d, dmask)
    lse = tl.load(LSE + tok, mask=valid, other=0.0)
    delta = tl.load(DELTA + tok, mask=valid, other=0.0)
    return q, do, lse, delta


@triton.jit
def _store_rows(PTR, bh, N, tok, x, mask, d, D: tl.constexpr):
    """x into rows `tok` of head bh of a contiguous (B, H, N, D) output, in its dtype."""
    tl.store(PTR + ((bh.to(tl.int64) * N + tok)[:, None] * D + d[None, :]),
             x.to(PTR.dtype.element_ty), mask=mask)


@triton.jit
def _rel_bias(RELH, RELW, tok_q, ly_q, lx_q, ly_k, lx_k, pair_mask, G, WH, WW, RHS, RWS,
              HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """q.R_h[yq - yk + wh - 1] + q.R_w[xq - xk + ww - 1], gathered from the per-row projections."""
    bias = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    row = (tok_q - G).to(tl.int64)
    if HAS_RELH:
        jh = ly_q[:, None] - ly_k[None, :] + WH - 1
        bias += tl.load(RELH + row[:, None] * RHS + jh, mask=pair_mask, other=0.0)
    if HAS_RELW:
        jw = lx_q[:, None] - lx_k[None, :] + WW - 1
        bias += tl.load(RELW + row[:, None] * RWS + jw, mask=pair_mask, other=0.0)
    return bias


@triton.jit
def _softmax_step(acc, m_i, l_i, q, k, v, bias, kmask, qk_scale, PREC: tl.constexpr):
    """One key block of the online softmax. Logits in log2 units; a fully masked block leaves the
    row untouched because m_i starts finite (-1e30) while masked logits are -inf."""
    s = _mm(q, tl.trans(k), PREC) * qk_scale + bias * 1.4426950408889634
    s = tl.where(kmask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, PREC)
    return acc, m_new, l_i


@triton.jit
def _grad_step(q, k, v, do, lse, delta, bias, pmask, qk_scale, PREC: tl.constexpr):
    """Recomputed probabilities p and logit gradients ds = p * (dO.v - delta) of one tile."""
    s = _mm(q, tl.trans(k), PREC) * qk_scale + bias * 1.4426950408889634
    p = tl.where(pmask, tl.exp2(s - lse[:, None]), 0.0)
    dp = _mm(do, tl.trans(v), PREC)
    ds = p * (dp - delta[:, None])
    return p, ds


@triton.jit
def _kv_grad_step(dk, dv, q, k, v, do, lse, delta, bias, pmask, qk_scale, PREC: tl.constexpr):
    """Adds one query tile's share to a key tile's dk (before the softmax scale) and dv."""
    p, ds = _grad_step(q, k, v, do, lse, delta, bias, pmask, qk_scale, PREC)
    dv += _mm(tl.trans(p).to(do.dtype), do, PREC)
    dk += _mm(tl.trans(ds).to(q.dtype), q, PREC)
    return dk, dv


@triton.jit
def _dq_step(dq, q, k, v, do, lse, delta, bias, pmask, qk_scale, PREC: tl.constexpr):
    """Adds one key tile's share to dq (before the softmax scale); also returns the tile's ds."""
    p, ds = _grad_step(q, k, v, do, lse, delta, bias, pmask, qk_scale, PREC)
    dq += _mm(ds.to(k.dtype), k, PREC)
    return dq, ds


# ----------------------------------------------------------------------------- small kernels
@triton.jit
def _extra_kv_kernel(K, V, KX, VX, skb, skh, skn, skd, svb, svh, svn, svd,
                     H, G, HG, WG, WH, WW, NTW, P, E,
                     D: tl.constexpr, D_PAD: tl.constexpr, WW_PAD: tl.constexpr):
    """KX/VX[b, h, e] = mean of k/v over pooled tile e (e < P), or global token e - P."""
    e = tl.program_id(0)
    bh = tl.program_id(1)
    K = _head(K, bh, H, skb, skh)
    V = _head(V, bh, H, svb, svh)
    d = tl.arange(0, D_PAD)
    dmask = d < D
    if e < P:
        ty = e // NTW
        tx = e - ty * NTW
        c = tl.arange(0, WW_PAD)
        x = tx * WW + c
        cmask = (c < WW) & (x < WG)
        sk = tl.zeros([WW_PAD, D_PAD], dtype=tl.float32)
        sv = tl.zeros([WW_PAD, D_PAD], dtype=tl.float32)
        for r in range(0, WH):
            y = ty * WH + r
            tok = (G + y * WG + x).to(tl.int64)
            m = (cmask & ((x * 0 + y) < HG))[:, None] & dmask[None, :]  # vector: see _cell_tokens
            sk += tl.load(K + tok[:, None] * skn + d[None, :] * skd, mask=m, other=0.0).to(tl.float32)
            sv += tl.load(V + tok[:, None] * svn + d[None, :] * svd, mask=m, other=0.0).to(tl.float32)
        cnt = (tl.minimum(WH, HG - ty * WH) * tl.minimum(WW, WG - tx * WW)).to(tl.float32)
        kx = tl.sum(sk, 0) / cnt
        vx = tl.sum(sv, 0) / cnt
    else:
        gt = (e - P).to(tl.int64)
        kx = tl.load(K + gt * skn + d * skd, mask=dmask, other=0.0).to(tl.float32)
        vx = tl.load(V + gt * svn + d * svd, mask=dmask, other=0.0).to(tl.float32)
    out = bh.to(tl.int64) * E * D + e * D + d
    tl.store(KX + out, kx.to(KX.dtype.element_ty), mask=dmask)
    tl.store(VX + out, vx.to(VX.dtype.element_ty), mask=dmask)


@triton.jit
def _rel_proj_kernel(Q, R, OUT, sqb, sqh, sqn, sqd, sr0, sr1, H, G, NG, NR,
                     D: tl.constexpr, D_PAD: tl.constexpr, R_PAD: tl.constexpr,
                     BLOCK: tl.constexpr, PREC: tl.constexpr):
    """OUT[b, h, m, j] = q[b, h, G + m] . R[j] in fp32 (R cast to q's dtype, as the spec does)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    Q = _head(Q, bh, H, sqb, sqh)
    m = pid * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, D_PAD)
    j = tl.arange(0, R_PAD)
    mmask = m < NG
    q = tl.load(Q + (G + m).to(tl.int64)[:, None] * sqn + d[None, :] * sqd,
                mask=mmask[:, None] & (d[None, :] < D), other=0.0)
    r = tl.load(R + j[:, None] * sr0 + d[None, :] * sr1, mask=(j[:, None] < NR) & (d[None, :] < D),
                other=0.0).to(q.dtype)
    out = _mm(q, tl.trans(r), PREC)
    ptr = OUT + bh.to(tl.int64) * NG * NR + m.to(tl.int64)[:, None] * NR + j[None, :]
    tl.store(ptr, out, mask=mmask[:, None] & (j[None, :] < NR))


@triton.jit
def _delta_kernel(O, DO, DELTA, sdb, sdh, sdn, sdd, H, N,
                  D: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    n = pid * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, D_PAD)
    m = (n < N)[:, None] & (d < D)[None, :]
    o = tl.load(_rows(O, bh, N, D) + n[:, None] * D + d[None, :], mask=m, other=0.0)
    do = tl.load(_head(DO, bh, H, sdb, sdh) + n[:, None] * sdn + d[None, :] * sdd, mask=m, other=0.0)
    tl.store(_rows(DELTA, bh, N, 1) + n, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=n < N)


# ----------------------------------------------------------------------------- forward
@triton.jit
def _fwd_kernel(Q, K, V, KX, VX, RELH, RELW, O, LSE,
                sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                H, N, G, HG, WG, WH, WW, TOP, LEFT, NCW, NCELLS, E, RHS, RWS, qk_scale,
                S_KEY, E_KEY, D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr,
                HAS_RELW: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    Q = _head(Q, bh, H, sqb, sqh)
    K = _head(K, bh, H, skb, skh)
    V = _head(V, bh, H, svb, svh)
    KX = _rows(KX, bh, E, D)
    VX = _rows(VX, bh, E, D)
    RELH = _rows(RELH, bh, N - G, RHS)
    RELW = _rows(RELW, bh, N - G, RWS)
    d = tl.arange(0, D_PAD)
    dmask = d < D
    offs_n = tl.arange(0, BLOCK_N)

    cell, is_grid, tok_q, valid_q, ly_q, lx_q = _query_block(tl.program_id(0), NCELLS, NCW, WH, WW,
                                                             TOP, LEFT, HG, WG, G, BLOCK_M)
    q = _load_rows(Q, tok_q, valid_q, sqn, sqd, d, dmask)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    no_bias = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    if is_grid:
        for n0 in range(0, WH * WW, BLOCK_N):
            tok_k, valid_k, ly_k, lx_k = _cell_tokens(cell, n0 + offs_n, NCW, WH, WW, TOP, LEFT,
                                                      HG, WG, G)
            k, v = _load_kv(K, V, tok_k, valid_k, skn, skd, svn, svd, d, dmask)
            bias = _rel_bias(RELH, RELW, tok_q, ly_q, lx_q, ly_k, lx_k,
                             valid_q[:, None] & valid_k[None, :], G, WH, WW, RHS, RWS,
                             HAS_RELH, HAS_RELW, BLOCK_M, BLOCK_N)
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, bias, valid_k[None, :], qk_scale, PREC)
        for e0 in range(0, E, BLOCK_N):
            e = e0 + offs_n
            k, v = _load_extra_kv(KX, VX, e, E, d, dmask, D)
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, no_bias, (e < E)[None, :], qk_scale, PREC)
    else:
        for n0 in range(0, N, BLOCK_N):
            tok_k = n0 + offs_n
            k, v = _load_kv(K, V, tok_k, tok_k < N, skn, skd, svn, svd, d, dmask)
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, no_bias, (tok_k < N)[None, :],
                                          qk_scale, PREC)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    _store_rows(O, bh, N, tok_q, acc / l_safe[:, None], valid_q[:, None] & dmask[None, :], d, D)
    tl.store(LSE + (bh.to(tl.int64) * N + tok_q), m_i + tl.log2(l_safe), mask=valid_q)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _bwd_extra_kernel(Q, KX, VX, DO, LSE, DELTA, DK, DV, DKP, DVP,
                      sqb, sqh, sqn, sqd, sdb, sdh, sdn, sdd,
                      H, N, G, P, E, qk_scale, scale, S_KEY, E_KEY,
                      D: tl.constexpr, D_PAD: tl.constexpr, PREC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Gradients of the extra keys: pooled (seen by grid queries) and global (seen by all)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    Q = _head(Q, bh, H, sqb, sqh)
    DO = _head(DO, bh, H, sdb, sdh)
    KX = _rows(KX, bh, E, D)
    VX = _rows(VX, bh, E, D)
    LSE = _rows(LSE, bh, N, 1)
    DELTA = _rows(DELTA, bh, N, 1)
    d = tl.arange(0, D_PAD)
    dmask = d < D
    offs_m = tl.arange(0, BLOCK_M)
    e = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    valid_e = e < E
    k, v = _load_extra_kv(KX, VX, e, E, d, dmask, D)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    no_bias = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # Blocks holding only pooled keys skip the global queries, which never see pooled keys.
    start = G * (pid * BLOCK_N + BLOCK_N <= P).to(tl.int32)
    for m0 in range(start, N, BLOCK_M):
        tok = m0 + offs_m
        valid_q = tok < N
        q, do, lse, delta = _load_q_rows(Q, DO, LSE, DELTA, tok, valid_q, sqn, sqd, sdn, sdd, d, dmask)
        sees = (tok[:, None] >= G) | (e[None, :] >= P)
        pmask = valid_q[:, None] & valid_e[None, :] & sees
        dk, dv = _kv_grad_step(dk, dv, q, k, v, do, lse, delta, no_bias, pmask, qk_scale, PREC)
    dk *= scale
    pooled = (valid_e & (e < P))[:, None] & dmask[None, :]
    _store_rows(DKP, bh, P, e, dk, pooled, d, D)
    _store_rows(DVP, bh, P, e, dv, pooled, d, D)
    glob = (valid_e & (e >= P))[:, None] & dmask[None, :]
    _store_rows(DK, bh, N, e - P, dk, glob, d, D)
    _store_rows(DV, bh, N, e - P, dv, glob, d, D)


@triton.jit
def _bwd_cell_kernel(Q, K, V, DO, LSE, DELTA, RELH, RELW, DKP, DVP, DK, DV,
                     sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                     sdb, sdh, sdn, sdd,
                     H, N, G, HG, WG, WH, WW, TOP, LEFT, NCW, NCELLS, NTW, P, RHS, RWS,
                     qk_scale, scale, S_KEY, E_KEY,
                     D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr,
                     HAS_RELW: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dk/dv of one block of a cell's grid keys: from the cell's queries and the global queries,
    plus the pooled keys' gradients spread over their tiles (the mean's backward)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    S = WH * WW
    per_cell = tl.cdiv(S, BLOCK_N)
    Q = _head(Q, bh, H, sqb, sqh)
    K = _head(K, bh, H, skb, skh)
    V = _head(V, bh, H, svb, svh)
    DO = _head(DO, bh, H, sdb, sdh)
    LSE = _rows(LSE, bh, N, 1)
    DELTA = _rows(DELTA, bh, N, 1)
    RELH = _rows(RELH, bh, N - G, RHS)
    RELW = _rows(RELW, bh, N - G, RWS)
    d = tl.arange(0, D_PAD)
    dmask = d < D
    offs_m = tl.arange(0, BLOCK_M)
    cell = pid // per_cell
    tok_k, valid_k, ly_k, lx_k = _cell_tokens(cell, (pid - cell * per_cell) * BLOCK_N + tl.arange(0, BLOCK_N),
                                              NCW, WH, WW, TOP, LEFT, HG, WG, G)
    kv_mask = valid_k[:, None] & dmask[None, :]
    k, v = _load_kv(K, V, tok_k, valid_k, skn, skd, svn, svd, d, dmask)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    for m0 in range(0, S, BLOCK_M):
        tok_q, valid_q, ly_q, lx_q = _cell_tokens(cell, m0 + offs_m, NCW, WH, WW, TOP, LEFT, HG, WG, G)
        q, do, lse, delta = _load_q_rows(Q, DO, LSE, DELTA, tok_q, valid_q, sqn, sqd, sdn, sdd, d, dmask)
        pmask = valid_q[:, None] & valid_k[None, :]
        bias = _rel_bias(RELH, RELW, tok_q, ly_q, lx_q, ly_k, lx_k, pmask, G, WH, WW, RHS, RWS,
                         HAS_RELH, HAS_RELW, BLOCK_M, BLOCK_N)
        dk, dv = _kv_grad_step(dk, dv, q, k, v, do, lse, delta, bias, pmask, qk_scale, PREC)
    no_bias = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for m0 in range(0, G, BLOCK_M):
        tok_q = m0 + offs_m
        valid_q = tok_q < G
        q, do, lse, delta = _load_q_rows(Q, DO, LSE, DELTA, tok_q, valid_q, sqn, sqd, sdn, sdd, d, dmask)
        dk, dv = _kv_grad_step(dk, dv, q, k, v, do, lse, delta, no_bias,
                               valid_q[:, None] & valid_k[None, :], qk_scale, PREC)
    dk *= scale
    if P > 0:
        gi = tok_k - G
        y = gi // WG
        x = gi - y * WG
        ty = y // WH
        tx = x // WW
        cnt = (tl.minimum(WH, HG - ty * WH) * tl.minimum(WW, WG - tx * WW)).to(tl.float32)
        tp = bh.to(tl.int64) * P * D + (ty * NTW + tx)[:, None] * D + d[None, :]
        dk += tl.load(DKP + tp, mask=kv_mask, other=0.0) / cnt[:, None]
        dv += tl.load(DVP + tp, mask=kv_mask, other=0.0) / cnt[:, None]
    _store_rows(DK, bh, N, tok_k, dk, kv_mask, d, D)
    _store_rows(DV, bh, N, tok_k, dv, kv_mask, d, D)


@triton.jit
def _rel_dq(DREL, R, sr0, sr1, row, valid_q, lq, dsl, WIN, RS,
            D: tl.constexpr, D_PAD: tl.constexpr, L_PAD: tl.constexpr, R_PAD: tl.constexpr,
            like, PREC: tl.constexpr):
    """From dsl[m, r] (logit gradient summed over the keys at in-cell row r) to
    drel[m, j] = dsl[m, lq - j + WIN - 1]: the per-row shift goes through the row's own slice of
    DREL (written, barrier, gathered, barrier, rewritten). Returns drel @ R (R rounded to `like`'s
    dtype, as the spec casts R to q's), dq's relative-position term."""
    r = tl.arange(0, L_PAD)
    j = tl.arange(0, R_PAD)
    NR = 2 * WIN - 1
    base = DREL + row[:, None] * RS
    tl.store(base + r[None, :], dsl, mask=valid_q[:, None] & (r[None, :] < WIN))
    tl.debug_barrier()
    src = lq[:, None] + WIN - 1 - j[None, :]
    gm = valid_q[:, None] & (j[None, :] < NR) & (src >= 0) & (src < WIN)
    drel = tl.load(base + src, mask=gm, other=0.0)
    tl.debug_barrier()
    tl.store(base + j[None, :], drel, mask=valid_q[:, None] & (j[None, :] < NR))
    d = tl.arange(0, D_PAD)
    rr = tl.load(R + j[:, None] * sr0 + d[None, :] * sr1, mask=(j[:, None] < NR) & (d[None, :] < D),
                 other=0.0).to(like.dtype).to(tl.float32)
    return _mm(drel, rr, PREC)  # drel kept in fp32: it sums many logit gradients


@triton.jit
def _bwd_q_kernel(Q, K, V, KX, VX, DO, LSE, DELTA, RELH, RELW, RH, RW, DQ, DRELH, DRELW,
                  sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                  srh0, srh1, srw0, srw1,
                  H, N, G, HG, WG, WH, WW, TOP, LEFT, NCW, NCELLS, E, RHS, RWS, qk_scale, scale,
                  S_KEY, E_KEY, D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr,
                  HAS_RELW: tl.constexpr, WH_PAD: tl.constexpr, WW_PAD: tl.constexpr,
                  RH_PAD: tl.constexpr, RW_PAD: tl.constexpr, PREC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    Q = _head(Q, bh, H, sqb, sqh)
    K = _head(K, bh, H, skb, skh)
    V = _head(V, bh, H, svb, svh)
    DO = _head(DO, bh, H, sdb, sdh)
    KX = _rows(KX, bh, E, D)
    VX = _rows(VX, bh, E, D)
    LSE = _rows(LSE, bh, N, 1)
    DELTA = _rows(DELTA, bh, N, 1)
    RELH = _rows(RELH, bh, N - G, RHS)
    RELW = _rows(RELW, bh, N - G, RWS)
    DRELH = _rows(DRELH, bh, N - G, RHS)
    DRELW = _rows(DRELW, bh, N - G, RWS)
    d = tl.arange(0, D_PAD)
    dmask = d < D
    offs_n = tl.arange(0, BLOCK_N)

    cell, is_grid, tok_q, valid_q, ly_q, lx_q = _query_block(tl.program_id(0), NCELLS, NCW, WH, WW,
                                                             TOP, LEFT, HG, WG, G, BLOCK_M)
    q, do, lse, delta = _load_q_rows(Q, DO, LSE, DELTA, tok_q, valid_q, sqn, sqd, sdn, sdd, d, dmask)
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    no_bias = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    if is_grid:
        dsy = tl.zeros([BLOCK_M, WH_PAD], dtype=tl.float32)
        dsx = tl.zeros([BLOCK_M, WW_PAD], dtype=tl.float32)
        for n0 in range(0, WH * WW, BLOCK_N):
            tok_k, valid_k, ly_k, lx_k = _cell_tokens(cell, n0 + offs_n, NCW, WH, WW, TOP, LEFT,
                                                      HG, WG, G)
            k, v = _load_kv(K, V, tok_k, valid_k, skn, skd, svn, svd, d, dmask)
            pmask = valid_q[:, None] & valid_k[None, :]
            bias = _rel_bias(RELH, RELW, tok_q, ly_q, lx_q, ly_k, lx_k, pmask, G, WH, WW, RHS, RWS,
                             HAS_RELH, HAS_RELW, BLOCK_M, BLOCK_N)
            dq, ds = _dq_step(dq, q, k, v, do, lse, delta, bias, pmask, qk_scale, PREC)
            # Logit gradients summed per key row / column of the cell: one-hot matmuls.
            if HAS_RELH:
                oh = (ly_k[:, None] == tl.arange(0, WH_PAD)[None, :]).to(tl.float32)
                dsy += _mm(ds, oh, PREC)
            if HAS_RELW:
                ow = (lx_k[:, None] == tl.arange(0, WW_PAD)[None, :]).to(tl.float32)
                dsx += _mm(ds, ow, PREC)
        for e0 in range(0, E, BLOCK_N):
            e = e0 + offs_n
            k, v = _load_extra_kv(KX, VX, e, E, d, dmask, D)
            dq, ds = _dq_step(dq, q, k, v, do, lse, delta, no_bias, valid_q[:, None] & (e < E)[None, :],
                              qk_scale, PREC)
        dq *= scale
        row = (tok_q - G).to(tl.int64)
        if HAS_RELH:
            dq += _rel_dq(DRELH, RH, srh0, srh1, row, valid_q, ly_q, dsy, WH, RHS,
                          D, D_PAD, WH_PAD, RH_PAD, q, PREC)
        if HAS_RELW:
            dq += _rel_dq(DRELW, RW, srw0, srw1, row, valid_q, lx_q, dsx, WW, RWS,
                          D, D_PAD, WW_PAD, RW_PAD, q, PREC)
    else:
        for n0 in range(0, N, BLOCK_N):
            tok_k = n0 + offs_n
            k, v = _load_kv(K, V, tok_k, tok_k < N, skn, skd, svn, svd, d, dmask)
            dq, ds = _dq_step(dq, q, k, v, do, lse, delta, no_bias, valid_q[:, None] & (tok_k < N)[None, :],
                              qk_scale, PREC)
        dq *= scale
    _store_rows(DQ, bh, N, tok_q, dq, valid_q[:, None] & dmask[None, :], d, D)


# ----------------------------------------------------------------------------- tile sizes
# Fixed default: a block never much larger than the cell (4x3 windows waste less at 16 than 64).
# Autotuning (CUDA only, VITPOSE_AUTOTUNE != "0") picks among a few configs per shape class:
# (cell size, extra keys, N, head dim, dtype), cached by triton for the process.
_BLOCKS = (16, 32, 64, 128)


def _autotune_on(device: torch.device) -> bool:
    return (device.type == "cuda" and not dispatch.interpreting()
            and os.environ.get("VITPOSE_AUTOTUNE", "1") != "0")


def _default_config(cell: int, d_pad: int) -> dict:
    blk = min(64 if d_pad <= 128 else 32, _pow2(cell))
    return dict(BLOCK_M=blk, BLOCK_N=blk, num_warps=4, num_stages=2)


def _configs(d_pad: int):
    out = []
    for bm in _BLOCKS[1:]:
        for bn in (32, 64):
            if d_pad > 128 and (bm > 64 or bn > 32):
                continue
            for warps in (4, 8):
                if warps == 8 and bm < 64:
                    continue
                for stages in (2, 3):
                    out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    return out


def _prune(configs, named_args, **kwargs):
    # Blocks far larger than a cell only add masked work. (Launches pass everything by keyword,
    # which triton hands over in kwargs rather than named_args.)
    cell = _pow2({**named_args, **kwargs}["S_KEY"])
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(32, cell) and c.kwargs["BLOCK_N"] <= max(32, cell)]
    return kept or configs[:1]


@functools.lru_cache(maxsize=None)
def _tuned(kernel_name: str, d_pad: int):
    kernel = globals()[kernel_name]
    return triton.autotune(configs=_configs(d_pad), key=["S_KEY", "E_KEY", "N", "D"],
                           prune_configs_by={"early_config_prune": _prune})(kernel)


def _launch(kernel, grid, args: dict, cell: int, d_pad: int, n_extra: int):
    """Run `kernel` with the fixed default config, or its autotuned twin on a GPU."""
    if _autotune_on(args["Q"].device):
        _tuned(kernel.fn.__name__, d_pad)[grid](
            **args, S_KEY=cell, E_KEY=n_extra)
    else:
        kernel[grid](**args, S_KEY=cell, E_KEY=n_extra, **_default_config(cell, d_pad))


# ----------------------------------------------------------------------------- host side
class _Geom:
    """Cell and tile bookkeeping of one call (all plain ints)."""

    def __init__(self, geom, pool: bool):
        self.hg, self.wg, self.wh, self.ww, sh, sw, self.G = (int(x) for x in geom)
        self.top = (self.wh - sh) % self.wh  # grid row 0 sits `top` rows into its cell
        self.left = (self.ww - sw) % self.ww
        self.ncw = -(-(self.wg + self.left) // self.ww)
        self.ncells = -(-(self.hg + self.top) // self.wh) * self.ncw
        self.ntw = -(-self.wg // self.ww)  # tiles of the unshifted tiling, per row
        self.P = -(-self.hg // self.wh) * self.ntw if pool else 0
        self.E = self.P + self.G
        self.S = self.wh * self.ww
        self.ng = self.hg * self.wg

    def cell_args(self):
        return dict(G=self.G, HG=self.hg, WG=self.wg, WH=self.wh, WW=self.ww, TOP=self.top,
                    LEFT=self.left, NCW=self.ncw, NCELLS=self.ncells)


def _or(t, stand_in):
    # Kernel pointers never point at 0-element buffers (a null pointer may be refused at launch);
    # the stand-in has the same dtype, so the (never executed) loads type-check the same way.
    return t if t is not None and t.numel() else stand_in


def _strides(prefix: str, t: torch.Tensor) -> dict:
    return {f"s{prefix}{c}": s for c, s in zip("bhnd", t.stride())}


def _prec(dtype) -> str:
    # fp32 inputs get exact fp32 products (the spec's 1e-4); tf32 would give ~1e-3.
    if dtype == torch.bfloat16 and dispatch.interpreting():
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


def _extra_kv(k, v, g: _Geom, D: int, d_pad: int):
    B, H = k.shape[:2]
    kx = _alloc.empty(B, H, g.E, D, dtype=k.dtype, device=k.device)
    vx = _alloc.empty(B, H, g.E, D, dtype=v.dtype, device=v.device)
    if g.E:
        _extra_kv_kernel[(g.E, B * H)](
            k, v, kx, vx, *k.stride(), *v.stride(), H, g.G, g.hg, g.wg, g.wh, g.ww, g.ntw, g.P, g.E,
            D=D, D_PAD=d_pad, WW_PAD=_pow2(g.ww, 1))
    return kx, vx


def _rel_proj(q, r, g: _Geom, D: int, d_pad: int):
    """Per grid row, q . R[j] for every relative offset j: (B, H, Hg*Wg, 2*win - 1) fp32."""
    if r is None:
        return None
    B, H = q.shape[:2]
    nr = r.shape[0]
    out = _alloc.empty(B, H, g.ng, nr, dtype=torch.float32, device=q.device)
    block = 64 if _pow2(nr) <= 128 else 32
    _rel_proj_kernel[(triton.cdiv(g.ng, block), B * H)](
        q, r, out, *q.stride(), *r.stride(), H, g.G, g.ng, nr,
        D=D, D_PAD=d_pad, R_PAD=_pow2(nr), BLOCK=block, PREC=_prec(q.dtype))
    return out


def _forward(q, k, v, rel_pos_h, rel_pos_w, geom, pool, scale):
    g = _Geom(geom, pool)
    B, H, N, D = q.shape
    d_pad = _pow2(D)
    kx, vx = _extra_kv(k, v, g, D, d_pad)
    relh, relw = _rel_proj(q, rel_pos_h, g, D, d_pad), _rel_proj(q, rel_pos_w, g, D, d_pad)
    out = _alloc.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    lse = _alloc.empty(B, H, N, dtype=torch.float32, device=q.device)
    args = dict(Q=q, K=k, V=v, KX=_or(kx, k), VX=_or(vx, v), RELH=_or(relh, lse), RELW=_or(relw, lse),
                O=out, LSE=lse,
                **_strides("q", q), **_strides("k", k), **_strides("v", v),
                H=H, N=N, **g.cell_args(), E=g.E,
                RHS=1 if relh is None else relh.shape[-1], RWS=1 if relw is None else relw.shape[-1],
                qk_scale=scale * LOG2E, D=D, D_PAD=d_pad, HAS_RELH=relh is not None,
                HAS_RELW=relw is not None, PREC=_prec(q.dtype))

    def grid(meta):
        bm = meta["BLOCK_M"]
        return (g.ncells * triton.cdiv(g.S, bm) + triton.cdiv(g.G, bm), B * H)

    _launch(_fwd_kernel, grid, args, g.S, d_pad, g.E)
    return out, lse


def _backward(do, q, k, v, out, lse, rel_pos_h, rel_pos_w, geom, pool, scale):
    g = _Geom(geom, pool)
    B, H, N, D = q.shape
    d_pad = _pow2(D)
    dev = q.device
    prec = _prec(q.dtype)
    kx, vx = _extra_kv(k, v, g, D, d_pad)
    relh, relw = _rel_proj(q, rel_pos_h, g, D, d_pad), _rel_proj(q, rel_pos_w, g, D, d_pad)

    delta = _alloc.empty(B, H, N, dtype=torch.float32, device=dev)
    _delta_kernel[(triton.cdiv(N, 64), B * H)](out, do, delta, *do.stride(), H, N,
                                                D=D, D_PAD=d_pad, BLOCK=64)
    dq = _alloc.empty(B, H, N, D, dtype=q.dtype, device=dev)
    dk = _alloc.empty(B, H, N, D, dtype=k.dtype, device=dev)
    dv = _alloc.empty(B, H, N, D, dtype=v.dtype, device=dev)
    dkp = _alloc.empty(B, H, g.P, D, dtype=torch.float32, device=dev)
    dvp = _alloc.empty(B, H, g.P, D, dtype=torch.float32, device=dev)
    common = dict(**_strides("q", q), sdb=do.stride(0), sdh=do.stride(1), sdn=do.stride(2),
                  sdd=do.stride(3), H=H, N=N, qk_scale=scale * LOG2E, scale=scale, D=D, D_PAD=d_pad,
                  PREC=prec)
    rel = dict(RELH=_or(relh, lse), RELW=_or(relw, lse),
               RHS=1 if relh is None else relh.shape[-1], RWS=1 if relw is None else relw.shape[-1],
               HAS_RELH=relh is not None, HAS_RELW=relw is not None)

    if g.E:  # extra keys first: the cell kernel spreads the pooled keys' gradients
        _launch(_bwd_extra_kernel, lambda m: (triton.cdiv(g.E, m["BLOCK_N"]), B * H),
                dict(Q=q, KX=kx, VX=vx, DO=do, LSE=lse, DELTA=delta, DK=dk, DV=dv, DKP=_or(dkp, delta),
                     DVP=_or(dvp, delta),
                     G=g.G, P=g.P, E=g.E, **common), g.S, d_pad, g.E)
    _launch(_bwd_cell_kernel, lambda m: (g.ncells * triton.cdiv(g.S, m["BLOCK_N"]), B * H),
            dict(Q=q, K=k, V=v, DO=do, LSE=lse, DELTA=delta, DKP=_or(dkp, delta), DVP=_or(dvp, delta),
                 DK=dk, DV=dv,
                 **_strides("k", k), **_strides("v", v), **g.cell_args(), NTW=g.ntw, P=g.P,
                 **rel, **common), g.S, d_pad, g.E)

    drelh = None if relh is None else _alloc.empty_like(relh)
    drelw = None if relw is None else _alloc.empty_like(relw)
    rh = rel_pos_h if rel_pos_h is not None else lse
    rw = rel_pos_w if rel_pos_w is not None else lse
    _launch(_bwd_q_kernel,
            lambda m: (g.ncells * triton.cdiv(g.S, m["BLOCK_M"]) + triton.cdiv(g.G, m["BLOCK_M"]), B * H),
            dict(Q=q, K=k, V=v, KX=_or(kx, k), VX=_or(vx, v), DO=do, LSE=lse, DELTA=delta, RH=rh, RW=rw,
                 DQ=dq, DRELH=_or(drelh, lse), DRELW=_or(drelw, lse),
                 **_strides("k", k), **_strides("v", v),
                 srh0=rh.stride(0), srh1=rh.stride(-1), srw0=rw.stride(0), srw1=rw.stride(-1),
                 **g.cell_args(), E=g.E, WH_PAD=_pow2(g.wh), WW_PAD=_pow2(g.ww),
                 RH_PAD=_pow2(2 * g.wh - 1), RW_PAD=_pow2(2 * g.ww - 1), **rel, **common),
            g.S, d_pad, g.E)

    qg = q[:, :, g.G:]
    grads = []
    for r, dr in ((rel_pos_h, drelh), (rel_pos_w, drelw)):
        if r is None:
            grads.append(q.new_empty(0))
        else:  # d R[j] = sum over grid rows of drel[m, j] * q[m]: small, left to torch
            grads.append(torch.einsum("bhmj,bhmd->jd", dr.to(q.dtype), qg).to(r.dtype))
    return dq, dk, dv, grads[0], grads[1]


# ----------------------------------------------------------------------------- torch.library
@torch.library.custom_op("vitpose_kernels::window_attention_triton", mutates_args=())
def window_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        rel_pos_h: Optional[torch.Tensor], rel_pos_w: Optional[torch.Tensor],
                        geom: List[int], pool: bool, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, lse). geom = [Hg, Wg, wh, ww, sh, sw, num_global]; lse is per row, base 2."""
    return _forward(q, k, v, rel_pos_h, rel_pos_w, geom, pool, scale)


@window_attention_op.register_fake
def _(q, k, v, rel_pos_h, rel_pos_w, geom, pool, scale):
    B, H, N, D = q.shape
    return q.new_empty(B, H, N, D), q.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("vitpose_kernels::window_attention_triton_backward", mutates_args=())
def window_attention_backward_op(
        do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
        lse: torch.Tensor, rel_pos_h: Optional[torch.Tensor], rel_pos_w: Optional[torch.Tensor],
        geom: List[int], pool: bool, scale: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, drel_pos_h, drel_pos_w); an absent rel_pos gets a 0-element gradient."""
    return _backward(do, q, k, v, out, lse, rel_pos_h, rel_pos_w, geom, pool, scale)


@window_attention_backward_op.register_fake
def _(do, q, k, v, out, lse, rel_pos_h, rel_pos_w, geom, pool, scale):
    B, H, N, D = q.shape
    rel = [r.new_empty(r.shape) if r is not None else q.new_empty(0) for r in (rel_pos_h, rel_pos_w)]
    return q.new_empty(B, H, N, D), k.new_empty(B, H, N, D), v.new_empty(B, H, N, D), rel[0], rel[1]


def _setup_context(ctx, inputs, output):
    q, k, v, rel_pos_h, rel_pos_w, geom, pool, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, rel_pos_h, rel_pos_w)
    ctx.geom, ctx.pool, ctx.scale = geom, pool, scale


def _autograd_backward(ctx, dout, dlse):
    q, k, v, out, lse, rel_pos_h, rel_pos_w = ctx.saved_tensors
    dq, dk, dv, drh, drw = window_attention_backward_op(dout, q, k, v, out, lse, rel_pos_h, rel_pos_w,
                                                        ctx.geom, ctx.pool, ctx.scale)
    return (dq, dk, dv, drh if rel_pos_h is not None else None,
            drw if rel_pos_w is not None else None, None, None, None)


window_attention_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- dispatch
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def window_attention_reasons(q, k, v, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> list:
    why = []
    if q.dtype not in _DTYPES:
        why.append(f"q.dtype={q.dtype}: the Triton kernels take float32, float16 or bfloat16 "
                   "(float64, e.g. for gradcheck: backend='reference')")
    for name, r in (("rel_pos_h", rel_pos_h), ("rel_pos_w", rel_pos_w)):
        if r is not None and r.dtype not in _DTYPES:
            why.append(f"{name}.dtype={r.dtype}: expected float32, float16 or bfloat16")
    if q.device.type == "cpu":
        if not dispatch.interpreting():
            why.append("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1), else a CUDA device")
    elif q.device.type != "cuda":
        why.append(f"q.device={q.device}: the Triton kernels run on CUDA (or the CPU interpreter)")
    D = q.shape[-1]
    if D > MAX_HEAD_DIM:
        why.append(f"head dim D={D} > {MAX_HEAD_DIM} (q.shape={tuple(q.shape)})")
    if rel_pos_h is not None and 2 * spec.window[0] - 1 > MAX_REL_ROWS:
        why.append(f"rel_pos_h has {2 * spec.window[0] - 1} rows > {MAX_REL_ROWS}")
    if rel_pos_w is not None and 2 * spec.window[1] - 1 > MAX_REL_ROWS:
        why.append(f"rel_pos_w has {2 * spec.window[1] - 1} rows > {MAX_REL_ROWS}")
    return why


@dispatch.register("window_attention", "triton", reasons=window_attention_reasons)
def window_attention(q, k, v, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> torch.Tensor:
    geom = [*spec.grid, *spec.window, *spec.shift, spec.num_global]
    out, _ = window_attention_op(q, k, v, rel_pos_h, rel_pos_w, geom, spec.pool, spec.scale)
    return out
