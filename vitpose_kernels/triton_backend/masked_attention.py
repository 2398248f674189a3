"""Triton masked_attention: FlashAttention-style cross-attention of Lq queries over Lk keys with a
bit-packed per-(query, key) mask (the spec: vitpose_kernels.reference.masked_attention).

The mask is read per tile straight from its int32 words (bit i of word w = key 32*w + i; size-1
dims broadcast through zero strides). A tile whose mask is all zero is skipped, and of the others
only the key (value, query) rows that some pair of the tile needs are loaded: masked lanes move no
memory. In TAR-ViTPose's JTA the 17 joints' blobs touch every tile of a frame but only a fifth to
a third of its tokens, so this is where the bandwidth goes. Skipping is exact: a masked logit
contributes exp(-inf) = 0 and leaves the running max alone.

Forward: online softmax in base 2, fp32 accumulation, lse saved per row (natural log, +inf for a
row without keys: its output is 0). Backward (FlashAttention-2, probabilities recomputed from
lse), deterministic, no atomics: delta = rowsum(dO * O); the dq kernel walks key tiles per query
block, the dk/dv kernel query tiles per key block, both skipping masked-out tiles the same way.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _alloc, dispatch
from .._masked_attention_ops import define_ops
from .window_attention.host import _pow2, _prec
from .window_attention.tiles import head as _head, mm as _mm

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # what a @triton.jit function may read of a module global
MAX_HEAD_DIM = 512


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def _delta_kernel(O, DO, DELTA, sdb, sdh, sdn, sdd, H, N,
                  D: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """delta = rowsum(dO * O) in fp32 for one block of rows of head bh; O and DELTA contiguous
    (B * H, N, D) and (B * H, N), dO strided."""
    bh = tl.program_id(1)
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, D_PAD)
    m = (n < N)[:, None] & (d < D)[None, :]
    o = tl.load(O + bh.to(tl.int64) * N * D + n[:, None] * D + d[None, :], mask=m, other=0.0)
    do = tl.load(_head(DO, bh, H, sdb, sdh) + n[:, None] * sdn + d[None, :] * sdd, mask=m, other=0.0)
    tl.store(DELTA + bh.to(tl.int64) * N + n, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=n < N)


@triton.jit
def _allowed(M, rows, n0, row_ok, key_ok, smq, LK, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr):
    """Which (rows, keys n0..n0+BLOCK_N-1) pairs exist and the mask allows, as a bool tile. The
    block's BLOCK_N / 32 words per row are loaded once each and expanded to bits in registers."""
    ok = row_ok[:, None] & key_ok[None, :]
    if HAS_MASK:
        w = n0 // 32 + tl.arange(0, BLOCK_N // 32)
        words = tl.load(M + rows.to(tl.int64)[:, None] * smq + w[None, :],
                        mask=row_ok[:, None] & (w * 32 < LK)[None, :], other=0)
        bits = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
        ok = ok & (tl.reshape(bits, (BLOCK_M, BLOCK_N)) != 0)
    return ok


@triton.jit
def _load_rows(PTR, rows, row_ok, sn, sd, d, dmask):
    return tl.load(PTR + rows.to(tl.int64)[:, None] * sn + d[None, :] * sd,
                   mask=row_ok[:, None] & dmask[None, :], other=0.0)


@triton.jit
def _store_rows(PTR, bh, L, rows, row_ok, x, d, dmask, D: tl.constexpr):
    """x into rows of head bh of a contiguous (B, H, L, D) tensor, in its dtype."""
    tl.store(PTR + (bh.to(tl.int64) * L + rows)[:, None] * D + d[None, :], x.to(PTR.dtype.element_ty),
             mask=row_ok[:, None] & dmask[None, :])


