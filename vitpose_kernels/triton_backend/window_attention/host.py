"""Host side of the Triton window_attention: one launch plan per shape (cached), the launches,
the support predicate and the registration (the op's schema is vitpose_kernels._attention_ops)."""
from __future__ import annotations

import functools

import torch
import triton

from ... import _alloc, _attention_ops, dispatch
from ..._validate import AttentionSpec
from . import backward as bk
from . import forward as fw
from .tiles import LOG2E

MAX_HEAD_DIM = 256
MAX_REL_ROWS = 255  # 2*w - 1: q . R^T is held as a (BLOCK_M, next_pow2(2*w - 1)) register tile
SINGLE_MAX = 64  # cells up to this many tokens take the single-pass backward (one block a tile)
EXTRA_MAX = 64  # up to this many extra keys (pooled + global) are one register block
TILES_PER_PROGRAM = 4  # tiles one program of the forward and of the backward's prep walks
# The per-head plan (pooled keys) launches one program per (batch, head): below this many waves of
# programs over the SMs the split plan's T-times more programs fill the GPU better (batch-1
# inference at the target: 12 programs for 132 SMs).
HEAD_PLAN_MIN_WAVES = 2
DEFAULT_SMS = 132  # H100 / H200 SXM: what the plan assumes without a GPU (interpreter, cost model)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pack_axis(n: int, w: int, s: int) -> tuple[int, int, int, int]:
    """One axis of the dense packing -> (tiles, merge, before, first).

    Cells along the axis start at s + i*w (the spec's shift): with `before` = (w - s) % w virtual
    lines in front, cell c covers [c*w - before, (c+1)*w - before) clipped to [0, n); only the
    first (`first` lines) and the last may be partial. When both are partial and fit one window
    together (always, for a shift of a grid the window divides: Swin's rolled last window), the
    first is appended to the last tile (merge = 1), so tiles = cells - merge."""
    before = (w - s) % w
    cells = _cdiv(n + before, w)
    first = min(w - before, n)
    last = n + before - (cells - 1) * w
    merge = int(cells >= 2 and first + last <= w)
    return cells - merge, merge, before, first


def _prec(dtype) -> str:
    # fp32 inputs get exact fp32 products (the spec's 1e-4); tf32 would give ~1e-3.
    if dtype == torch.bfloat16 and dispatch.interpreting():
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


def _warps(block: int, d_pad: int, limit: int) -> int:
    """Warps for a kernel holding `block` x d_pad tiles (d_pad doubled for fp32 inputs): 8 once the
    tile reaches `limit` elements (the backward keeps three fp32 accumulators, the forward one),
    so that no kernel spills; fp32 products run on FMA units, which want 4 even for small tiles."""
    return 8 if block * d_pad >= limit else 4 if block >= 64 or d_pad >= 128 else 2


