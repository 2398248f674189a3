"""The one op schema of window_attention, shared by every kernel backend (Triton, CUDA).

This module owns, once for all backends (as ``_decoder_ops`` does for simple_decoder):
  - the torch.library schema of the forward and backward ops, their fake implementations and the
    autograd formula that joins them;
  - the geometry argument order, ``[Hg, Wg, wh, ww, sh, sw, num_global]`` (``geometry(spec)``);
  - what the forward saves and in which units: q, k, v (or the packed qkv), out, the logsumexp per
    row in *natural-log* units, and ``extra_kv``, the keys/values every grid query sees besides its
    cell (P pooled tile means, then copies of the G global tokens; small);
  - where the pooled keys and the relative-position projection live: both inside the op. The
    backend's forward computes the pooled means (saved, never recomputed) and q . rel_pos; its
    backward returns dq, dk, dv with the pooled keys' and rel_pos' contributions already in them,
    plus d rel_pos. Nothing of the op runs in torch autograd outside it;
  - packed qkv: with ``k = v = None`` the first input is one (B, N, 3, H, D) tensor and the
    backward returns one (B, N, 3, H, D) gradient, written in place by the kernels (no stack).

A backend supplies two functions and nothing else:

  forward(q, k, v, rel_pos_h, rel_pos_w, geometry, pool, scale) -> (out, lse, extra_kv)
      q, k, v: (B, H, N, D), any strides (views of a packed qkv when the caller packed them).
  backward(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w, geometry, pool, scale,
           dq, dk, dv) -> (drel_pos_h or None, drel_pos_w or None)
      dq, dk, dv: (B, H, N, D) buffers to fill (strided views of one (B, N, 3, H, D) gradient when
      packed); every element must be written.
"""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from . import _alloc

GEOMETRY = ("Hg", "Wg", "wh", "ww", "sh", "sw", "num_global")

# Launch plans a backend may choose between per shape (the Triton one does): "split" spreads a
# head's tiles over several programs (fills the GPU at any batch), "head" gives one program a
# whole (batch, head) (with pooled keys: no second HBM pass, no cross-program reduction).
PLANS = ("split", "head")
_forced_plan: list = [None]


@contextlib.contextmanager
def forced_plan(kind: Optional[str]):
    """Calls inside use launch plan `kind` ("split" or "head"; None: the backend's own choice),
    e.g. to test both plans at small shapes or to count a reduced run with the full size's plan. A
    backend raises ValueError when the forced plan cannot serve a call."""
    if kind is not None and kind not in PLANS:
        raise ValueError(f"forced_plan(kind={kind!r}): expected one of {PLANS} or None")
    before = _forced_plan[0]
    _forced_plan[0] = kind
    try:
        yield
    finally:
        _forced_plan[0] = before


def plan_forced() -> Optional[str]:
    return _forced_plan[0]


def geometry(spec) -> list[int]:
    """The op's geometry argument for a validated AttentionSpec, in the one agreed order."""
    return [*spec.grid, *spec.window, *spec.shift, spec.num_global]