@triton.jit
def _probs(q, k, lse2, allowed, qk_scale, PREC: tl.constexpr):
    """The forward's probabilities of a tile, recomputed from the saved logsumexp (log2 units)."""
    s = _mm(q, tl.trans(k), PREC) * qk_scale
    return tl.where(allowed, tl.exp2(s - lse2[:, None]), 0.0)


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _fwd_kernel(Q, K, V, M, O, LSE,
                sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smh, smq,
                H, LQ, LK, qk_scale,
                HAS_MASK: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    Q = _head(Q, bh, H, sqb, sqh)
    K = _head(K, bh, H, skb, skh)
    V = _head(V, bh, H, svb, svh)
    M = _head(M, bh, H, smb, smh)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < LQ
    d = tl.arange(0, D_PAD)
    dmask = d < D
    q = _load_rows(Q, rows, row_ok, sqm, sqd, d, dmask)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    # A finite start: a tile masked for a row leaves that row's max and sum exactly as they were.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, LK, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys < LK
        allowed = _allowed(M, rows, n0, row_ok, key_ok, smq, LK, HAS_MASK, BLOCK_M, BLOCK_N)
        need = tl.max(allowed.to(tl.int32), 0) > 0  # keys some row of the block may attend to
        if tl.max(need.to(tl.int32)) > 0:  # a fully masked tile is skipped, unread
            k = _load_rows(K, keys, need, skn, skd, d, dmask)
            v = _load_rows(V, keys, need, svn, svd, d, dmask)
            s = tl.where(allowed, _mm(q, tl.trans(k), PREC) * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, PREC)
            m_i = m_new
    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    _store_rows(O, bh, LQ, rows, row_ok, acc / l_safe[:, None], d, dmask, D)
    lse = tl.where(has_key, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("inf"))
    tl.store(LSE + bh.to(tl.int64) * LQ + rows, lse, mask=row_ok)


@triton.jit
def _bwd_dq_kernel(Q, K, V, M, DO, LSE, DELTA, DQ,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smh, smq,
                   sdb, sdh, sdm, sdd, H, LQ, LK, qk_scale, scale,
                   HAS_MASK: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    Q = _head(Q, bh, H, sqb, sqh)
    K = _head(K, bh, H, skb, skh)
    V = _head(V, bh, H, svb, svh)
    M = _head(M, bh, H, smb, smh)
    DO = _head(DO, bh, H, sdb, sdh)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < LQ
    d = tl.arange(0, D_PAD)
    dmask = d < D
    q = _load_rows(Q, rows, row_ok, sqm, sqd, d, dmask)
    do = _load_rows(DO, rows, row_ok, sdm, sdd, d, dmask)
    stats = bh.to(tl.int64) * LQ + rows
    lse2 = tl.load(LSE + stats, mask=row_ok, other=float("inf")) * _LOG2E
    delta = tl.load(DELTA + stats, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for n0 in range(0, LK, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys < LK
        allowed = _allowed(M, rows, n0, row_ok, key_ok, smq, LK, HAS_MASK, BLOCK_M, BLOCK_N)
        need = tl.max(allowed.to(tl.int32), 0) > 0
        if tl.max(need.to(tl.int32)) > 0:
            k = _load_rows(K, keys, need, skn, skd, d, dmask)
            v = _load_rows(V, keys, need, svn, svd, d, dmask)
            p = _probs(q, k, lse2, allowed, qk_scale, PREC)
            ds = p * (_mm(do, tl.trans(v), PREC) - delta[:, None])
            dq += _mm(ds.to(k.dtype), k, PREC)
    _store_rows(DQ, bh, LQ, rows, row_ok, dq * scale, d, dmask, D)


@triton.jit
def _bwd_dkv_kernel(Q, K, V, M, DO, LSE, DELTA, DK, DV,
                    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smh, smq,
                    sdb, sdh, sdm, sdd, H, LQ, LK, qk_scale, scale,
                    HAS_MASK: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, PREC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    Q = _head(Q, bh, H, sqb, sqh)
    K = _head(K, bh, H, skb, skh)
    V = _head(V, bh, H, svb, svh)
    M = _head(M, bh, H, smb, smh)
    DO = _head(DO, bh, H, sdb, sdh)
    n0 = tl.program_id(0) * BLOCK_N
    keys = n0 + tl.arange(0, BLOCK_N)
    key_ok = keys < LK
    d = tl.arange(0, D_PAD)
    dmask = d < D
    seen = key_ok
    if HAS_MASK:  # only the keys some query may attend to are read
        seen_any = tl.zeros([BLOCK_N], dtype=tl.int32)
        for m0 in range(0, LQ, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            seen_any = tl.maximum(seen_any, tl.max(_allowed(M, rows, n0, rows < LQ, key_ok, smq, LK, HAS_MASK,
                                                            BLOCK_M, BLOCK_N).to(tl.int32), 0))
        seen = seen_any > 0
    k = _load_rows(K, keys, seen, skn, skd, d, dmask)
    v = _load_rows(V, keys, seen, svn, svd, d, dmask)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    for m0 in range(0, LQ, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < LQ
        allowed = _allowed(M, rows, n0, row_ok, key_ok, smq, LK, HAS_MASK, BLOCK_M, BLOCK_N)
        need = tl.max(allowed.to(tl.int32), 1) > 0  # queries that see a key of this block
        if tl.max(need.to(tl.int32)) > 0:  # no query of this tile sees these keys: skipped, unread
            q = _load_rows(Q, rows, need, sqm, sqd, d, dmask)
            do = _load_rows(DO, rows, need, sdm, sdd, d, dmask)
            stats = bh.to(tl.int64) * LQ + rows
            lse2 = tl.load(LSE + stats, mask=need, other=float("inf")) * _LOG2E
            delta = tl.load(DELTA + stats, mask=need, other=0.0)
            p = _probs(q, k, lse2, allowed, qk_scale, PREC)
            dv += _mm(tl.trans(p).to(do.dtype), do, PREC)
            ds = p * (_mm(do, tl.trans(v), PREC) - delta[:, None])
            dk += _mm(tl.trans(ds).to(q.dtype), q, PREC)
    _store_rows(DK, bh, LK, keys, key_ok, dk * scale, d, dmask, D)
    _store_rows(DV, bh, LK, keys, key_ok, dv, d, dmask, D)


# ----------------------------------------------------------------------------- host side
def _blocks(lq: int, lk: int, d_pad: int) -> dict:
    """Tile sizes. Few queries (TAR's JTA has 17) get 16-row blocks: the mask is skipped per block,
    and 17 rows in one 32-row block would compute 15 padded rows over every tile any joint needs.
    Wide heads get smaller tiles (the fp32 accumulators are BLOCK x D_PAD). Key tiles hold whole
    mask words (>= 32 keys)."""
    cap_m = 16 if lq <= 64 else (64 if d_pad <= 128 else (32 if d_pad <= 256 else 16))
    cap_n = 64 if d_pad <= 128 else 32
    return dict(BLOCK_M=min(cap_m, _pow2(lq)), BLOCK_N=min(cap_n, _pow2(lk, 32)),
                num_warps=4 if d_pad <= 128 else 8)


def _strides(prefix: str, t: torch.Tensor) -> dict:
    return {f"s{prefix}{c}": s for c, s in zip("bhmd" if prefix in ("q", "d") else "bhnd", t.stride())}


def _mask_args(key_mask, stand_in) -> dict:
    """Pointer and (batch, head, query) word strides of the canonical mask; 0 where it broadcasts."""
    if key_mask is None:
        return dict(M=stand_in, smb=0, smh=0, smq=0, HAS_MASK=False)
    sb, sh, sq = (s if n > 1 else 0 for n, s in zip(key_mask.shape[:3], key_mask.stride()[:3]))
    return dict(M=key_mask, smb=sb, smh=sh, smq=sq, HAS_MASK=True)


def _common(q, k, v, key_mask, scale) -> dict:
    B, H, Lq, D = q.shape
    return dict(**_strides("q", q), **_strides("k", k), **_strides("v", v), **_mask_args(key_mask, q),
                H=H, LQ=Lq, LK=k.shape[2], qk_scale=scale * LOG2E, D=D, D_PAD=_pow2(D), PREC=_prec(q.dtype))


def _forward(q, k, v, key_mask, scale):
    B, H, Lq, D = q.shape
    out = _alloc.empty(B, H, Lq, D, dtype=q.dtype, device=q.device)
    lse = _alloc.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    cfg = _blocks(Lq, k.shape[2], _pow2(D))
    _fwd_kernel[(triton.cdiv(Lq, cfg["BLOCK_M"]), B * H)](
        Q=q, K=k, V=v, O=out, LSE=lse, **_common(q, k, v, key_mask, scale), **cfg)
    return out, lse


def _backward(do, q, k, v, key_mask, out, lse, scale):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    d_pad = _pow2(D)
    dev = q.device
    delta = _alloc.empty(B, H, Lq, dtype=torch.float32, device=dev)
    rows = 64 if d_pad <= 128 else 16  # two (rows, D_PAD) fp32 tiles in 4 warps' registers: no spill at D 192+
    _delta_kernel[(triton.cdiv(Lq, rows), B * H)](out, do, delta, *do.stride(), H, Lq, D=D, D_PAD=d_pad, BLOCK=rows)
    dq = _alloc.empty(B, H, Lq, D, dtype=q.dtype, device=dev)
    dk = _alloc.empty(B, H, Lk, D, dtype=k.dtype, device=dev)
    dv = _alloc.empty(B, H, Lk, D, dtype=v.dtype, device=dev)
    args = dict(Q=q, K=k, V=v, DO=do, LSE=lse, DELTA=delta, **_common(q, k, v, key_mask, scale),
                **_strides("d", do), scale=scale)
    cfg = _blocks(Lq, Lk, d_pad)
    _bwd_dq_kernel[(triton.cdiv(Lq, cfg["BLOCK_M"]), B * H)](DQ=dq, **args, **cfg)
    _bwd_dkv_kernel[(triton.cdiv(Lk, cfg["BLOCK_N"]), B * H)](DK=dk, DV=dv, **args, **cfg)
    return dq, dk, dv


masked_attention_op, masked_attention_backward_op = define_ops("vitpose_kernels::masked_attention_triton", _forward,
                                                               _backward)


# ----------------------------------------------------------------------------- dispatch
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def masked_attention_reasons(q, k, v, key_mask, scale) -> list:
    why = []
    if q.dtype not in _DTYPES:
        why.append(f"q.dtype={q.dtype}: the Triton kernels take float32, float16 or bfloat16 "
                   "(float64, e.g. for gradcheck: backend='reference')")
    if q.device.type == "cpu":
        if not dispatch.interpreting():
            why.append("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1), else a CUDA device")
    elif q.device.type != "cuda":
        why.append(f"q.device={q.device}: the Triton kernels run on CUDA (or the CPU interpreter)")
    if q.shape[-1] > MAX_HEAD_DIM:
        why.append(f"head dim D={q.shape[-1]} > {MAX_HEAD_DIM} (q.shape={tuple(q.shape)})")
    return why


@dispatch.register("masked_attention", "triton", reasons=masked_attention_reasons)
def masked_attention(q, k, v, key_mask, scale) -> torch.Tensor:
    out, _ = masked_attention_op(q, k, v, key_mask, scale)
    return out