class Plan:
    """Everything about a call that depends only on its shape: tiling, block sizes, grids, which
    kernels run and the constexpr arguments. Built once per shape (see plan())."""

    def __init__(self, B, H, N, D, dtype, geom, pool, has_rh, has_rw, forced=None, sms=DEFAULT_SMS):
        hg, wg, wh, ww, sh, sw, G = geom
        nty, my, by, fy = pack_axis(hg, wh, sh)
        ntx, mx, bx, fx = pack_axis(wg, ww, sw)
        self.BH, self.H, self.N, self.D, self.G = B * H, H, N, D, G
        self.T, self.S = nty * ntx, wh * ww
        self.P = _attention_ops.num_pooled(geom, pool)
        self.E = self.P + G
        self.ntw = _cdiv(wg, ww)
        self.geo = (G, hg, wg, wh, ww, ntx, nty, my, mx, by, bx, fy, fx)
        self.rel = (has_rh, has_rw)
        self.rh_pad, self.rw_pad = _pow2(2 * wh - 1), _pow2(2 * ww - 1)
        d_pad = self.d_pad = _pow2(D)
        prec = _prec(dtype)
        dw = d_pad * (2 if dtype == torch.float32 else 1)  # register weight of a row: fp32 tiles take twice
        if dtype == torch.float32:
            dw = max(dw, 128)
        # Single pass when its tiles fit the registers (measured with ptxas for sm_90a: D_PAD 128
        # with relative position spills).
        self.small = self.S <= SINGLE_MAX and (d_pad <= 64 or (d_pad <= 128 and not (has_rh or has_rw)))
        block_e = min(_pow2(self.E), EXTRA_MAX)
        self.in_regs = self.E <= EXTRA_MAX
        rel = dict(HAS_RELH=has_rh, HAS_RELW=has_rw, RH_PAD=self.rh_pad, RW_PAD=self.rw_pad,
                   WH_PAD=_pow2(wh), WW_PAD=_pow2(ww))
        # The plan: per head when pooled keys make the head's tiles depend on each other (means of
        # all of k, v; summed gradients of all queries) and the programs still fill the GPU.
        head_ok = self.P > 0 and self.small and self.in_regs
        # Chosen by itself only where its looped single pass fits the registers (ptxas, sm_90a: at
        # the target 246 registers, no spill; with rel-pos, a global token, D 128 or fp32 inputs it
        # spills 100-750 bytes, so those classes keep the split plan unless it is forced).
        head_fast = head_ok and not (has_rh or has_rw) and G == 0 and d_pad <= 64 and dtype != torch.float32
        self.kind = forced or ("head" if head_fast and self.BH >= HEAD_PLAN_MIN_WAVES * sms else "split")
        if self.kind == "head" and not head_ok:
            raise ValueError(f"window_attention (triton): the per-head plan needs pooled keys (pool={pool}), cells "
                             f"of at most {SINGLE_MAX} tokens (window {wh}x{ww}) at head dim <= 64, or <= 128 "
                             f"without rel-pos (D={D}), and at most {EXTRA_MAX} extra keys (E={self.E})")
        whole = self.kind == "head"

        # ---- forward
        if self.small:
            bm = bn = _pow2(self.S)
            warps, stages = _warps(bm, dw, 64 * 128), 2
        else:
            bm, bn, warps, stages = ((128, 64, 8, 3) if d_pad <= 64 else (128, 64, 8, 2) if d_pad <= 128
                                     else (64, 32, 4, 2))
            bm, bn = min(bm, _pow2(self.S)), min(bn, _pow2(self.S))
            if has_rh or has_rw:  # the rel-pos one-hot product in a pipelined loop serializes wgmma (C7515)
                stages = 1
        self.qb = _cdiv(self.S, bm)
        one = self.S <= bn  # a tile is one block: programs walk TILES_PER_PROGRAM tiles (all, per head)
        self.fwd_tpp = self.T if whole else TILES_PER_PROGRAM if one else 1
        self.fwd_grid = (_cdiv(self.T, self.fwd_tpp) if one else self.T * self.qb, self.BH)
        xb = min(64, _pow2(wg))
        self.fwd_c = dict(D=D, D_PAD=d_pad, **rel, HAS_EXTRA=self.E > 0, EXTRA_IN_REGS=self.in_regs,
                          ONE_KEY_BLOCK=one, WHOLE_HEAD=whole, PREC=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_E=block_e,
                          XB=xb, num_warps=8 if whole else warps, num_stages=stages)
        self.nty_pool = _cdiv(hg, wh) if pool else 0
        self.extra_c = dict(D=D, D_PAD=d_pad, XB=xb, NTW_PAD=_pow2(self.ntw), BLOCK_G=min(64, _pow2(G)), num_warps=4)
        gbm = min(64, _pow2(G))
        self.gb = _cdiv(G, gbm)
        self.glob_fwd_c = dict(D=D, D_PAD=d_pad, PREC=prec, BLOCK_M=gbm, BLOCK_N=64 if d_pad <= 128 else 32,
                               num_warps=_warps(gbm, dw, 64 * 128))

        # ---- backward
        bwd_block = _pow2(self.S) if self.small else (64 if d_pad <= 128 else 32)
        # Tiles per program: the prep kernel walks a few (its partial sums shared by several
        # tiles); the single pass takes one (tpp == 1 is specialized as a constant: straight-line
        # code; a loop over tiles costs it ~60 registers, measured with ptxas for sm_90a). A
        # function of the tiling only, never of the batch: results stay bit-identical across
        # batch sizes, and work per program is the same at any (B, H) (the cost model scales a
        # reduced run by program counts).
        self.groups = _cdiv(self.T, TILES_PER_PROGRAM) if self.small else self.T
        self.tpp = _cdiv(self.T, self.groups)
        self.groups = _cdiv(self.T, self.tpp)
        self.bqb = _cdiv(self.S, bwd_block)  # query (and key) blocks per tile, large cells
        self.prep = self.P > 0 or not self.small  # delta buffer (and pooled keys' partial sums)
        if whole:  # the head's program: the global keys' grid-query share in one slot
            self.npart_grid = 1 if G else 0
        elif self.P > 0:  # the prep kernel writes the grid rows' partial sums
            self.npart_grid = self.groups if self.in_regs else self.T * self.bqb
        elif self.E > 0:  # the cell programs do, one slot per tile (per block of a larger cell)
            self.npart_grid = self.T if self.small else self.T * self.bqb
        else:
            self.npart_grid = 0
        self.npart = self.npart_grid + (self.gb if G else 0)
        self.prep_c = dict(D=D, D_PAD=d_pad, PARTIALS=self.P > 0, IN_REGS=self.in_regs, PREC=prec,
                           BLOCK_M=bwd_block, BLOCK_E=block_e, num_warps=_warps(bwd_block, dw, 64 * 64),
                           num_stages=1)
        self.glob_bwd_c = dict(self.glob_fwd_c, num_warps=_warps(64, dw, 64 * 128))
        self.reduce_c = dict(D=D, D_PAD=d_pad, BLOCK_E=block_e, num_warps=4)
        # The per-head plan reduces only the global keys' slots (its pooled keys are done in-program).
        self.reduce_first = self.P if whole else 0
        self.reduce_blocks = _cdiv(self.E - self.reduce_first, block_e)
        gblk = min(64, _pow2(G))
        if whole:
            self.cell_grids = ((1, self.BH),)
            # num_stages=1: the tile loop is not software-pipelined (the loads of the next tile
            # would be live beside the current tile's fp32 accumulators).
            self.head_c = dict(D=D, D_PAD=d_pad, **rel, SPREAD_IN_REGS=not (has_rh or has_rw), HAS_GLOBAL=G > 0,
                               PREC=prec, BLOCK=bwd_block, BLOCK_E=block_e, BLOCK_G=gblk,
                               num_warps=_warps(bwd_block, dw, 64 * 64), num_stages=1)
            self.rel_slots = 1
        elif self.small:
            self.cell_grids = ((self.T, self.BH),)
            self.tile_c = dict(D=D, D_PAD=d_pad, **rel, HAS_EXTRA=self.E > 0, POOL=self.P > 0,
                               PARTIALS=self.P == 0 and self.E > 0, IN_REGS=self.in_regs,
                               # the P pooled gradients held for a one-hot spread: with rel-pos the
                               # registers are spent (measured spills), so a gather per key instead
                               SPREAD_IN_REGS=not (has_rh or has_rw), HAS_GLOBAL=G > 0,
                               PREC=prec, BLOCK=bwd_block, BLOCK_E=block_e, BLOCK_G=gblk,
                               num_warps=_warps(bwd_block, dw, 64 * 64),
                               num_stages=1 if has_rh or has_rw else 2)  # 2 spills with rel-pos
            self.rel_slots = self.T
        else:
            self.cell_grids = ((self.T * self.bqb, self.BH), (self.T * self.bqb, self.BH))
            blocks = dict(BLOCK_M=bwd_block, BLOCK_N=bwd_block)
            warps = _warps(bwd_block, dw, 64 * 64)
            # num_stages=1: with 2, triton's pipelining serializes the dk/dv wgmmas (ptxas C7515).
            self.kv_c = dict(D=D, D_PAD=d_pad, **rel, POOL=self.P > 0, HAS_GLOBAL=G > 0, PREC=prec, **blocks,
                             BLOCK_G=gblk, num_warps=warps, num_stages=1)
            self.q_c = dict(D=D, D_PAD=d_pad, **rel, HAS_EXTRA=self.E > 0,
                            PARTIALS=self.P == 0 and self.E > 0, PREC=prec, **blocks, BLOCK_E=block_e,
                            num_warps=warps, num_stages=1 if has_rh or has_rw else 2)  # C7515, spills
            self.rel_slots = self.T * self.bqb

    def kernels(self) -> list[tuple[str, object, dict]]:
        """(role, kernel, constexpr arguments incl. num_warps/num_stages) of every launch this plan
        makes, forward then backward: what tests/triton_compile.py compiles for sm_90a."""
        whole = self.kind == "head"
        out = []
        if self.E and not whole:
            out.append(("fwd", fw.extra_kv_kernel, self.extra_c))
        out.append(("fwd", fw.fwd_grid_kernel, self.fwd_c))
        if self.G:
            out.append(("fwd-global", fw.fwd_global_kernel, self.glob_fwd_c))
        if whole:
            out.append(("bwd", bk.bwd_head_kernel, self.head_c))
        elif self.prep:
            out.append(("bwd", bk.bwd_prep_kernel, self.prep_c))
        if self.G:
            out.append(("bwd-global", bk.bwd_global_kernel, self.glob_bwd_c))
        if self.E and (self.G or not whole):
            out.append(("bwd", bk.bwd_reduce_kernel, self.reduce_c))
        if self.small and not whole:
            out.append(("bwd", bk.bwd_tile_kernel, self.tile_c))
        elif not self.small:
            out += [("bwd", bk.bwd_kv_kernel, self.kv_c), ("bwd", bk.bwd_q_kernel, self.q_c)]
        return out

    # ------------------------------------------------------------------------- forward
    def forward(self, q, k, v, rh, rw, scale):
        B, H, N, D = q.shape
        dev = q.device
        out = _alloc.empty(B, H, N, D, dtype=q.dtype, device=dev)
        lse = _alloc.empty(B, H, N, dtype=torch.float32, device=dev)
        xkv = _alloc.empty(2, B, H, self.E, D, dtype=q.dtype, device=dev)
        xk, xv = (xkv[0], xkv[1]) if self.E else (q, q)
        sq, sk, sv = q.stride(), k.stride(), v.stride()
        G, hg, wg, wh, ww = self.geo[:5]
        if self.E and self.kind != "head":  # (the per-head plan computes them in its program)
            _launch(fw.extra_kv_kernel, (self.nty_pool + (G > 0), self.BH), k, v, xk, xv, *sk, *sv,
                    H, G, hg, wg, wh, ww, self.ntw, self.nty_pool, self.P, self.E, **self.extra_c)
        qk_scale = scale * LOG2E
        _launch(fw.fwd_grid_kernel, self.fwd_grid, q, k, v, xk, xv, _or(rh, lse), _or(rw, lse), out, lse,
                *sq, *sk, *sv, *_rel_strides(rh, rw), H, N, self.E, self.P, *self.geo, self.ntw, self.nty_pool,
                self.qb, self.T, self.fwd_tpp, qk_scale, **self.fwd_c)
        if G:
            _launch(fw.fwd_global_kernel, (self.gb, self.BH), q, k, v, out, lse, *sq, *sk, *sv, H, N, G, qk_scale,
                    **self.glob_fwd_c)
        return out, lse, xkv

    # ------------------------------------------------------------------------- backward
    def backward(self, do, q, k, v, out, lse, xkv, rh, rw, scale, dq, dk, dv):
        H, N, D, E, P, G, BH = self.H, self.N, self.D, self.E, self.P, self.G, self.BH
        dev, f32 = q.device, torch.float32
        xk, xv = (xkv[0], xkv[1]) if E else (q, q)
        delta = _alloc.empty(BH, N, dtype=f32, device=dev) if self.prep else lse
        parts = _alloc.empty(2, BH, self.npart, E, D, dtype=f32, device=dev) if self.npart else None
        pk, pv = (parts[0], parts[1]) if parts is not None else (lse, lse)
        xg = _alloc.empty(2, BH, P, D, dtype=f32, device=dev) if P else None
        xgk, xgv = (xg[0], xg[1]) if xg is not None else (lse, lse)
        prh = _alloc.empty(BH, self.rel_slots, self.rh_pad, D, dtype=f32, device=dev) if rh is not None else None
        prw = _alloc.empty(BH, self.rel_slots, self.rw_pad, D, dtype=f32, device=dev) if rw is not None else None
        qk_scale = scale * LOG2E
        sq, sd, sgq, sgk, sgv = q.stride(), do.stride(), dq.stride(), dk.stride(), dv.stride()
        strides = (*sq, *k.stride(), *v.stride(), *sd)
        rs = _rel_strides(rh, rw)
        rel = (_or(rh, lse), _or(rw, lse))
        prel = (_or(prh, lse), _or(prw, lse))
        if self.kind == "head":
            _launch(bk.bwd_head_kernel, self.cell_grids[0], q, k, v, do, out, lse, delta, xk, xv, xgk, xgv, pk, pv,
                    *rel, *prel, dq, dk, dv, *strides, *sgq, *sgk, *sgv, *rs, H, N, E, P, self.npart, self.T,
                    *self.geo, self.ntw, qk_scale, scale, **self.head_c)
            if G:  # the global tokens' dq, and their keys' gradients: global-query slots, then the sums
                _launch(bk.bwd_global_kernel, (self.gb, BH), q, k, v, do, out, lse, dq, pk, pv, *strides, *sgq, H,
                        N, G, P, E, self.npart, self.npart_grid, qk_scale, scale, **self.glob_bwd_c)
                self._reduce(pk, pv, xgk, xgv, dk, dv, sgk, sgv, scale)
            return self._drel(prh, prw, rh, rw)
        if self.prep:
            _launch(bk.bwd_prep_kernel, (self.groups, BH), q, do, out, lse, delta, xk, xv, pk, pv, *sq, *sd, H, N,
                    E, self.npart, self.T, self.tpp, self.bqb, *self.geo, qk_scale, **self.prep_c)
        if G:
            _launch(bk.bwd_global_kernel, (self.gb, BH), q, k, v, do, out, lse, dq, pk, pv, *strides, *sgq, H, N,
                    G, P, E, self.npart, self.npart_grid, qk_scale, scale, **self.glob_bwd_c)
        if P:  # the pooled keys' gradients, before the cells spread them
            self._reduce(pk, pv, xgk, xgv, dk, dv, sgk, sgv, scale)
        if self.small:
            _launch(bk.bwd_tile_kernel, self.cell_grids[0], q, k, v, do, out, lse, delta, xk, xv, xgk, xgv, pk, pv,
                    *rel, *prel, dq, dk, dv, *strides, *sgq, *sgk, *sgv, *rs, H, N, E, P, self.npart, self.T,
                    1, *self.geo, self.ntw, qk_scale, scale, **self.tile_c)
        else:
            _launch(bk.bwd_kv_kernel, self.cell_grids[0], q, k, v, do, out, lse, delta, xgk, xgv, *rel, dk, dv,
                    *strides, *sgk, *sgv, *rs, H, N, P, self.bqb, *self.geo, self.ntw, qk_scale, scale, **self.kv_c)
            _launch(bk.bwd_q_kernel, self.cell_grids[1], q, k, v, do, lse, delta, xk, xv, pk, pv, *rel, *prel, dq,
                    *strides, *sgq, *rs, H, N, E, self.npart, self.bqb, *self.geo, qk_scale, scale, **self.q_c)
        if E and not P:  # the global keys' gradients (no spread needed)
            self._reduce(pk, pv, xgk, xgv, dk, dv, sgk, sgv, scale)
        return self._drel(prh, prw, rh, rw)

    @staticmethod
    def _drel(prh, prw, rh, rw):
        # d rel_pos: the launch's partial sums, added by torch in a fixed order (deterministic).
        drel = [None if pr is None else pr.sum((0, 1))[:r.shape[0]].to(r.dtype) for pr, r in ((prh, rh), (prw, rw))]
        return drel[0], drel[1]

    def _reduce(self, pk, pv, xgk, xgv, dk, dv, sgk, sgv, scale):
        _launch(bk.bwd_reduce_kernel, (self.reduce_blocks, self.BH), pk, pv, xgk, xgv, dk, dv, *sgk, *sgv, self.H,
                self.P, self.E, self.reduce_first, self.npart, self.npart_grid, scale, **self.reduce_c)


