"""Forward kernels of the Triton window_attention (layout: this package's docstring)."""
import triton
import triton.language as tl

from .tiles import (head, load_rows, load_table, mm, rel_logits, softmax_step, store_rows, tile_slots)


@triton.jit
def _tile_row_sums(K, V, i, x, ok, G, HG, WG, WH, skn, skd, svn, svd, d, D: tl.constexpr, XB: tl.constexpr,
                   D_PAD: tl.constexpr):
    """fp32 sums of k and v over the grid rows of tile row i of the unshifted tiling, per column x:
    (XB, D_PAD) each, summed line by line."""
    ck = tl.zeros([XB, D_PAD], dtype=tl.float32)
    cv = tl.zeros([XB, D_PAD], dtype=tl.float32)
    for r in range(0, tl.minimum(WH, HG - i * WH)):
        tok = G + (i * WH + r) * WG + x
        ck += load_rows(K, tok, ok, skn, skd, d, D).to(tl.float32)
        cv += load_rows(V, tok, ok, svn, svd, d, D).to(tl.float32)
    return ck, cv


@triton.jit
def _pooled_means(K, V, G, HG, WG, WH, WW, NTW, NTY, skn, skd, svn, svd, d, D: tl.constexpr,
                  D_PAD: tl.constexpr, XB: tl.constexpr, BLOCK_E: tl.constexpr):
    """All P = NTY * NTW pooled means of one head as rows e < P of (BLOCK_E, D_PAD) fp32 blocks:
    each tile row's column sums gathered to its tiles with a one-hot product (exact in fp32)."""
    e = tl.arange(0, BLOCK_E)
    sk = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    sv = tl.zeros([BLOCK_E, D_PAD], dtype=tl.float32)
    for i_rev in range(0, NTY):
        i = NTY - 1 - i_rev
        for x0 in range(0, WG, XB):
            x = x0 + tl.arange(0, XB)
            ck, cv = _tile_row_sums(K, V, i, x, x < WG, G, HG, WG, WH, skn, skd, svn, svd, d, D, XB, D_PAD)
            onehot = ((i * NTW + x // WW)[None, :] == e[:, None]).to(tl.float32)
            sk += tl.dot(onehot, ck, input_precision="ieee")
            sv += tl.dot(onehot, cv, input_precision="ieee")
    ty = e // NTW
    cnt = tl.minimum(WH, HG - ty * WH) * tl.minimum(WW, WG - (e - ty * NTW) * WW)
    cnt = tl.maximum(cnt, 1).to(tl.float32)
    return sk / cnt[:, None], sv / cnt[:, None]


@triton.jit
def extra_kv_kernel(K, V, XK, XV, skb, skh, skn, skd, svb, svh, svn, svd,
                    H, G, HG, WG, WH, WW, NTW, NTY, P, E,
                    D: tl.constexpr, D_PAD: tl.constexpr, XB: tl.constexpr, NTW_PAD: tl.constexpr,
                    BLOCK_G: tl.constexpr):
    """XK/XV[b, h] = the extra keys/values: program i < NTY the means of k/v over the NTW tiles of
    tile row i of the unshifted tiling (partial edge tiles average their real members; sums in
    fp32: grid rows summed line by line, columns gathered to their tile with a one-hot product),
    program NTY the copies of the G global tokens."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    K = head(K, bh, H, skb, skh)
    V = head(V, bh, H, svb, svh)
    XK += bh.to(tl.int64) * E * D
    XV += bh.to(tl.int64) * E * D
    d = tl.arange(0, D_PAD)
    if i < NTY:
        t = tl.arange(0, NTW_PAD)
        rows = tl.minimum(WH, HG - i * WH)
        sk = tl.zeros([NTW_PAD, D_PAD], dtype=tl.float32)
        sv = tl.zeros([NTW_PAD, D_PAD], dtype=tl.float32)
        for x0 in range(0, WG, XB):
            x = x0 + tl.arange(0, XB)
            ck, cv = _tile_row_sums(K, V, i, x, x < WG, G, HG, WG, WH, skn, skd, svn, svd, d, D, XB, D_PAD)
            onehot = ((x // WW)[None, :] == t[:, None]).to(tl.float32)
            sk += tl.dot(onehot, ck, input_precision="ieee")
            sv += tl.dot(onehot, cv, input_precision="ieee")
        cnt = tl.maximum(rows * tl.minimum(WW, WG - t * WW), 1).to(tl.float32)
        ok_t = t < NTW
        store_rows(XK, i * NTW + t, sk / cnt[:, None], ok_t, D, 1, d, D)
        store_rows(XV, i * NTW + t, sv / cnt[:, None], ok_t, D, 1, d, D)
    else:
        for g0 in range(0, G, BLOCK_G):
            g = g0 + tl.arange(0, BLOCK_G)
            ok = g < G
            store_rows(XK, P + g, load_rows(K, g, ok, skn, skd, d, D), ok, D, 1, d, D)
            store_rows(XV, P + g, load_rows(V, g, ok, svn, svd, d, D), ok, D, 1, d, D)


@triton.jit
def _cell_block(acc, m_i, l_i, q, qrh, qrw, cell_q, ly_q, lx_q, K, V, skn, skd, svn, svd, n0, t,
                G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, d, D: tl.constexpr, qk_scale,
                HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr, RH_PAD: tl.constexpr, RW_PAD: tl.constexpr,
                WH_PAD: tl.constexpr, WW_PAD: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys n0.. of the query block's own tile, masked to its own cell."""
    tok_k, valid_k, cell_k, ly_k, lx_k, _ = tile_slots(t, n0 + tl.arange(0, BLOCK_N), G, HG, WG, WH, WW,
                                                       NTX, NTY, MY, MX, BY, BX, FY, FX)
    k = load_rows(K, tok_k, valid_k, skn, skd, d, D)
    v = load_rows(V, tok_k, valid_k, svn, svd, d, D)
    bias = 0.0
    if HAS_RELH:
        bias += rel_logits(qrh, ly_q, ly_k, WH, WH_PAD, RH_PAD, PREC)
    if HAS_RELW:
        bias += rel_logits(qrw, lx_q, lx_k, WW, WW_PAD, RW_PAD, PREC)
    mask = valid_k[None, :] & (cell_q[:, None] == cell_k[None, :])
    return softmax_step(acc, m_i, l_i, q, k, v, bias, mask, qk_scale, HAS_RELH or HAS_RELW, PREC)


@triton.jit
def _query_block(Q, K, V, XK, XV, O, LSE, xk, xv, t, m0, RH, RW, sqn, sqd, skn, skd, svn, svd,
                 srh0, srh1, srw0, srw1, N, E, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, qk_scale,
                 D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
                 RH_PAD: tl.constexpr, RW_PAD: tl.constexpr, WH_PAD: tl.constexpr, WW_PAD: tl.constexpr,
                 HAS_EXTRA: tl.constexpr, EXTRA_IN_REGS: tl.constexpr, ONE_KEY_BLOCK: tl.constexpr,
                 PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    """Query rows m0.. of packed tile t: keys = its cell's tokens in the same tile, then the E
    extra keys (pooled means, global tokens) folded into the same online softmax."""
    d = tl.arange(0, D_PAD)
    tok_q, valid_q, cell_q, ly_q, lx_q, count = tile_slots(t, m0 + tl.arange(0, BLOCK_M), G, HG, WG, WH, WW,
                                                           NTX, NTY, MY, MX, BY, BX, FY, FX)
    q = load_rows(Q, tok_q, valid_q, sqn, sqd, d, D)
    qrh = 0.0
    qrw = 0.0
    if HAS_RELH:
        qrh = mm(q, tl.trans(load_table(RH, srh0, srh1, 2 * WH - 1, d, D, RH_PAD).to(q.dtype)), PREC)
    if HAS_RELW:
        qrw = mm(q, tl.trans(load_table(RW, srw0, srw1, 2 * WW - 1, d, D, RW_PAD).to(q.dtype)), PREC)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if ONE_KEY_BLOCK:  # the whole tile is one key block: straight-line code
        acc, m_i, l_i = _cell_block(acc, m_i, l_i, q, qrh, qrw, cell_q, ly_q, lx_q, K, V, skn, skd, svn, svd,
                                    0, t, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, d, D,
                                    qk_scale, HAS_RELH, HAS_RELW, RH_PAD, RW_PAD, WH_PAD, WW_PAD, PREC, BLOCK_N)
    else:
        for n0 in range(0, count, BLOCK_N):
            acc, m_i, l_i = _cell_block(acc, m_i, l_i, q, qrh, qrw, cell_q, ly_q, lx_q, K, V, skn, skd, svn,
                                        svd, n0, t, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, d,
                                        D, qk_scale, HAS_RELH, HAS_RELW, RH_PAD, RW_PAD, WH_PAD, WW_PAD, PREC,
                                        BLOCK_N)
    if HAS_EXTRA:
        e = tl.arange(0, BLOCK_E)
        if EXTRA_IN_REGS:
            acc, m_i, l_i = softmax_step(acc, m_i, l_i, q, xk, xv, 0.0, (e < E)[None, :], qk_scale, False, PREC)
        else:
            for e0 in range(0, E, BLOCK_E):
                ok = e0 + e < E
                bk = load_rows(XK, e0 + e, ok, D, 1, d, D)
                bv = load_rows(XV, e0 + e, ok, D, 1, d, D)
                acc, m_i, l_i = softmax_step(acc, m_i, l_i, q, bk, bv, 0.0, ok[None, :], qk_scale, False, PREC)
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    store_rows(O, tok_q, acc / l_safe[:, None], valid_q, D, 1, d, D)
    # Natural-log logsumexp (the op's unit for every backend).
    tl.store(LSE + tok_q, (m_i + tl.log2(l_safe)) * 0.6931471805599453, mask=valid_q)


@triton.jit
def fwd_grid_kernel(Q, K, V, XK, XV, RH, RW, O, LSE,
                    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                    srh0, srh1, srw0, srw1,
                    H, N, E, P, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX, NTW, NTY_POOL, QB, T, TPP,
                    qk_scale,
                    D: tl.constexpr, D_PAD: tl.constexpr, HAS_RELH: tl.constexpr, HAS_RELW: tl.constexpr,
                    RH_PAD: tl.constexpr, RW_PAD: tl.constexpr, WH_PAD: tl.constexpr, WW_PAD: tl.constexpr,
                    HAS_EXTRA: tl.constexpr, EXTRA_IN_REGS: tl.constexpr, ONE_KEY_BLOCK: tl.constexpr,
                    WHOLE_HEAD: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_E: tl.constexpr, XB: tl.constexpr):
    """The grid queries. Cells that fit one block (ONE_KEY_BLOCK): program = TPP consecutive packed
    tiles, one block each, the extra keys loaded once; larger cells: program = one (tile, query
    block). WHOLE_HEAD (the per-head plan, pooled keys): the program owns every tile of its head
    and first computes the head's extra keys itself (pooled means, then the global tokens' copies)
    and stores them (saved for the backward): its second read of k and v, in the tiles, re-reads
    what it has just read. No global query and no data-dependent branch around a product in here."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    Q = head(Q, bh, H, sqb, sqh)
    K = head(K, bh, H, skb, skh)
    V = head(V, bh, H, svb, svh)
    O += bh.to(tl.int64) * N * D
    LSE += bh.to(tl.int64) * N
    XK += bh.to(tl.int64) * E * D
    XV += bh.to(tl.int64) * E * D
    xk = 0.0
    xv = 0.0
    if HAS_EXTRA:
        if EXTRA_IN_REGS:
            d = tl.arange(0, D_PAD)
            e = tl.arange(0, BLOCK_E)
            if WHOLE_HEAD:
                mk, mv = _pooled_means(K, V, G, HG, WG, WH, WW, NTW, NTY_POOL, skn, skd, svn, svd, d, D, D_PAD,
                                       XB, BLOCK_E)
                glob = (e >= P) & (e < E)  # then the global tokens' own rows
                gk = load_rows(K, tl.where(glob, e - P, 0), glob, skn, skd, d, D)
                gv = load_rows(V, tl.where(glob, e - P, 0), glob, svn, svd, d, D)
                xk = tl.where((e < P)[:, None], mk.to(gk.dtype), gk)
                xv = tl.where((e < P)[:, None], mv.to(gv.dtype), gv)
                store_rows(XK, e, xk, e < E, D, 1, d, D)
                store_rows(XV, e, xv, e < E, D, 1, d, D)
            else:
                xk = load_rows(XK, e, e < E, D, 1, d, D)
                xv = load_rows(XV, e, e < E, D, 1, d, D)
    if ONE_KEY_BLOCK:
        t0 = pid * TPP
        for t in range(t0, tl.minimum(t0 + TPP, T)):
            _query_block(Q, K, V, XK, XV, O, LSE, xk, xv, t, 0, RH, RW, sqn, sqd, skn, skd, svn, svd,
                         srh0, srh1, srw0, srw1, N, E, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX,
                         qk_scale, D, D_PAD, HAS_RELH, HAS_RELW, RH_PAD, RW_PAD, WH_PAD, WW_PAD, HAS_EXTRA,
                         EXTRA_IN_REGS, ONE_KEY_BLOCK, PREC, BLOCK_M, BLOCK_N, BLOCK_E)
    else:
        t = pid // QB
        _query_block(Q, K, V, XK, XV, O, LSE, xk, xv, t, (pid - t * QB) * BLOCK_M, RH, RW, sqn, sqd, skn, skd,
                     svn, svd, srh0, srh1, srw0, srw1, N, E, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX,
                     qk_scale, D, D_PAD, HAS_RELH, HAS_RELW, RH_PAD, RW_PAD, WH_PAD, WW_PAD, HAS_EXTRA,
                     EXTRA_IN_REGS, ONE_KEY_BLOCK, PREC, BLOCK_M, BLOCK_N, BLOCK_E)


@triton.jit
def fwd_global_kernel(Q, K, V, O, LSE, sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                      H, N, G, qk_scale, D: tl.constexpr, D_PAD: tl.constexpr, PREC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Global query rows g0..: plain attention over all N tokens (no pooled keys, no rel-pos)."""
    bh = tl.program_id(1)
    Q = head(Q, bh, H, sqb, sqh)
    K = head(K, bh, H, skb, skh)
    V = head(V, bh, H, svb, svh)
    d = tl.arange(0, D_PAD)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = rows < G
    q = load_rows(Q, rows, valid, sqn, sqd, d, D)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        tok = n0 + tl.arange(0, BLOCK_N)
        ok = tok < N
        k = load_rows(K, tok, ok, skn, skd, d, D)
        v = load_rows(V, tok, ok, svn, svd, d, D)
        acc, m_i, l_i = softmax_step(acc, m_i, l_i, q, k, v, 0.0, ok[None, :], qk_scale, False, PREC)
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    O += bh.to(tl.int64) * N * D
    store_rows(O, rows, acc / l_safe[:, None], valid, D, 1, d, D)
    tl.store(LSE + bh.to(tl.int64) * N + rows, (m_i + tl.log2(l_safe)) * 0.6931471805599453, mask=valid)
