"""CUDA backend of masked_attention: csrc/masked_attention.cu behind the op schema shared with
Triton (vitpose_kernels/_masked_attention_ops.py).

The kernels (mma.sync tensor cores, FlashAttention-2 forward with a saved logsumexp, deterministic
backward, masked key tiles skipped) read q, k, v and the bit-packed mask in place through their
strides. Two things the launcher does first: a view whose rows are not 16-byte aligned is copied,
and a head dim that is not a multiple of 8 is zero-padded to one (zero columns change no logit),
the results sliced back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _alloc, _ext, dispatch
from .._masked_attention_ops import define_ops
from . import _launch

MAX_HEAD_DIM = 320  # TAR-ViTPose-H: 1280 channels in 4 heads
MAX_LEN = 1 << 17  # queries or keys: a CTA keeps its rows' mask bits per key tile in shared memory
_FP32_HINT = "float32 inputs are served by the triton backend (this kernel uses fp16/bf16 tensor cores)"


def _operand(t: torch.Tensor) -> list[int]:
    """[data_ptr, stride_b, stride_h, stride_n] of a (B, H, rows, D) tensor (0 for size-1 dims)."""
    return [t.data_ptr()] + [s if n > 1 else 0 for n, s in zip(t.shape[:3], t.stride()[:3])]


def _readable(t: torch.Tensor) -> torch.Tensor:
    """t itself when the kernel can read it in place (head dim contiguous, 16-byte aligned rows,
    head dim a multiple of 8), else a contiguous, zero-padded copy."""
    D = t.shape[-1]
    if D % 8:
        return F.pad(t, (0, -D % 8))
    ok = (t.stride(-1) == 1 or D == 1) and t.data_ptr() % 16 == 0 and all(
        s % 8 == 0 for n, s in zip(t.shape[:3], t.stride()[:3]) if n > 1)
    return t if ok else t.clone(memory_format=torch.contiguous_format)


def _mask(key_mask: torch.Tensor | None) -> list[int]:
    """[data_ptr, stride_b, stride_h, stride_q] of the canonical int32 mask, in words; 0 = none."""
    if key_mask is None:
        return [0, 0, 0, 0]
    return [key_mask.data_ptr()] + [s if n > 1 else 0 for n, s in zip(key_mask.shape[:3], key_mask.stride()[:3])]


def _sizes(q, k) -> list[int]:
    B, H, Lq, D = q.shape
    return [B, H, Lq, k.shape[2], D]


def _forward(q, k, v, key_mask, scale):
    D = q.shape[-1]
    q, k, v = (_readable(t) for t in (q, k, v))
    B, H, Lq, Dp = q.shape
    out = _alloc.empty(B, H, Lq, Dp, dtype=q.dtype, device=q.device)
    lse = _alloc.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    with torch.cuda.device(q.device):
        _launch.ext().masked_attention_fwd(
            _operand(q), _operand(k), _operand(v), _mask(key_mask), out.data_ptr(), lse.data_ptr(),
            _sizes(q, k), float(scale), _launch.dtype_code(q), _launch.stream(q))
    return (out if Dp == D else out[..., :D].contiguous()), lse


def _backward(dout, q, k, v, key_mask, out, lse, scale):
    D = q.shape[-1]
    dout, q, k, v, out = (_readable(t) for t in (dout, q, k, v, out))
    out, lse = out.contiguous(), lse.contiguous()
    B, H, Lq, Dp = q.shape
    Lk = k.shape[2]
    dev = q.device
    dq = _alloc.empty(B, H, Lq, Dp, dtype=q.dtype, device=dev)
    dk, dv = (_alloc.empty(B, H, Lk, Dp, dtype=q.dtype, device=dev) for _ in range(2))
    delta = torch.empty(B, H, Lq, dtype=torch.float32, device=dev)  # workspace
    with torch.cuda.device(dev):
        _launch.ext().masked_attention_bwd(
            _operand(q), _operand(k), _operand(v), _mask(key_mask), _operand(dout), out.data_ptr(),
            lse.data_ptr(), delta.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), _sizes(q, k),
            float(scale), _launch.dtype_code(q), _launch.stream(q))
    if Dp != D:
        dq, dk, dv = (t[..., :D].contiguous() for t in (dq, dk, dv))
    return dq, dk, dv


masked_attention_op, masked_attention_backward_op = define_ops("vitpose_kernels::masked_attention_cuda", _forward,
                                                               _backward)


def _reasons(q, k, v, key_mask, scale) -> list[str]:
    out = []
    mod, why = _ext.load()
    if mod is None:
        out.append(why)
    elif not hasattr(mod, "masked_attention_fwd"):
        out.append("vitpose_kernels._C was built without the masked_attention kernels; rebuild it (pip install .)")
    out += _launch.common_reasons(q, k, v, fp32_ok=False)
    if q.dtype == torch.float32:
        out.append(_FP32_HINT)
    D = q.shape[-1]
    if D > MAX_HEAD_DIM:
        out.append(f"head dim q.shape[-1]={D} > {MAX_HEAD_DIM} (compiled tiles: 32, 64, 96, 128, 192, 256, 320)")
    if max(q.shape[2], k.shape[2]) > MAX_LEN:
        out.append(f"Lq={q.shape[2]}, Lk={k.shape[2]}: each must be <= {MAX_LEN}")
    if q.shape[0] > 65535 or q.shape[1] > 65535:
        out.append(f"q.shape={tuple(q.shape)}: batch and heads must each be <= 65535")
    return out


@dispatch.register("masked_attention", "cuda", reasons=_reasons)
def masked_attention(q, k, v, key_mask, scale) -> torch.Tensor:
    out, _ = masked_attention_op(q, k, v, key_mask, scale)
    return out
