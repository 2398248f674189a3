"""CUDA backend of simple_decoder: ReLU + bilinear x s + k x k conv without the upsampled map.

Upsampling and the conv's channel mixing commute, so the conv is done at low resolution: one GEMM
(cuBLAS through PyTorch) contracts relu(x) with all k*k taps' weights (C -> k*k*K "tap maps" at
h x w), and the kernel in csrc/simple_decoder.cu upsamples the tap maps, shifts each by its tap
offset (zero padding at the high-resolution border) and sums them with the bias. For ViTPose-B
(C 768, K 17, x4, 3x3) that is 16x fewer multiply-adds than convolving the upsampled map, and the
(B, C, s*h, s*w) intermediate never exists. The backward runs the same path transposed: the kernel
folds grad_out back onto the tap maps (dtaps), then two GEMMs give dweight and dx, and the ReLU
mask is applied with threshold_backward.

relu(x) is laid out as (C, B*h*w) so that each GEMM is a single cuBLAS call over the whole batch
and the tap maps come out as (k*k*K, B, h, w), the layout the kernels index by strides.
"""
from __future__ import annotations

import torch

from .. import _alloc, dispatch
from .._head_ops import define_simple_decoder, tap_weights
from . import _launch


def _relu_cb(x: torch.Tensor) -> torch.Tensor:
    """relu(x) as a contiguous (C, B*h*w) matrix, in one pass."""
    B, C, h, w = x.shape
    z = torch.empty((C, B, h, w), dtype=x.dtype, device=x.device)
    torch.clamp_min(x.transpose(0, 1), 0, out=z)
    return z.view(C, B * h * w)


def _forward(x, weight, bias, scale_factor):
    B, C, h, w = x.shape
    K, _, k, _ = weight.shape
    taps = torch.mm(tap_weights(weight), _relu_cb(x))  # (k*k*K, B*h*w)
    out = _alloc.empty(B, K, h * scale_factor, w * scale_factor, dtype=x.dtype, device=x.device)
    # taps[t*K + o, b*h*w + i*w + j]: strides (batch, channel, row, column) in elements
    ts = [h * w, B * h * w, w, 1]
    with torch.cuda.device(x.device):
        _launch.ext().simple_decoder_forward(
            _launch.ptr(taps), ts, _launch.ptr(bias), _launch.ptr(out), B, K, h, w, k, scale_factor,
            _launch.dtype_code(x), _launch.stream(x))
    return out


def _backward(grad, x, weight, scale_factor):
    B, C, h, w = x.shape
    K, _, k, _ = weight.shape
    dtaps = _alloc.empty(k * k * K, B * h * w, dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _launch.ext().simple_decoder_backward(
            _launch.ptr(grad), _launch.strides(grad), _launch.ptr(dtaps), [B * h * w, h * w, w, 1], B, K, h, w,
            k, scale_factor, _launch.dtype_code(x), _launch.stream(x))
    wt = tap_weights(weight)
    dwt = torch.mm(dtaps, _relu_cb(x).t())  # (k*k*K, C)
    dweight = _alloc.empty_like(weight)
    dweight.copy_(dwt.view(k, k, K, C).permute(2, 3, 0, 1))
    dz = torch.mm(wt.t(), dtaps).view(C, B, h, w).transpose(0, 1)  # d relu(x), (B, C, h, w) view
    dx = _alloc.empty_like(x)
    torch.ops.aten.threshold_backward.grad_input(dz, x, 0, grad_input=dx)
    dbias = grad.sum(dim=(0, 2, 3), dtype=torch.float32).to(weight.dtype)
    return dx, dweight, dbias


simple_decoder_op, simple_decoder_backward_op = define_simple_decoder("cuda", _forward, _backward)


def reasons(x, weight, bias, scale_factor) -> list[str]:
    out = _launch.common_reasons(x, weight, bias)
    dtypes = {t.dtype for t in (x, weight, bias) if t is not None}
    if len(dtypes) > 1:
        out.append(f"x, weight and bias must share a dtype, got {sorted(str(d) for d in dtypes)}")
    return out


@dispatch.register("simple_decoder", "cuda", reasons=reasons)
def simple_decoder(x, weight, bias, scale_factor):
    return simple_decoder_op(x, weight, bias, scale_factor)
