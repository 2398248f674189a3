"""@triton.jit helpers shared by the window_attention kernels: the packed-tile decoding, strided
row loads/stores, relative-position logits and the two softmax steps (forward, backward).
The layout they implement is described in this package's docstring (__init__.py)."""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    """tl.dot with fp32 accumulation. PREC "upcast" (bf16 under the interpreter, whose bf16
    tl.dot is wrong in triton 3.9) multiplies the exactly-upcast operands instead: same result."""
    if PREC == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def head(PTR, bh, H, sb, sh):
    """PTR advanced to head bh = b * H + h of a strided (B, H, ...) tensor. Offsets in int64:
    B * H * N * D overflows int32 at ViTPose sizes."""
    b = bh // H
    h = bh - b * H
    return PTR + b.to(tl.int64) * sb + h.to(tl.int64) * sh


@triton.jit
def axis_tile(i, NT, MERGE, BEFORE, FIRST, W, N):
    """Tile i along one axis -> (first grid line of its main cell, that cell's length, length of
    the second cell: cell 0, lines [0, FIRST), appended to the last tile when MERGE)."""
    c = i + MERGE
    start = tl.maximum(c * W - BEFORE, 0)
    len0 = tl.minimum(c * W - BEFORE + W, N) - start
    len1 = tl.where((i == NT - 1) & (MERGE > 0), FIRST, 0)
    return start, len0, len1


@triton.jit
def tile_count(t, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX):
    """Real tokens in packed tile t."""
    ty = t // NTX
    y0, ny0, ny1 = axis_tile(ty, NTY, MY, BY, FY, WH, HG)
    x0, nx0, nx1 = axis_tile(t - ty * NTX, NTX, MX, BX, FX, WW, WG)
    return (ny0 + ny1) * (nx0 + nx1)


@triton.jit
def tile_slots(t, s, G, HG, WG, WH, WW, NTX, NTY, MY, MX, BY, BX, FY, FX):
    """Slots s of packed tile t -> (token, real?, cell id in the tile (0..3), local row, local
    column, real tokens in the tile). The tile's rows are its main cell's rows then (MERGE) cell 0's,
    likewise columns; slots are row-major over the real rows x real columns, so the real tokens
    are the first `count` slots. Two slots may attend iff their cell ids are equal; local
    coordinates are contiguous inside a cell, so their differences are the spec's in-cell ones."""
    ty = t // NTX
    tx = t - ty * NTX
    y0, ny0, ny1 = axis_tile(ty, NTY, MY, BY, FY, WH, HG)
    x0, nx0, nx1 = axis_tile(tx, NTX, MX, BX, FX, WW, WG)
    cols = nx0 + nx1
    count = (ny0 + ny1) * cols
    ly = s // cols
    lx = s - ly * cols
    valid = s < count
    y = tl.where(ly < ny0, y0 + ly, ly - ny0)
    x = tl.where(lx < nx0, x0 + lx, lx - nx0)
    cell = (ly >= ny0).to(tl.int32) * 2 + (lx >= nx0).to(tl.int32)
    tok = tl.where(valid, G + y * WG + x, 0)
    return tok, valid, cell, ly, lx, count


@triton.jit
def pooled_index(tok, G, HG, WG, WH, WW, NTW):
    """Grid token -> (its tile of the unshifted tiling, that tile's member count)."""
    gi = tok - G
    y = gi // WG
    x = gi - y * WG
    ty = y // WH
    tx = x // WW
    cnt = tl.minimum(WH, HG - ty * WH) * tl.minimum(WW, WG - tx * WW)
    return ty * NTW + tx, cnt


@triton.jit
def row_mask(valid, d, D: tl.constexpr):
    """valid rows x the real head-dim columns (only rows when the head dim needs no padding)."""
    if D == d.shape[0]:
        return valid[:, None]
    else:
        return valid[:, None] & (d < D)[None, :]


@triton.jit
def load_rows(PTR, tok, valid, sn, sd, d, D: tl.constexpr):
    """Rows `tok` of one head of a strided (N, D) tensor; masked rows and padded columns read 0.
    In-head offsets are int32 (the host declines heads spanning 2**31 elements): int64 offset
    tiles would double the registers every row pointer holds."""
    return tl.load(PTR + (tok[:, None] * sn + d[None, :] * sd), mask=row_mask(valid, d, D), other=0.0)


