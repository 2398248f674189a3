"""Triton window_attention, v2 (the spec: vitpose_kernels.reference.window_attention).

Files: tiles.py (jit helpers: tile decoding, row loads, softmax steps), forward.py and backward.py
(the kernels), host.py (launch plans cached per shape, launches, support predicate, registration).
The op's schema, fakes and autograd formula are shared with the CUDA backend
(vitpose_kernels._attention_ops); this package supplies its forward and backward only.

Design note (what a port, e.g. the CUDA C++ one of issue 13 item 6, must reproduce)
===================================================================================

Geometry. Grid Hg x Wg (row-major tokens after G global ones), window wh x ww, shift sh, sw.
Cells start at lines s + i*w: with `before = (w - s) % w`, cell c of an axis covers
[c*w - before, (c+1)*w - before) clipped to [0, n); only the first cell (`first` lines) and the
last can be partial.

Dense packing (host.pack_axis, tiles.axis_tile / tile_slots). Per axis the cells become *tiles*
of at most w lines: every cell is one tile, except that when the first and the last cell are both
partial and fit one window together (always when w divides n and s > 0: Swin's rolled last
window), cell 0 is appended to the last tile ("merge"): tile i holds cell i + merge, and the last
tile also cell 0. A 2-D tile = (row tile) x (column tile): up to 4 cells (2 x 2). Its slots are
row-major over its real rows x real columns (main cell's lines first, then cell 0's), so its
`count` real tokens are slots [0, count) - no padding inside a tile, only after it. The
*cell id* of a slot is 2 * (row in the appended segment) + (column in the appended segment);
two slots may attend iff their cell ids are equal. Local line coordinates (slot row, slot
column) are contiguous inside a cell, so their differences are the spec's relative offsets.
Target (32x24, 8x8, shift 4): 12 tiles of exactly 64 tokens (Swin's 12 rolled windows); of the
4096 (query, key) slot pairs of a tile only the same-cell ones count.

Extra keys. Every grid query also sees the P pooled keys (means of k, v over the *unshifted*
tiling, P = ceil(Hg/wh) * ceil(Wg/ww)) and the G global tokens: E = P + G extra keys per (b, h),
gathered by extra_kv_kernel into extra_kv (2, B, H, E, D) in q's dtype (fp32 sums), which the
forward returns and autograd saves (small). They are one more block of the same online softmax
(BLOCK_E = next_pow2(E) <= 64: loaded once per program and kept in registers; else looped).

Forward. fwd_grid_kernel: tiles that fit one block (wh*ww <= 64, BLOCK = next_pow2(wh*ww)): a
program walks TILES_PER_PROGRAM (4) consecutive tiles, one block each: S = q k^T of the tile
(masked by cell id and count), + rel-pos bias, online softmax (log2 units), then the extra-key
block; larger cells (full attention): program = (tile, query block of BLOCK_M), key blocks
looped. fwd_global_kernel: the G global rows over all N keys (its own kernel: no data-dependent
branch around a product in the grid path, so wgmma is not serialized). Saved: q, k, v (or the
packed qkv), out, lse (natural log, (B, H, N) fp32), extra_kv.

Launch plans (host.Plan.kind; vitpose_kernels._attention_ops.forced_plan overrides, for tests).
With pooled keys every output of a head needs the means of all of its k, v, and every pooled key's
gradient sums over all of its queries, so split programs must read k, v twice and the backward
needs a pass for the pooled gradients plus a reduction kernel between programs.
  "split": what is described below: a head's tiles spread over many programs (fills the GPU at
     any batch; batch-1 inference at the target launches 12 x 3 tile programs, not 12).
  "head": one program per (batch, head) (pooled keys, cells that fit one block, <= 64 extra
     keys): the forward program computes the head's pooled means itself (pooled rows in reverse
     order, so the first tiles re-read the rows read last) and stores extra_kv, then walks all T
     tiles; the backward is one kernel, bwd_head_kernel: the prep pass over all tiles (delta
     stored, the extra keys' gradients summed in registers: the pooled keys' are complete, no
     reduction kernel, deterministic), XG stored, a barrier, then the single pass over all tiles
     (the same _tile_grads as the split plan's tile kernel). The second reads of k, v (forward)
     and q, dO, delta (backward) are the same program's, a few hundred KB back: L2 hits on a GPU
     (benchmarks/README.md: the HBM model and its L2 check). Global tokens: their keys' grid-query
     gradient goes to one partial slot, reduced with bwd_global_kernel's slots by
     bwd_reduce_kernel (rows P..E only).
  Chosen when B*H >= 2 x the SM count, at the classes whose looped single pass fits the registers
  (no rel-pos, no global tokens, D <= 64, 16-bit inputs: 246 registers and no spill at the
  target; the others spill 100-750 bytes with ptxas for sm_90a, so they keep "split"). The two
  plans agree up to summation order (pooled sums' one-hot products, pooled gradients).

Relative position (in-kernel, no N x (2w-1) buffer): per query block qr = q @ R^T (R rounded to
q's dtype, (BM, next_pow2(2w-1))); the logit of (i, j) is qr[i, li - lj + w - 1], obtained by
shifting each row by its own line with a register gather to a per-key-*line* logit (BM, W_PAD),
then a one-hot product over the keys' lines. Backward: line sums of dS (dS @ onehot(key line)),
the same per-row shift to drel (BM, R_PAD), dq += drel @ R, d R += drel^T q (fp32, tf32 products
for low-precision inputs), d R as per-program partial sums added by torch (fixed order).

Backward, cells that fit one block (the single pass): order of launches
  1. bwd_prep_kernel (only with pooling): per program TILES_PER_PROGRAM tiles, per tile: delta =
     rowsum(dO * O) into a (B, H, N) fp32 buffer, and the extra keys' partial gradients from those
     rows, dK_x += dS_x^T q, dV_x += P_x^T dO, accumulated in registers over the program's tiles,
     one fp32 slot per program ((2, B*H, slots, E, D); slots are per (tile, query block) when
     E > 64).
  2. bwd_global_kernel (G > 0): dq of the global rows (all N keys), and the global keys' partial
     gradients from the global queries (one more slot per global query block).
  3. bwd_reduce_kernel: per extra key the slots added in slot order (deterministic): pooled keys'
     gradients to XG (fp32, (2, B*H, P, D)); global tokens' to their dk, dv rows.
  4. bwd_tile_kernel: one program per tile (a loop over tiles costs ~60 registers), one pass: load q, k, v, dO
     (and O for delta when there is no pooling), S = q k^T (+ rel bias), P = exp(S - lse), dP = dO
     v^T, dS = P * (dP - delta), dv = P^T dO, dk = dS^T q, dq = dS k (FlashAttention-2's 5
     products); dq += the extra keys' share (dS_x k_x; without pooling this pass also writes their
     partial gradients, and the reduction runs after it); dk, dv += the global queries' share;
     dk, dv += XG[tile of the token] / tile size (the mean's backward: a one-hot product with the
     P reduced rows, or a per-key gather when P > 64 or with rel-pos); dq, dk, dv written once,
     in the caller's layout (strided views of one (B, N, 3, H, D) gradient for packed qkv). No
     atomics; tiles do not overlap. Partial sums without pooling: one slot per tile.
Larger cells: bwd_prep_kernel (delta, and pooled partials), bwd_global_kernel, bwd_reduce_kernel
(pooling), then bwd_kv_kernel (program = (tile, key block): dk, dv over the tile's query blocks
and the global queries, pooled spread) and bwd_q_kernel (program = (tile, query block): dq over
the key blocks and extra keys, rel-pos terms, extra partial sums without pooling), then the
reduction when there is no pooling.

Determinism: every output row and partial slot has one writer; slot counts depend on the tiling
only (not on B, H or the device), so results are bit-identical run to run and, within one launch
plan, across batch sizes (the plan may change with B*H: the pooled gradients' summation order).
Offsets inside one head are int32 (the host declines heads spanning 2**31 elements); head
offsets int64. Configs are fixed per shape class (host.Plan; autotuning off): registers, spills
and serialized wgmma of the launched specializations are checked for sm_90a in
tests/test_window_attention_triton.py.
"""
from . import backward, forward, tiles  # noqa: F401
from .host import (MAX_HEAD_DIM, MAX_REL_ROWS, pack_axis, plan, plan_of, window_attention,  # noqa: F401
                   window_attention_backward_op, window_attention_op, window_attention_reasons)