def _launch(kernel, grid, *args, **kwargs):
    """Every kernel launch of this backend goes through here, so that tests and benchmarks can
    stub the launches (host overhead) or capture them (compilation for sm_90a, cost model)."""
    kernel[grid](*args, **kwargs)


def _or(t, stand_in):
    # Kernel pointers never point at 0-element buffers (a null pointer may be refused at launch);
    # the stand-in is never read.
    return t if t is not None and t.numel() else stand_in


def _rel_strides(rh, rw):
    return (*(rh.stride() if rh is not None else (0, 0)), *(rw.stride() if rw is not None else (0, 0)))


@functools.lru_cache(maxsize=256)
def _plan(B, H, N, D, dtype, geom, pool, has_rh, has_rw, interpreting, forced, sms) -> Plan:
    return Plan(B, H, N, D, dtype, geom, pool, has_rh, has_rw, forced, sms)


@functools.lru_cache(maxsize=16)
def _sms(device) -> int:
    if device.type == "cuda" and not dispatch.interpreting():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SMS


def plan_of(B, H, N, D, dtype, geometry, pool, has_rel_h=False, has_rel_w=False) -> Plan:
    """The launch plan a call of these shapes gets on an H100/H200-sized GPU (e.g. which kind, for
    benchmarks/cost_model.py, which counts a reduced run with the full size's plan)."""
    return _plan(B, H, N, D, dtype, tuple(geometry), pool, has_rel_h, has_rel_w, dispatch.interpreting(),
                 _attention_ops.plan_forced(), DEFAULT_SMS)


