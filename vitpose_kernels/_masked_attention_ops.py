"""What the Triton and CUDA backends of masked_attention share: one torch.library schema, its fake
(meta) functions and its autograd formula. A backend supplies only its two kernels:

    forward(q, k, v, key_mask, scale) -> (out (B, H, Lq, D) contiguous in q's dtype,
                                          lse (B, H, Lq) float32)
    backward(dout, q, k, v, key_mask, out, lse, scale) -> (dq, dk, dv), each like its input

key_mask is None or the canonical bit-packed mask (int32 (B|1, H|1, Lq|1, ceil(Lk/32)), last dim
contiguous; vitpose_kernels/reference/masked_attention.py). lse is the natural-log logsumexp of
each row's scaled, masked logits, +inf for a row without keys (exp(s - lse) is then 0, so that row
contributes nothing to any gradient). Only q, k, v, the mask, out and lse are saved for backward.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def define_ops(backend: str, forward: Callable, backward: Callable):
    """Register ``vitpose_kernels::masked_attention_<backend>`` and its ``_backward`` op."""

    @torch.library.custom_op(f"vitpose_kernels::masked_attention_{backend}", mutates_args=())
    def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor],
           scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return forward(q, k, v, key_mask, scale)

    @op.register_fake
    def _(q, k, v, key_mask, scale):
        B, H, Lq, D = q.shape
        return q.new_empty(B, H, Lq, D), q.new_empty(B, H, Lq, dtype=torch.float32)

    @torch.library.custom_op(f"vitpose_kernels::masked_attention_{backend}_backward", mutates_args=())
    def backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    key_mask: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return backward(dout, q, k, v, key_mask, out, lse, scale)

    @backward_op.register_fake
    def _(dout, q, k, v, key_mask, out, lse, scale):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx, inputs, output):
        q, k, v, key_mask, scale = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, key_mask, out, lse)
        ctx.scale = scale

    def autograd_backward(ctx, dout, _dlse):
        q, k, v, key_mask, out, lse = ctx.saved_tensors
        dq, dk, dv = backward_op(dout, q, k, v, key_mask, out, lse, ctx.scale)
        return dq, dk, dv, None, None

    op.register_autograd(autograd_backward, setup_context=setup_context)
    return op, backward_op
