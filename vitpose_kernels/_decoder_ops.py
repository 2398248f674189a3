"""What the Triton and CUDA backends of simple_decoder share: the tap-weight layout and the
torch.library registration (forward op, backward op, fake and autograd registrations).

Both compute the conv at low resolution: bilinear upsampling and the conv's channel mixing are
linear and commute, so one GEMM of relu(x) with all k*k taps' weights (C -> k*k*K "tap maps" on
h x w) followed by a kernel that upsamples, shifts each tap by its offset and sums equals the
conv over the upsampled map, with 1/s^2 of the multiply-adds and no (B, C, s*h, s*w) tensor.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def tap_weights(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, k, k) -> (k*k*K, C): row t*K + o holds tap t = ty*k + tx of output channel o."""
    K, C, k, _ = weight.shape
    return weight.permute(2, 3, 0, 1).reshape(k * k * K, C)


def define_ops(backend: str, forward: Callable, backward: Callable):
    """Register ``vitpose_kernels::simple_decoder_<backend>`` and its ``_backward`` op.

    forward(x, weight, bias, scale_factor) -> out; backward(grad, x, weight, scale_factor) ->
    (dx, dweight, dbias). Only x and weight are saved for the backward.
    """

    @torch.library.custom_op(f"vitpose_kernels::simple_decoder_{backend}", mutates_args=())
    def op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           scale_factor: int) -> torch.Tensor:
        return forward(x, weight, bias, scale_factor)

    @op.register_fake
    def _(x, weight, bias, scale_factor):
        B, _, h, w = x.shape
        return x.new_empty(B, weight.shape[0], h * scale_factor, w * scale_factor)

    @torch.library.custom_op(f"vitpose_kernels::simple_decoder_{backend}_backward", mutates_args=())
    def backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    scale_factor: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return backward(grad, x, weight, scale_factor)

    @backward_op.register_fake
    def _(grad, x, weight, scale_factor):
        return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])

    def setup_context(ctx, inputs, output):
        x, weight, bias, scale_factor = inputs
        ctx.save_for_backward(x, weight)
        ctx.scale_factor = scale_factor
        ctx.has_bias = bias is not None

    def autograd_backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dx, dweight, dbias = backward_op(grad, x, weight, ctx.scale_factor)
        return dx, dweight, dbias if ctx.has_bias else None, None

    op.register_autograd(autograd_backward, setup_context=setup_context)
    return op, backward_op
