"""Backward kernels of the Triton window_attention (layout and order: this package's docstring).

Deterministic: no atomics; every output row and every partial-sum slot is written by exactly one
program, and partial sums are reduced in a fixed order."""
import triton
import triton.language as tl

from .tiles import (grad_step, head, line_sums, load_rows, load_table, load_vec, mm, pooled_index, rel_logits,
                    rel_shift, store_rows, tile_count, tile_slots)

LOG2E = 1.4426950408889634


@triton.jit
def _rows_delta(O, DO, tok, valid, son, sod, sdn, sdd, d, D: tl.constexpr):
    """delta = rowsum(dO * O) of rows `tok` (fp32), and those dO rows."""
    o = load_rows(O, tok, valid, son, sod, d, D)
    do = load_rows(DO, tok, valid, sdn, sdd, d, D)
    return tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), do


@triton.jit
def _store_partial(PK, PV, part, e, ok, dk, dv, E, d, D: tl.constexpr):
    """Rows e of partial-sum slot `part` (contiguous (NPART, E, D) fp32 of one head)."""
    rows = part * E + e
    store_rows(PK, rows, dk, ok, D, 1, d, D)
    store_rows(PV, rows, dv, ok, D, 1, d, D)


# ----------------------------------------------------------------------------- before the cells
@triton.jit
def _prep_block(dkx, dvx, tok, valid, Q, DO, O, LSE, DELTA, xk, xv, e, E, sqn, sqd, sdn, sdd, d, qk_scale,
                D: tl.constexpr, PARTIALS: tl.constexpr, PREC: tl.constexpr):
    """One query block of the prep pass: delta = rowsum(dO * O) stored, and with PARTIALS the
    extra keys' gradients from these rows added to dkx (dS^T q) and dvx (P^T dO): all E extra
    keys (xk, xv) in one register block."""
    delta, do = _rows_delta(O, DO, tok, valid, D, 1, sdn, sdd, d, D)
    tl.store(DELTA + tok, delta, mask=valid)
    if PARTIALS:
        q = load_rows(Q, tok, valid, sqn, sqd, d, D)
        lse2 = load_vec(LSE, tok, valid) * 1.4426950408889634
        p, ds = grad_step(q, xk, xv, do, lse2, delta, 0.0, valid[:, None] & (e < E)[None, :], qk_scale, False,
                          PREC)
        dkx += mm(tl.trans(ds).to(q.dtype), q, PREC)
        dvx += mm(tl.trans(p).to(do.dtype), do, PREC)
    return dkx, dvx