def num_pooled(geom, pool: bool) -> int:
    hg, wg, wh, ww = geom[:4]
    return -(-hg // wh) * -(-wg // ww) if pool else 0


def num_extra(geom, pool: bool) -> int:
    """Rows of extra_kv: the pooled tile means, then the global tokens."""
    return num_pooled(geom, pool) + geom[6]


def unpack(qkv: torch.Tensor):
    """(B, N, 3, H, D) -> q, k, v as (B, H, N, D) views (no copy)."""
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def _views(q, k, v):
    return unpack(q) if k is None else (q, k, v)


def define_ops(backend: str, forward: Callable, backward: Callable, device_types=None):
    """Register ``vitpose_kernels::window_attention_<backend>`` and its ``_backward`` op with the
    shared schema, fakes and autograd formula; the backend's kernels are `forward`/`backward`."""

    @torch.library.custom_op(f"vitpose_kernels::window_attention_{backend}", mutates_args=(),
                             device_types=device_types)
    def op(q: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
           rel_pos_h: Optional[torch.Tensor], rel_pos_w: Optional[torch.Tensor], geometry: List[int],
           pool: bool, scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(out (B, H, N, D), lse (B, H, N) float32 natural log, extra_kv (2, B, H, P + G, D)).
        k = v = None: q is a packed (B, N, 3, H, D) qkv."""
        q, k, v = _views(q, k, v)
        return forward(q, k, v, rel_pos_h, rel_pos_w, geometry, pool, scale)

    @op.register_fake
    def _(q, k, v, rel_pos_h, rel_pos_w, geometry, pool, scale):
        q, _, _ = _views(q, k, v)
        B, H, N, D = q.shape
        return (q.new_empty(B, H, N, D), q.new_empty(B, H, N, dtype=torch.float32),
                q.new_empty(2, B, H, num_extra(geometry, pool), D))

    def gradients(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w, geometry, pool, scale, views=None):
        """(dq or the packed dqkv, dk or None, dv or None, drel_pos_h or None, drel_pos_w or None)."""
        packed = k is None
        if packed:
            dqkv = _alloc.empty(*q.shape, dtype=q.dtype, device=q.device)
            grads = unpack(dqkv)
        else:
            grads = [_alloc.empty(*t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v)]
        qv, kv, vv = views or _views(q, k, v)
        drh, drw = backward(dout, qv, kv, vv, out, lse, extra_kv, rel_pos_h, rel_pos_w, geometry, pool,
                            scale, *grads)
        if packed:
            return dqkv, None, None, drh, drw
        return grads[0], grads[1], grads[2], drh, drw

    def run_backward(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w, geometry, pool, scale):
        # The schema's outputs are tensors: 0-element ones stand for the absent gradients.
        grads = gradients(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w, geometry, pool, scale)
        return tuple(g if g is not None else q.new_empty(0) for g in grads)

    @torch.library.custom_op(f"vitpose_kernels::window_attention_{backend}_backward", mutates_args=(),
                             device_types=device_types)
    def backward_op(dout: torch.Tensor, q: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
                    out: torch.Tensor, lse: torch.Tensor, extra_kv: torch.Tensor,
                    rel_pos_h: Optional[torch.Tensor], rel_pos_w: Optional[torch.Tensor], geometry: List[int],
                    pool: bool, scale: float
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dq, dk, dv, drel_pos_h, drel_pos_w); packed: (dqkv (B, N, 3, H, D), empty, empty, ...).
        An absent rel_pos gets a 0-element gradient."""
        return run_backward(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w, geometry, pool, scale)

    @backward_op.register_fake
    def _(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w, geometry, pool, scale):
        rel = [r.new_empty(r.shape) if r is not None else q.new_empty(0) for r in (rel_pos_h, rel_pos_w)]
        if k is None:
            return q.new_empty(q.shape), q.new_empty(0), q.new_empty(0), rel[0], rel[1]
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), rel[0], rel[1]

    # The autograd formula, once: what is saved, and the gradients from it.
    def setup_context(ctx, inputs, output):
        q, k, v, rel_pos_h, rel_pos_w, geom, pool, scale = inputs
        out, lse, extra_kv = output
        ctx.mark_non_differentiable(lse, extra_kv)
        ctx.save_for_backward(q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w)
        ctx.geometry, ctx.pool, ctx.scale = list(geom), bool(pool), float(scale)

    def input_grads(ctx, dout, backward_fn):
        q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w = ctx.saved_tensors
        dq, dk, dv, drh, drw = backward_fn(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w,
                                           ctx.geometry, ctx.pool, ctx.scale)
        packed = k is None
        return (dq, None if packed else dk, None if packed else dv,
                drh if rel_pos_h is not None else None, drw if rel_pos_w is not None else None,
                None, None, None)

    op.register_autograd(lambda ctx, dout, _dlse, _dextra: input_grads(ctx, dout, backward_op),
                         setup_context=setup_context)

    class Eager(torch.autograd.Function):
        """The same forward, formula and backward without the dispatcher round trips of a custom
        op (tens of microseconds a call): what eager calls use; torch.compile sees `op`."""

        @staticmethod
        def forward(ctx, q, k, v, rel_pos_h, rel_pos_w, geom, pool, scale):
            views = _views(q, k, v)  # made here, without autograd: kept for the backward
            output = forward(*views, rel_pos_h, rel_pos_w, geom, pool, scale)
            ctx.set_materialize_grads(False)  # no zero tensors for the lse / extra_kv gradients
            setup_context(ctx, (q, k, v, rel_pos_h, rel_pos_w, geom, pool, scale), output)
            ctx.views = views
            return output

        @staticmethod
        def backward(ctx, dout, _dlse, _dextra):
            q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w = ctx.saved_tensors
            dq, dk, dv, drh, drw = gradients(dout, q, k, v, out, lse, extra_kv, rel_pos_h, rel_pos_w, ctx.geometry,
                                             ctx.pool, ctx.scale, ctx.views)
            return dq, dk, dv, drh, drw, None, None, None

    op.eager = Eager
    op.forward_only = lambda q, k, v, *rest: forward(*_views(q, k, v), *rest)
    return op, backward_op


def entry(op) -> Callable:
    """The dispatch entry of a backend whose kernels are `op`: fn(q, k, v, rel_pos_h, rel_pos_w,
    spec) -> out, with ``fn.qkvpacked(qkv, rel_pos_h, rel_pos_w, spec)`` for packed inputs.
    Eager calls go through op.eager, traced ones (torch.compile) through the custom op."""

    def call(q, k, v, rel_pos_h, rel_pos_w, spec):
        # Plain tensors in plain eager mode take the fast path; anything traced, fake, meta or
        # under a dispatch mode (torch.compile, FakeTensorMode, memory tracers) sees the op.
        fast = (type(q) is torch.Tensor and q.device.type != "meta" and not torch.compiler.is_compiling()
                and _current_dispatch_mode() is None)
        if not fast:
            return op(q, k, v, rel_pos_h, rel_pos_w, geometry(spec), spec.pool, spec.scale)[0]
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, rel_pos_h, rel_pos_w)):
            return op.eager.apply(q, k, v, rel_pos_h, rel_pos_w, geometry(spec), spec.pool, spec.scale)[0]
        # Nothing to differentiate (inference): the kernels alone, no autograd node.
        return op.forward_only(q, k, v, rel_pos_h, rel_pos_w, geometry(spec), spec.pool, spec.scale)[0]

    def window_attention(q, k, v, rel_pos_h, rel_pos_w, spec) -> torch.Tensor:
        return call(q, k, v, rel_pos_h, rel_pos_w, spec)

    def qkvpacked(qkv, rel_pos_h, rel_pos_w, spec) -> torch.Tensor:
        return call(qkv, None, None, rel_pos_h, rel_pos_w, spec)

    window_attention.qkvpacked = qkvpacked
    return window_attention
