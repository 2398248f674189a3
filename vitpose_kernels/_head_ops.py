"""The heads' ops (simple_decoder, decode_heatmaps, udp_targets): each has one torch.library
schema, one fake (meta) implementation and, where it is differentiable, one autograd formula,
written here once. The Triton and CUDA backends pass only their kernels: ``define_*(backend,
kernel)`` registers ``vitpose_kernels::<op>_<backend>`` with exactly this signature, so the two
backends of an op can never disagree on argument order, units or what is saved for backward.

Also here: what both simple_decoder backends share, the tap-weight layout. Both compute the conv
at low resolution: bilinear upsampling and the conv's channel mixing are linear and commute, so
one GEMM of relu(x) with all k*k taps' weights (C -> k*k*K "tap maps" on h x w) followed by a
kernel that upsamples, shifts each tap by its offset and sums equals the conv over the upsampled
map, with 1/s^2 of the multiply-adds and no (B, C, s*h, s*w) tensor.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def tap_weights(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, k, k) -> (k*k*K, C): row t*K + o holds tap t = ty*k + tx of output channel o."""
    K, C, k, _ = weight.shape
    return weight.permute(2, 3, 0, 1).reshape(k * k * K, C)


# ----------------------------------------------------------------------------- simple_decoder
def define_simple_decoder(backend: str, forward: Callable, backward: Callable):
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


# ----------------------------------------------------------------------------- decode_heatmaps
def define_decode_heatmaps(backend: str, kernel: Callable):
    """Register ``vitpose_kernels::decode_heatmaps_<backend>``: the front door's validated
    arguments in its order (input_size = (W, H) of the crop, method "udp" | "argmax") ->
    (keypoints (B, K, 2) float32, scores (B, K) float32). Not differentiable (argmax)."""

    @torch.library.custom_op(f"vitpose_kernels::decode_heatmaps_{backend}", mutates_args=())
    def op(heatmaps: torch.Tensor, flip_heatmaps: Optional[torch.Tensor], flip_indices: Optional[torch.Tensor],
           input_size: list[int], bbox_centers: Optional[torch.Tensor], bbox_scales: Optional[torch.Tensor],
           method: str, blur_kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return kernel(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
                      blur_kernel_size)

    @op.register_fake
    def _(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method, blur_kernel_size):
        B, K = heatmaps.shape[:2]
        return (heatmaps.new_empty(B, K, 2, dtype=torch.float32), heatmaps.new_empty(B, K, dtype=torch.float32))

    return op


# ----------------------------------------------------------------------------- udp_targets
def define_udp_targets(backend: str, kernel: Callable):
    """Register ``vitpose_kernels::udp_targets_<backend>``: (keypoints (B, K, 2), visible (B, K),
    heatmap_size (W, H), input_size (W, H), sigma) -> (heatmaps (B, K, H, W) float32, weights
    (B, K) float32). Not differentiable (training targets)."""

    @torch.library.custom_op(f"vitpose_kernels::udp_targets_{backend}", mutates_args=())
    def op(keypoints: torch.Tensor, visible: torch.Tensor, heatmap_size: list[int], input_size: list[int],
           sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        return kernel(keypoints, visible, heatmap_size, input_size, sigma)

    @op.register_fake
    def _(keypoints, visible, heatmap_size, input_size, sigma):
        B, K, _ = keypoints.shape
        W, H = heatmap_size
        return (keypoints.new_empty(B, K, H, W, dtype=torch.float32),
                keypoints.new_empty(B, K, dtype=torch.float32))

    return op