@triton.jit
def bwd_prep_kernel(Q, DO, O, LSE, DELTA, XK, XV, PK, PV,
                    sqb, sqh, sqn, sqd, sdb, sdh, sdn, sdd,
                    H, N, E, NPART, T, TPP, QB, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, qk_scale,
                    D: tl.constexpr, D_PAD: tl.constexpr, PARTIALS: tl.constexpr, IN_REGS: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """delta = rowsum(dO * O) of the grid rows of tiles grp*TPP.. and, with PARTIALS (pooling),
    the extra keys' gradients from those rows: partial sums of dS^T q and P^T dO (fp32), one slot
    per program (IN_REGS: all extra keys fit one block) or per (tile, query block)."""
    grp = tl.program_id(0)
    bh = tl.program_id(1)
    Q = head(Q, bh, H, sqb, sqh)
    DO = head(DO, bh, H, sdb, sdh)
    O += bh.to(tl.int64) * N * D
    LSE += bh.to(tl.int64) * N
    DELTA += bh.to(tl.int64) * N
    XK += bh.to(tl.int64) * E * D
    XV += bh.to(tl.int64) * E * D
    PK += bh.to(tl.int64) * NPART * E * D
    PV += bh.to(tl.int64) * NPART * E * D
    d = tl.arange(0, D_PAD)
    offs_m = tl.arange(0, BLOCK_M)
    e = tl.arange(0, BLOCK_E)
    dkx = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    dvx = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    xk = 0.0
    xv = 0.0
    if PARTIALS:
        if IN_REGS:  # all extra keys, once per program
            xk = load_rows(XK, e, e < E, D, 1, d, D)
            xv = load_rows(XV, e, e < E, D, 1, d, D)
    t0 = grp * TPP
    for t in range(t0, tl.minimum(t0 + TPP, T)):
        count = tile_count(t, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX)
        for m0 in range(0, count, BLOCK_M):
            tok, valid, cell, ly, lx, _ = tile_slots(t, m0 + offs_m, G, HG, WG, WH, WW, NTX, NTY, MY, MX,
                                                     BY, BX, FY, FX)
            if IN_REGS or not PARTIALS:
                dkx, dvx = _prep_block(dkx, dvx, tok, valid, Q, DO, O, LSE, DELTA, xk, xv, e, E, sqn, sqd,
                                       sdn, sdd, d, qk_scale, D, PARTIALS, PREC)
            else:
                delta, do = _rows_delta(O, DO, tok, valid, D, 1, sdn, sdd, d, D)
                tl.store(DELTA + tok, delta, mask=valid)
                q = load_rows(Q, tok, valid, sqn, sqd, d, D)
                lse2 = load_vec(LSE, tok, valid) * 1.4426950408889634
                part = t * QB + m0 // BLOCK_M
                for e0 in range(0, E, BLOCK_E):  # the extra keys in blocks, one slot per query block
                    ee = e0 + e
                    ok = ee < E
                    bk = load_rows(XK, ee, ok, D, 1, d, D)
                    bv = load_rows(XV, ee, ok, D, 1, d, D)
                    p, ds = grad_step(q, bk, bv, do, lse2, delta, 0.0, valid[:, None] & ok[None, :],
                                      qk_scale, False, PREC)
                    _store_partial(PK, PV, part, ee, ok, mm(tl.trans(ds).to(q.dtype), q, PREC),
                                   mm(tl.trans(p).to(do.dtype), do, PREC), E, d, D)
        if PARTIALS:
            if not IN_REGS:  # the slots of this tile's empty query blocks (a partial tile) hold zeros
                zero = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
                for qb in range(tl.cdiv(count, BLOCK_M), QB):
                    for e0 in range(0, E, BLOCK_E):
                        _store_partial(PK, PV, t * QB + qb, e0 + e, e0 + e < E, zero, zero, E, d, D)
    if PARTIALS:
        if IN_REGS:
            _store_partial(PK, PV, grp, e, e < E, dkx, dvx, E, d, D)


# ----------------------------------------------------------------------------- global queries
@triton.jit
def bwd_global_kernel(Q, K, V, DO, O, LSE, DQ, PK, PV,
                      sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                      sgb, sgh, sgn, sgd,
                      H, N, G, P, E, NPART, PART0, qk_scale, scale,
                      D: tl.constexpr, D_PAD: tl.constexpr, PREC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dq of global query rows g0.. (they see all N tokens), and the global keys' gradients from
    these queries as partial slot PART0 + block (the grid keys' come from the cell programs)."""
    gb = tl.program_id(0)
    bh = tl.program_id(1)
    Q = head(Q, bh, H, sqb, sqh)
    K = head(K, bh, H, skb, skh)
    V = head(V, bh, H, svb, svh)
    DO = head(DO, bh, H, sdb, sdh)
    DQ = head(DQ, bh, H, sgb, sgh)
    O += bh.to(tl.int64) * N * D
    LSE += bh.to(tl.int64) * N
    PK += bh.to(tl.int64) * NPART * E * D
    PV += bh.to(tl.int64) * NPART * E * D
    d = tl.arange(0, D_PAD)
    rows = gb * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = rows < G
    q = load_rows(Q, rows, valid, sqn, sqd, d, D)
    delta, do = _rows_delta(O, DO, rows, valid, D, 1, sdn, sdd, d, D)
    lse2 = load_vec(LSE, rows, valid) * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for n0 in range(0, G, BLOCK_N):  # the global keys: dq and their partial gradients
        tok = n0 + tl.arange(0, BLOCK_N)
        ok = tok < G
        k = load_rows(K, tok, ok, skn, skd, d, D)
        v = load_rows(V, tok, ok, svn, svd, d, D)
        p, ds = grad_step(q, k, v, do, lse2, delta, 0.0, valid[:, None] & ok[None, :], qk_scale, False, PREC)
        dq += mm(ds.to(k.dtype), k, PREC)
        _store_partial(PK, PV, PART0 + gb, P + tok, ok, mm(tl.trans(ds).to(q.dtype), q, PREC),
                       mm(tl.trans(p).to(do.dtype), do, PREC), E, d, D)
    for n0 in range(G, N, BLOCK_N):  # the grid keys: dq only
        tok = n0 + tl.arange(0, BLOCK_N)
        ok = tok < N
        k = load_rows(K, tok, ok, skn, skd, d, D)
        v = load_rows(V, tok, ok, svn, svd, d, D)
        p, ds = grad_step(q, k, v, do, lse2, delta, 0.0, valid[:, None] & ok[None, :], qk_scale, False, PREC)
        dq += mm(ds.to(k.dtype), k, PREC)
    store_rows(DQ, rows, dq * scale, valid, sgn, sgd, d, D)


# ----------------------------------------------------------------------------- extra-key reduction
@triton.jit
def bwd_reduce_kernel(PK, PV, XGK, XGV, DK, DV, skb, skh, skn, skd, svb, svh, svn, svd,
                      H, P, E, FIRST, NPART, NPART_GRID, scale, D: tl.constexpr, D_PAD: tl.constexpr,
                      BLOCK_E: tl.constexpr):
    """Extra keys FIRST + e0..: their partial sums added in slot order (deterministic). A pooled
    key's gradient goes to XG (fp32, spread to its tile members by the cell programs); a global
    token's is its dk/dv row. Pooled keys are seen by grid queries only (the first NPART_GRID
    slots), global ones by every query. (The per-head plan reduces its pooled keys in-program:
    FIRST = P there.)"""
    e = FIRST + tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    bh = tl.program_id(1)
    d = tl.arange(0, D_PAD)
    ok = e < E
    PK += bh.to(tl.int64) * NPART * E * D
    PV += bh.to(tl.int64) * NPART * E * D
    parts = tl.where(e < P, NPART_GRID, NPART)
    sk = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    sv = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    for j in range(0, NPART):
        sk += load_rows(PK, j * E + e, ok & (j < parts), D, 1, d, D)
        sv += load_rows(PV, j * E + e, ok & (j < parts), D, 1, d, D)
    sk = sk * scale
    pooled = ok & (e < P)
    XGK += bh.to(tl.int64) * P * D
    XGV += bh.to(tl.int64) * P * D
    store_rows(XGK, e, sk, pooled, D, 1, d, D)
    store_rows(XGV, e, sv, pooled, D, 1, d, D)
    glob = ok & (e >= P)
    store_rows(head(DK, bh, H, skb, skh), e - P, sk, glob, skn, skd, d, D)
    store_rows(head(DV, bh, H, svb, svh), e - P, sv, glob, svn, svd, d, D)


# ----------------------------------------------------------------------------- shared pieces
@triton.jit
def _global_queries(dk, dv, k, v, valid_k, Q, DO, O, LSE, sqn, sqd, sdn, sdd, G, d, qk_scale,
                    D: tl.constexpr, PREC: tl.constexpr, BLOCK_G: tl.constexpr):
    """Adds the G global queries' share to a key block's dk (before the scale) and dv."""
    for g0 in range(0, G, BLOCK_G):
        rows = g0 + tl.arange(0, BLOCK_G)
        ok = rows < G
        qg = load_rows(Q, rows, ok, sqn, sqd, d, D)
        delta, dog = _rows_delta(O, DO, rows, ok, D, 1, sdn, sdd, d, D)
        lse2 = load_vec(LSE, rows, ok) * 1.4426950408889634
        p, ds = grad_step(qg, k, v, dog, lse2, delta, 0.0, ok[:, None] & valid_k[None, :], qk_scale, False, PREC)
        dv += mm(tl.trans(p).to(dog.dtype), dog, PREC)
        dk += mm(tl.trans(ds).to(qg.dtype), qg, PREC)
    return dk, dv


@triton.jit
def _pool_spread(dk, dv, tok, valid, XGK, XGV, G, HG, WG, WH, WW, NTW, d, D: tl.constexpr):
    """The mean's backward: each grid key gets its pooled tile's gradient / the tile's size
    (reduced gradients gathered row by row from XG)."""
    pidx, cnt = pooled_index(tok, G, HG, WG, WH, WW, NTW)
    inv = 1.0 / cnt.to(tl.float32)
    dk += load_rows(XGK, pidx, valid, D, 1, d, D) * inv[:, None]
    dv += load_rows(XGV, pidx, valid, D, 1, d, D) * inv[:, None]
    return dk, dv


@triton.jit
def _pool_spread_regs(dk, dv, tok, xgk, xgv, e, G, HG, WG, WH, WW, NTW, PREC: tl.constexpr):
    """_pool_spread with all P pooled gradients already in registers (xgk, xgv: rows e), picked
    per key by a one-hot product on the tensor cores (tf32 for low-precision inputs: the pooled
    share keeps 10 mantissa bits before the sum is rounded to 7 or 10; exact for fp32 inputs)
    instead of a gather of fp32 rows from memory per key."""
    pidx, cnt = pooled_index(tok, G, HG, WG, WH, WW, NTW)
    onehot = (pidx[:, None] == e[None, :]).to(tl.float32)
    inv = 1.0 / cnt.to(tl.float32)
    dk += mm(onehot, xgk, PREC) * inv[:, None]
    dv += mm(onehot, xgv, PREC) * inv[:, None]
    return dk, dv


@triton.jit
def _rel_bias(q, th, tw, ly_q, lx_q, ly_k, lx_k, WH, WW, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
              RH_PAD: tl.constexpr, RW_PAD: tl.constexpr, WH_PAD: tl.constexpr, WW_PAD: tl.constexpr,
              PREC: tl.constexpr):
    bias = 0.0
    if HAS_RELH:
        bias += rel_logits(mm(q, tl.trans(th), PREC), ly_q, ly_k, WH, WH_PAD, RH_PAD, PREC)
    if HAS_RELW:
        bias += rel_logits(mm(q, tl.trans(tw), PREC), lx_q, lx_k, WW, WW_PAD, RW_PAD, PREC)
    return bias


@triton.jit
def _rel_dq(by_line, lq, W, table, q, W_PAD: tl.constexpr, R_PAD: tl.constexpr, PREC: tl.constexpr):
    """From the logit gradients summed per key line to (dq's relative-position term, this block's
    share of d rel_pos): drel @ R and drel^T @ q with drel kept in fp32 (it sums many logit
    gradients): tf32 products for low-precision inputs, exact ones for fp32."""
    drel = rel_shift(by_line, lq, W, W_PAD, R_PAD)
    dq = mm(drel, table.to(tl.float32), PREC)
    dr = mm(tl.trans(drel), q.to(tl.float32), PREC)
    return dq, dr


@triton.jit
def _extra_block(dq, q, do, lse2, delta, valid, XK, XV, e, E, d, qk_scale, D: tl.constexpr,
                 PREC: tl.constexpr):
    """Extra keys e (pooled means, global tokens) of a query block: dq's share, and p, ds."""
    ok = e < E
    xk = load_rows(XK, e, ok, D, 1, d, D)
    xv = load_rows(XV, e, ok, D, 1, d, D)
    p, ds = grad_step(q, xk, xv, do, lse2, delta, 0.0, valid[:, None] & ok[None, :], qk_scale, False, PREC)
    return dq + mm(ds.to(xk.dtype), xk, PREC), p, ds


# ----------------------------------------------------------------------------- small cells
@triton.jit
def _tile_grads(t, slots, e, d, Q, K, V, DO, O, LSE, DELTA, XK, XV, XGK, XGV, PK, PV, DQ, DK, DV, th, tw,
                drh, drw, dkx, dvx, sqn, sqd, skn, skd, svn, svd, sdn, sdd, sgqn, sgqd, sgkn, sgkd, sgvn, sgvd,
                E, P, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, NTW, qk_scale, scale,
                D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
                WH_PAD: tl.constexpr, WW_PAD: tl.constexpr, RH_PAD: tl.constexpr, RW_PAD: tl.constexpr,
                HAS_EXTRA: tl.constexpr, POOL: tl.constexpr, PARTIALS: tl.constexpr, IN_REGS: tl.constexpr,
                SPREAD_IN_REGS: tl.constexpr, HAS_GLOBAL: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_G: tl.constexpr):
    """The single pass over packed tile t (its cells fit one block): dq, dk, dv of all its tokens
    from one S = q k^T (5 products, as FlashAttention-2's inner step), written once, plus
    - the extra keys' share of dq (and, without pooling, their partial gradients: PARTIALS),
    - the global queries' share of dk, dv,
    - with pooling, the pooled keys' reduced gradients spread to their tile members (XG),
    - with relative position, dq's term and this tile's share of d rel_pos (added to drh/drw).
    delta comes from the prep pass's buffer when it ran (pooling), else from O here."""
    tok, valid, cell, ly, lx, _ = tile_slots(t, slots, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX)
    q = load_rows(Q, tok, valid, sqn, sqd, d, D)
    k = load_rows(K, tok, valid, skn, skd, d, D)
    v = load_rows(V, tok, valid, svn, svd, d, D)
    do = load_rows(DO, tok, valid, sdn, sdd, d, D)
    lse2 = load_vec(LSE, tok, valid) * 1.4426950408889634
    if POOL:
        delta = load_vec(DELTA, tok, valid)
    else:
        o = load_rows(O, tok, valid, D, 1, d, D)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    bias = _rel_bias(q, th, tw, ly, lx, ly, lx, WH, WW, HAS_RELH, HAS_RELW, RH_PAD, RW_PAD, WH_PAD,
                     WW_PAD, PREC)
    mask = valid[:, None] & valid[None, :] & (cell[:, None] == cell[None, :])
    p, ds = grad_step(q, k, v, do, lse2, delta, bias, mask, qk_scale, HAS_RELH or HAS_RELW, PREC)
    # Products in an order that lets p, then ds, then q and dO die early (register pressure).
    dv = mm(tl.trans(p).to(do.dtype), do, PREC)
    by_h = 0.0
    by_w = 0.0
    if HAS_RELH:
        by_h = line_sums(ds, ly, WH_PAD, PREC)
    if HAS_RELW:
        by_w = line_sums(ds, lx, WW_PAD, PREC)
    dk = mm(tl.trans(ds).to(q.dtype), q, PREC)
    dq = mm(ds.to(k.dtype), k, PREC) * scale
    if HAS_RELH:
        dqr, dr = _rel_dq(by_h, ly, WH, th, q, WH_PAD, RH_PAD, PREC)
        dq += dqr
        drh += dr
    if HAS_RELW:
        dqr, dr = _rel_dq(by_w, lx, WW, tw, q, WW_PAD, RW_PAD, PREC)
        dq += dqr
        drw += dr
    if HAS_EXTRA:
        dqx = tl.zeros([BLOCK, D_PAD], dtype=tl.float32)
        if IN_REGS:
            # Loaded per tile (4 KB at the target): held across the tile loop they cost ~90
            # registers (ptxas, sm_90a) for a few percent of the bytes.
            dqx, px, dsx = _extra_block(dqx, q, do, lse2, delta, valid, XK, XV, e, E, d, qk_scale, D, PREC)
            if PARTIALS:
                dkx += mm(tl.trans(dsx).to(q.dtype), q, PREC)
                dvx += mm(tl.trans(px).to(do.dtype), do, PREC)
        else:
            for e0 in range(0, E, BLOCK_E):
                dqx, px, dsx = _extra_block(dqx, q, do, lse2, delta, valid, XK, XV, e0 + e, E, d,
                                            qk_scale, D, PREC)
                if PARTIALS:
                    _store_partial(PK, PV, t, e0 + e, e0 + e < E, mm(tl.trans(dsx).to(q.dtype), q, PREC),
                                   mm(tl.trans(px).to(do.dtype), do, PREC), E, d, D)
        dq += dqx * scale
    store_rows(DQ, tok, dq, valid, sgqn, sgqd, d, D)
    if HAS_GLOBAL:
        dk, dv = _global_queries(dk, dv, k, v, valid, Q, DO, O, LSE, sqn, sqd, sdn, sdd, G, d,
                                 qk_scale, D, PREC, BLOCK_G)
    dk = dk * scale
    if POOL:
        if IN_REGS and SPREAD_IN_REGS:
            xgk = load_rows(XGK, e, e < P, D, 1, d, D)
            xgv = load_rows(XGV, e, e < P, D, 1, d, D)
            dk, dv = _pool_spread_regs(dk, dv, tok, xgk, xgv, e, G, HG, WG, WH, WW, NTW, PREC)
        else:
            dk, dv = _pool_spread(dk, dv, tok, valid, XGK, XGV, G, HG, WG, WH, WW, NTW, d, D)
    store_rows(DK, tok, dk, valid, sgkn, sgkd, d, D)
    store_rows(DV, tok, dv, valid, sgvn, sgvd, d, D)
    return drh, drw, dkx, dvx


@triton.jit
def _store_rel(PRH, PRW, slot, drh, drw, d, D: tl.constexpr, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
               RH_PAD: tl.constexpr, RW_PAD: tl.constexpr):
    """This program's share of d rel_pos (summed by the host in slot order)."""
    if HAS_RELH:
        store_rows(PRH + slot * RH_PAD * D, tl.arange(0, RH_PAD), drh, tl.arange(0, RH_PAD) < RH_PAD, D, 1, d, D)
    if HAS_RELW:
        store_rows(PRW + slot * RW_PAD * D, tl.arange(0, RW_PAD), drw, tl.arange(0, RW_PAD) < RW_PAD, D, 1, d, D)


@triton.jit
def bwd_tile_kernel(Q, K, V, DO, O, LSE, DELTA, XK, XV, XGK, XGV, PK, PV, RH, RW, PRH, PRW, DQ, DK, DV,
                    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                    sgqb, sgqh, sgqn, sgqd, sgkb, sgkh, sgkn, sgkd, sgvb, sgvh, sgvn, sgvd,
                    srh0, srh1, srw0, srw1,
                    H, N, E, P, NPART, T, TPP, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, NTW,
                    qk_scale, scale,
                    D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
                    WH_PAD: tl.constexpr, WW_PAD: tl.constexpr, RH_PAD: tl.constexpr, RW_PAD: tl.constexpr,
                    HAS_EXTRA: tl.constexpr, POOL: tl.constexpr, PARTIALS: tl.constexpr, IN_REGS: tl.constexpr,
                    SPREAD_IN_REGS: tl.constexpr, HAS_GLOBAL: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr,
                    BLOCK_E: tl.constexpr, BLOCK_G: tl.constexpr):
    """The split plan's single pass: tiles grp*TPP.. (_tile_grads each), after the prep kernel
    (pooling) and the reduction of the pooled keys' gradients into XG."""
    grp = tl.program_id(0)
    bh = tl.program_id(1)
    Q = head(Q, bh, H, sqb, sqh)
    K = head(K, bh, H, skb, skh)
    V = head(V, bh, H, svb, svh)
    DO = head(DO, bh, H, sdb, sdh)
    DQ = head(DQ, bh, H, sgqb, sgqh)
    DK = head(DK, bh, H, sgkb, sgkh)
    DV = head(DV, bh, H, sgvb, sgvh)
    O += bh.to(tl.int64) * N * D
    LSE += bh.to(tl.int64) * N
    DELTA += bh.to(tl.int64) * N
    XK += bh.to(tl.int64) * E * D
    XV += bh.to(tl.int64) * E * D
    XGK += bh.to(tl.int64) * P * D
    XGV += bh.to(tl.int64) * P * D
    PK += bh.to(tl.int64) * NPART * E * D
    PV += bh.to(tl.int64) * NPART * E * D
    d = tl.arange(0, D_PAD)
    slots = tl.arange(0, BLOCK)
    e = tl.arange(0, BLOCK_E)
    th = 0.0
    tw = 0.0
    if HAS_RELH:
        th = load_table(RH, srh0, srh1, 2 * WH - 1, d, D, RH_PAD).to(Q.dtype.element_ty)
    if HAS_RELW:
        tw = load_table(RW, srw0, srw1, 2 * WW - 1, d, D, RW_PAD).to(Q.dtype.element_ty)
    drh = tl.zeros([RH_PAD, D_PAD], dtype=tl.float32)
    drw = tl.zeros([RW_PAD, D_PAD], dtype=tl.float32)
    dkx = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    dvx = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    t0 = grp * TPP
    for t in range(t0, tl.minimum(t0 + TPP, T)):
        drh, drw, dkx, dvx = _tile_grads(
            t, slots, e, d, Q, K, V, DO, O, LSE, DELTA, XK, XV, XGK, XGV, PK, PV, DQ, DK, DV, th, tw, drh, drw, dkx,
            dvx, sqn, sqd, skn, skd, svn, svd, sdn, sdd, sgqn, sgqd, sgkn, sgkd, sgvn, sgvd, E, P, G, HG, WG, WH, WW,
            NTX, NTY, MY, MX, BY, BX, FY, FX, NTW, qk_scale, scale, D, D_PAD, HAS_RELH, HAS_RELW, WH_PAD, WW_PAD,
            RH_PAD, RW_PAD, HAS_EXTRA, POOL, PARTIALS, IN_REGS, SPREAD_IN_REGS, HAS_GLOBAL, PREC, BLOCK, BLOCK_E,
            BLOCK_G)
    if HAS_EXTRA:
        if PARTIALS:
            if IN_REGS:
                _store_partial(PK, PV, grp, e, e < E, dkx, dvx, E, d, D)
    _store_rel(PRH, PRW, bh.to(tl.int64) * tl.num_programs(0) + grp, drh, drw, d, D, HAS_RELH, HAS_RELW, RH_PAD,
               RW_PAD)


@triton.jit
def bwd_head_kernel(Q, K, V, DO, O, LSE, DELTA, XK, XV, XGK, XGV, PK, PV, RH, RW, PRH, PRW, DQ, DK, DV,
                    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                    sgqb, sgqh, sgqn, sgqd, sgkb, sgkh, sgkn, sgkd, sgvb, sgvh, sgvn, sgvd,
                    srh0, srh1, srw0, srw1,
                    H, N, E, P, NPART, T, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, NTW,
                    qk_scale, scale,
                    D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
                    WH_PAD: tl.constexpr, WW_PAD: tl.constexpr, RH_PAD: tl.constexpr, RW_PAD: tl.constexpr,
                    SPREAD_IN_REGS: tl.constexpr, HAS_GLOBAL: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr,
                    BLOCK_E: tl.constexpr, BLOCK_G: tl.constexpr):
    """The per-head plan's whole backward of one (batch, head) with pooled keys (cells that fit one
    block, all extra keys one register block): the prep pass over every tile (delta stored, the
    extra keys' gradients from the grid queries summed in registers: the pooled keys' are then
    complete, no cross-program reduction), XG = the pooled keys' gradients stored, a barrier, then
    the single pass over every tile with the spread (_tile_grads). The second reads of q, dO and
    delta are this program's own recent data. With global tokens, their keys' grid-query share
    goes to partial slot 0 for bwd_reduce_kernel (their global-query share comes from
    bwd_global_kernel)."""
    bh = tl.program_id(1)
    Q = head(Q, bh, H, sqb, sqh)
    K = head(K, bh, H, skb, skh)
    V = head(V, bh, H, svb, svh)
    DO = head(DO, bh, H, sdb, sdh)
    DQ = head(DQ, bh, H, sgqb, sgqh)
    DK = head(DK, bh, H, sgkb, sgkh)
    DV = head(DV, bh, H, sgvb, sgvh)
    O += bh.to(tl.int64) * N * D
    LSE += bh.to(tl.int64) * N
    DELTA += bh.to(tl.int64) * N
    XK += bh.to(tl.int64) * E * D
    XV += bh.to(tl.int64) * E * D
    XGK += bh.to(tl.int64) * P * D
    XGV += bh.to(tl.int64) * P * D
    PK += bh.to(tl.int64) * NPART * E * D
    PV += bh.to(tl.int64) * NPART * E * D
    d = tl.arange(0, D_PAD)
    slots = tl.arange(0, BLOCK)
    e = tl.arange(0, BLOCK_E)
    # ---- the prep pass: delta, and the extra keys' gradients from every grid query of the head
    dkx = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    dvx = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    xk = load_rows(XK, e, e < E, D, 1, d, D)
    xv = load_rows(XV, e, e < E, D, 1, d, D)
    for t in range(0, T):
        tok, valid, cell, ly, lx, _ = tile_slots(t, slots, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX)
        dkx, dvx = _prep_block(dkx, dvx, tok, valid, Q, DO, O, LSE, DELTA, xk, xv, e, E, sqn, sqd, sdn, sdd, d,
                               qk_scale, D, True, PREC)
    store_rows(XGK, e, dkx * scale, e < P, D, 1, d, D)
    store_rows(XGV, e, dvx, e < P, D, 1, d, D)
    if HAS_GLOBAL:
        _store_partial(PK, PV, 0, e, (e >= P) & (e < E), dkx, dvx, E, d, D)
    tl.debug_barrier()  # XG and delta, written above by other threads, are read below
    # ---- the single pass
    th = 0.0
    tw = 0.0
    if HAS_RELH:
        th = load_table(RH, srh0, srh1, 2 * WH - 1, d, D, RH_PAD).to(Q.dtype.element_ty)
    if HAS_RELW:
        tw = load_table(RW, srw0, srw1, 2 * WW - 1, d, D, RW_PAD).to(Q.dtype.element_ty)
    drh = tl.zeros([RH_PAD, D_PAD], dtype=tl.float32)
    drw = tl.zeros([RW_PAD, D_PAD], dtype=tl.float32)
    for t in range(0, T):  # (dkx, dvx pass through unused: no partial sums in this pass)
        drh, drw, _kx, _vx = _tile_grads(
            t, slots, e, d, Q, K, V, DO, O, LSE, DELTA, XK, XV, XGK, XGV, PK, PV, DQ, DK, DV, th, tw, drh, drw, dkx,
            dvx, sqn, sqd, skn, skd, svn, svd, sdn, sdd, sgqn, sgqd, sgkn, sgkd, sgvn, sgvd, E, P, G, HG, WG, WH, WW,
            NTX, NTY, MY, MX, BY, BX, FY, FX, NTW, qk_scale, scale, D, D_PAD, HAS_RELH, HAS_RELW, WH_PAD, WW_PAD,
            RH_PAD, RW_PAD, True, True, False, True, SPREAD_IN_REGS, HAS_GLOBAL, PREC, BLOCK, BLOCK_E, BLOCK_G)
    _store_rel(PRH, PRW, bh.to(tl.int64), drh, drw, d, D, HAS_RELH, HAS_RELW, RH_PAD, RW_PAD)


# ----------------------------------------------------------------------------- large cells
@triton.jit
def bwd_kv_kernel(Q, K, V, DO, O, LSE, DELTA, XGK, XGV, RH, RW, DK, DV,
                  sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                  sgkb, sgkh, sgkn, sgkd, sgvb, sgvh, sgvn, sgvd, srh0, srh1, srw0, srw1,
                  H, N, P, KB, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, NTW, qk_scale, scale,
                  D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
                  RH_PAD: tl.constexpr, RW_PAD: tl.constexpr, WH_PAD: tl.constexpr, WW_PAD: tl.constexpr,
                  POOL: tl.constexpr, HAS_GLOBAL: tl.constexpr,
                  PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """dk, dv of key block (tile t, slots n0..) of a cell larger than one block: loop over the
    tile's query blocks (delta from the prep kernel), then the global queries; pooled spread."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    t = pid // KB
    n0 = (pid - t * KB) * BLOCK_N
    Q = head(Q, bh, H, sqb, sqh)
    K = head(K, bh, H, skb, skh)
    V = head(V, bh, H, svb, svh)
    DO = head(DO, bh, H, sdb, sdh)
    DK = head(DK, bh, H, sgkb, sgkh)
    DV = head(DV, bh, H, sgvb, sgvh)
    O += bh.to(tl.int64) * N * D
    LSE += bh.to(tl.int64) * N
    DELTA += bh.to(tl.int64) * N
    XGK += bh.to(tl.int64) * P * D
    XGV += bh.to(tl.int64) * P * D
    d = tl.arange(0, D_PAD)
    tok_k, valid_k, cell_k, ly_k, lx_k, count = tile_slots(t, n0 + tl.arange(0, BLOCK_N), G, HG, WG, WH, WW,
                                                           NTX, NTY, MY, MX, BY, BX, FY, FX)
    k = load_rows(K, tok_k, valid_k, skn, skd, d, D)
    v = load_rows(V, tok_k, valid_k, svn, svd, d, D)
    th = 0.0
    tw = 0.0
    if HAS_RELH:
        th = load_table(RH, srh0, srh1, 2 * WH - 1, d, D, RH_PAD).to(k.dtype)
    if HAS_RELW:
        tw = load_table(RW, srw0, srw1, 2 * WW - 1, d, D, RW_PAD).to(k.dtype)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    for m0 in range(0, count, BLOCK_M):
        tok_q, valid_q, cell_q, ly_q, lx_q, _ = tile_slots(t, m0 + tl.arange(0, BLOCK_M), G, HG, WG, WH, WW,
                                                           NTX, NTY, MY, MX, BY, BX, FY, FX)
        q = load_rows(Q, tok_q, valid_q, sqn, sqd, d, D)
        do = load_rows(DO, tok_q, valid_q, sdn, sdd, d, D)
        lse2 = load_vec(LSE, tok_q, valid_q) * 1.4426950408889634
        delta = load_vec(DELTA, tok_q, valid_q)
        bias = _rel_bias(q, th, tw, ly_q, lx_q, ly_k, lx_k, WH, WW, HAS_RELH, HAS_RELW, RH_PAD, RW_PAD, WH_PAD,
                         WW_PAD, PREC)
        mask = valid_q[:, None] & valid_k[None, :] & (cell_q[:, None] == cell_k[None, :])
        p, ds = grad_step(q, k, v, do, lse2, delta, bias, mask, qk_scale, HAS_RELH or HAS_RELW, PREC)
        dv += mm(tl.trans(p).to(do.dtype), do, PREC)
        dk += mm(tl.trans(ds).to(q.dtype), q, PREC)
    if HAS_GLOBAL:
        dk, dv = _global_queries(dk, dv, k, v, valid_k, Q, DO, O, LSE, sqn, sqd, sdn, sdd, G, d,
                                 qk_scale, D, PREC, BLOCK_G)
    dk = dk * scale
    if POOL:
        dk, dv = _pool_spread(dk, dv, tok_k, valid_k, XGK, XGV, G, HG, WG, WH, WW, NTW, d, D)
    store_rows(DK, tok_k, dk, valid_k, sgkn, sgkd, d, D)
    store_rows(DV, tok_k, dv, valid_k, sgvn, sgvd, d, D)


@triton.jit
def bwd_q_kernel(Q, K, V, DO, LSE, DELTA, XK, XV, PK, PV, RH, RW, PRH, PRW, DQ,
                 sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                 sgqb, sgqh, sgqn, sgqd, srh0, srh1, srw0, srw1,
                 H, N, E, NPART, QB, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, qk_scale, scale,
                 D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
                 WH_PAD: tl.constexpr, WW_PAD: tl.constexpr, RH_PAD: tl.constexpr, RW_PAD: tl.constexpr,
                 HAS_EXTRA: tl.constexpr, PARTIALS: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    """dq of query block (tile t, slots m0..) of a cell larger than one block: loop over the
    cell's key blocks, then the extra keys (without pooling, writing their partial gradients as
    slot t * QB + block); relative position's dq term and this block's share of d rel_pos."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    t = pid // QB
    m0 = (pid - t * QB) * BLOCK_M
    Q = head(Q, bh, H, sqb, sqh)
    K = head(K, bh, H, skb, skh)
    V = head(V, bh, H, svb, svh)
    DO = head(DO, bh, H, sdb, sdh)
    DQ = head(DQ, bh, H, sgqb, sgqh)
    LSE += bh.to(tl.int64) * N
    DELTA += bh.to(tl.int64) * N
    XK += bh.to(tl.int64) * E * D
    XV += bh.to(tl.int64) * E * D
    PK += bh.to(tl.int64) * NPART * E * D
    PV += bh.to(tl.int64) * NPART * E * D
    d = tl.arange(0, D_PAD)
    tok_q, valid_q, cell_q, ly_q, lx_q, count = tile_slots(t, m0 + tl.arange(0, BLOCK_M), G, HG, WG, WH, WW,
                                                           NTX, NTY, MY, MX, BY, BX, FY, FX)
    q = load_rows(Q, tok_q, valid_q, sqn, sqd, d, D)
    do = load_rows(DO, tok_q, valid_q, sdn, sdd, d, D)
    lse2 = load_vec(LSE, tok_q, valid_q) * 1.4426950408889634
    delta = load_vec(DELTA, tok_q, valid_q)
    th = 0.0
    tw = 0.0
    if HAS_RELH:
        th = load_table(RH, srh0, srh1, 2 * WH - 1, d, D, RH_PAD).to(q.dtype)
    if HAS_RELW:
        tw = load_table(RW, srw0, srw1, 2 * WW - 1, d, D, RW_PAD).to(q.dtype)
    by_h = tl.zeros([BLOCK_M, WH_PAD], dtype=tl.float32)
    by_w = tl.zeros([BLOCK_M, WW_PAD], dtype=tl.float32)
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for n0 in range(0, count, BLOCK_N):
        tok_k, valid_k, cell_k, ly_k, lx_k, _ = tile_slots(t, n0 + tl.arange(0, BLOCK_N), G, HG, WG, WH, WW,
                                                           NTX, NTY, MY, MX, BY, BX, FY, FX)
        k = load_rows(K, tok_k, valid_k, skn, skd, d, D)
        v = load_rows(V, tok_k, valid_k, svn, svd, d, D)
        bias = _rel_bias(q, th, tw, ly_q, lx_q, ly_k, lx_k, WH, WW, HAS_RELH, HAS_RELW, RH_PAD, RW_PAD, WH_PAD,
                         WW_PAD, PREC)
        mask = valid_q[:, None] & valid_k[None, :] & (cell_q[:, None] == cell_k[None, :])
        p, ds = grad_step(q, k, v, do, lse2, delta, bias, mask, qk_scale, HAS_RELH or HAS_RELW, PREC)
        dq += mm(ds.to(k.dtype), k, PREC)
        if HAS_RELH:
            by_h += line_sums(ds, ly_k, WH_PAD, PREC)
        if HAS_RELW:
            by_w += line_sums(ds, lx_k, WW_PAD, PREC)
    if HAS_EXTRA:
        e = tl.arange(0, BLOCK_E)
        for e0 in range(0, E, BLOCK_E):
            dq, px, dsx = _extra_block(dq, q, do, lse2, delta, valid_q, XK, XV, e0 + e, E, d, qk_scale,
                                       D, PREC)
            if PARTIALS:
                _store_partial(PK, PV, pid, e0 + e, e0 + e < E, mm(tl.trans(dsx).to(q.dtype), q, PREC),
                               mm(tl.trans(px).to(do.dtype), do, PREC), E, d, D)
    dq = dq * scale
    slot = bh.to(tl.int64) * tl.num_programs(0) + pid
    if HAS_RELH:
        dqr, dr = _rel_dq(by_h, ly_q, WH, th, q, WH_PAD, RH_PAD, PREC)
        dq += dqr
        store_rows(PRH + slot * RH_PAD * D, tl.arange(0, RH_PAD), dr, tl.arange(0, RH_PAD) < RH_PAD, D, 1, d, D)
    if HAS_RELW:
        dqr, dr = _rel_dq(by_w, lx_q, WW, tw, q, WW_PAD, RW_PAD, PREC)
        dq += dqr
        store_rows(PRW + slot * RW_PAD * D, tl.arange(0, RW_PAD), dr, tl.arange(0, RW_PAD) < RW_PAD, D, 1, d, D)
    store_rows(DQ, tok_q, dq, valid_q, sgqn, sgqd, d, D)