@triton.jit
def store_rows(PTR, tok, x, valid, sn, sd, d, D: tl.constexpr):
    """x into rows `tok` of one head of a strided (N, D) output, in the output's dtype."""
    tl.store(PTR + (tok[:, None] * sn + d[None, :] * sd), x.to(PTR.dtype.element_ty), mask=row_mask(valid, d, D))


@triton.jit
def load_vec(PTR, tok, valid):
    return tl.load(PTR + tok, mask=valid, other=0.0)


@triton.jit
def load_table(R, sr0, sr1, NR, d, D: tl.constexpr, R_PAD: tl.constexpr):
    """The (R_PAD, D_PAD) zero-padded rows of a relative-position table. Callers round it to q's
    dtype, as the spec does."""
    j = tl.arange(0, R_PAD)
    return tl.load(R + j[:, None] * sr0 + d[None, :] * sr1, mask=row_mask(j < NR, d, D), other=0.0)


@triton.jit
def rel_logits(qr, lq, lk, W, W_PAD: tl.constexpr, R_PAD: tl.constexpr, PREC: tl.constexpr):
    """qr[i, lq_i - lk_j + W - 1], qr = q . R^T: the decomposed relative-position logit of every
    pair. Each query row is shifted by its own line with a small register gather (to the logit
    per key *line*, (BM, W_PAD)), then spread over the keys with a one-hot product."""
    t = tl.arange(0, W_PAD)
    src = tl.minimum(tl.maximum(lq[:, None] - t[None, :] + W - 1, 0), R_PAD - 1)
    per_line = tl.gather(qr, src, axis=1)
    onehot = (lk[:, None] == t[None, :]).to(tl.float32)
    return mm(per_line, tl.trans(onehot), PREC)


@triton.jit
def softmax_step(acc, m_i, l_i, q, k, v, bias, mask, qk_scale, HAS_BIAS: tl.constexpr, PREC: tl.constexpr):
    """One key block of the online softmax, logits in log2 units. A fully masked block leaves a
    row untouched because m_i starts finite (-1e30) while masked logits are -inf."""
    s = mm(q, tl.trans(k), PREC) * qk_scale
    if HAS_BIAS:
        s += bias * 1.4426950408889634
    s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + mm(p.to(v.dtype), v, PREC)
    return acc, m_new, l_i


@triton.jit
def grad_step(q, k, v, do, lse2, delta, bias, mask, qk_scale, HAS_BIAS: tl.constexpr, PREC: tl.constexpr):
    """Recomputed probabilities p (from the saved logsumexp, log2 units) and logit gradients
    ds = p * (dO . v - delta) of one (query block, key block) pair."""
    s = mm(q, tl.trans(k), PREC) * qk_scale
    if HAS_BIAS:
        s += bias * 1.4426950408889634
    p = tl.where(mask, tl.exp2(s - lse2[:, None]), 0.0)
    dp = mm(do, tl.trans(v), PREC)
    return p, p * (dp - delta[:, None])


@triton.jit
def line_sums(ds, lk, W_PAD: tl.constexpr, PREC: tl.constexpr):
    """(BM, W_PAD): ds summed over the keys of each local line (row or column of the cell), as a
    one-hot product (tf32 for low-precision inputs, as the old dq kernel did; exact for fp32)."""
    onehot = (lk[:, None] == tl.arange(0, W_PAD)[None, :]).to(tl.float32)
    return mm(ds, onehot, PREC)


@triton.jit
def rel_shift(by_line, lq, W, W_PAD: tl.constexpr, R_PAD: tl.constexpr):
    """drel[i, r] = by_line[i, lq_i + W - 1 - r] (0 outside the cell's lines): the logit gradient
    of query i summed over the keys at relative offset r - W + 1, each row shifted by its own line
    with a register gather."""
    r = tl.arange(0, R_PAD)
    src = lq[:, None] + W - 1 - r[None, :]
    ok = (src >= 0) & (src < W)
    g = tl.gather(by_line, tl.minimum(tl.maximum(src, 0), W_PAD - 1), axis=1)
    return tl.where(ok, g, 0.0)