def plan(q, geometry, pool, rel_pos_h, rel_pos_w) -> Plan:
    """The cached launch plan of a call (its key: shapes, dtype, geometry, flags, the forced plan
    kind if any, the device's SM count)."""
    B, H, N, D = q.shape
    return _plan(B, H, N, D, q.dtype, tuple(geometry), pool, rel_pos_h is not None, rel_pos_w is not None,
                 dispatch.interpreting(), _attention_ops.plan_forced(), _sms(q.device))


# ----------------------------------------------------------------------------- the op
def _forward(q, k, v, rel_pos_h, rel_pos_w, geometry, pool, scale):
    return plan(q, geometry, pool, rel_pos_h, rel_pos_w).forward(q, k, v, rel_pos_h, rel_pos_w, scale)


def _backward(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w, geometry, pool, scale, dq, dk, dv):
    return plan(q, geometry, pool, rel_pos_h, rel_pos_w).backward(dout, q, k, v, out, lse, extra_kv, rel_pos_h,
                                                                 rel_pos_w, scale, dq, dk, dv)


window_attention_op, window_attention_backward_op = _attention_ops.define_ops("triton", _forward, _backward)


_REASONS: dict = {}  # window_attention_reasons, per call metadata (eager calls)


def window_attention_reasons(q, k, v, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> list:
    """Why these kernels cannot serve the call: a function of the tensors' dtypes, device type,
    shapes and strides, the window and whether the interpreter is on; eager calls look it up."""
    if torch.compiler.is_compiling():  # (dynamo traces the checks themselves)
        return _reasons(q, k, v, rel_pos_h, rel_pos_w, spec)
    key = (q.dtype, q.device.type, dispatch.interpreting(), q.shape, q.stride(), k.shape, k.stride(), v.shape,
           v.stride(), None if rel_pos_h is None else rel_pos_h.dtype,
           None if rel_pos_w is None else rel_pos_w.dtype, spec.window)
    why = _REASONS.get(key)
    if why is None:
        why = _reasons(q, k, v, rel_pos_h, rel_pos_w, spec)
        if len(_REASONS) >= 512:
            _REASONS.clear()
        _REASONS[key] = why
    return list(why)


def _reasons(q, k, v, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> list:
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
    for name, t in (("q", q), ("k", k), ("v", v)):  # the kernels' in-head offsets are int32
        n, sn, sd = t.shape[2], t.stride(2), t.stride(3)
        extent = max((n - 1) * abs(sn) + (D - 1) * abs(sd), n * D)  # also bounds our (B, H, N, D) outputs
        if extent >= 2 ** 31:
            why.append(f"{name} spans {extent} elements within one head (shape {tuple(t.shape)}, strides "
                       f"{t.stride()}): the Triton kernels index a head with int32 offsets")
    for name, r, w in (("rel_pos_h", rel_pos_h, spec.window[0]), ("rel_pos_w", rel_pos_w, spec.window[1])):
        if r is not None and 2 * w - 1 > MAX_REL_ROWS:
            why.append(f"{name} has {2 * w - 1} rows > {MAX_REL_ROWS} (window side {w} > {(MAX_REL_ROWS + 1) // 2})")
    return why


window_attention = dispatch.register("window_attention", "triton", reasons=window_attention_reasons)(
    _attention_ops.entry(window_attention_op))


def dry_run(B, H, grid, window, shift, pool, num_global, rel_pos, D, dtype, plan_kind=None, device="cpu"):
    """Forward and backward of one call on zero tensors (q, k, v packed in one (B, N, 3, H, D)
    buffer, as the model passes them) straight through the launch plan (`plan_kind` forced when
    given), every kernel through _launch: with _launch replaced this compiles each launch for a GPU
    (tests/triton_compile.py), records it (benchmarks/host_overhead.py) or times the host side
    alone. -> the Plan."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    (hg, wg), (wh, ww) = grid, window or grid
    N = num_global + hg * wg
    qkv = torch.zeros(B, N, 3, H, D, dtype=dtype, device=device)
    q, k, v = _attention_ops.unpack(qkv)
    rh, rw = ((torch.zeros(2 * w - 1, D, dtype=dtype, device=device) for w in (wh, ww)) if rel_pos
              else (None, None))
    geom = [hg, wg, wh, ww, *shift, num_global]
    with _attention_ops.forced_plan(plan_kind):
        p = plan(q, geom, pool, rh, rw)
    out, lse, xkv = p.forward(q, k, v, rh, rw, D ** -0.5)
    dq, dk, dv = _attention_ops.unpack(torch.zeros_like(qkv))
    p.backward(torch.zeros_like(out), q, k, v, out, lse, xkv, rh, rw, D ** -0.5, dq, dk, dv)
    return p
