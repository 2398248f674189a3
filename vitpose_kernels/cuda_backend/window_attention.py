"""CUDA backend of window_attention: csrc/window_attention.cu behind two torch.library custom ops.

The kernels (mma.sync tensor cores, FlashAttention-2 forward with a saved logsumexp, deterministic
backward) read q, k, v in place through their strides. Two small pieces stay in PyTorch, on
tensors much smaller than q, k, v, so that their gradients come from autograd:
  - the pooled keys/values (tile means, ``reference.pooled_tokens``): the kernels return the
    gradient w.r.t. the pooled rows and avg_pool2d's backward hands it to the tile members;
  - q . rel_pos_h^T and q . rel_pos_w^T per grid query ((2*wh-1) + (2*ww-1) floats a row): the
    kernels add them to the logits of same-cell pairs and return their gradient.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _alloc, _ext, dispatch
from .._validate import AttentionSpec
from ..reference.window_attention import pooled_tokens
from . import _launch

_FP32_HINT = "float32 inputs are served by the triton backend (this kernel uses fp16/bf16 tensor cores)"


def _operand(t: torch.Tensor | None) -> list[int]:
    """[data_ptr, stride_b, stride_h, stride_n] of a (B, H, rows, D) tensor (0 for size-1 dims)."""
    if t is None:
        return [0, 0, 0, 0]
    return [t.data_ptr()] + [s if n > 1 else 0 for n, s in zip(t.shape[:3], t.stride()[:3])]


def _readable(t: torch.Tensor | None) -> torch.Tensor | None:
    """t itself when the kernel can read it in place (head dim contiguous, 16-byte aligned rows),
    else a contiguous copy. A packed qkv view (B, N, 3, H, D) with D % 8 == 0 qualifies."""
    if t is None:
        return None
    ok = (t.stride(-1) == 1 or t.shape[-1] == 1) and t.data_ptr() % 16 == 0 and all(
        s % 8 == 0 for n, s in zip(t.shape[:3], t.stride()[:3]) if n > 1)
    return t if ok else t.clone(memory_format=torch.contiguous_format)


def _sizes(q, geometry, P, Rh, Rw) -> list[int]:
    B, H, N, D = q.shape
    G, hg, wg, wh, ww, sh, sw = geometry
    return [B, H, N, D, G, hg, wg, wh, ww, sh, sw, P, Rh, Rw]


def _rows(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.shape[-1]


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("vitpose_kernels::window_attention_cuda_fwd", mutates_args=(), device_types="cuda")
def window_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kp: Optional[torch.Tensor],
                         vp: Optional[torch.Tensor], qrh: Optional[torch.Tensor], qrw: Optional[torch.Tensor],
                         geometry: list[int], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (out (B, H, N, D) in q's dtype, lse (B, H, N) float32). geometry = [G, Hg, Wg, wh, ww, sh, sw];
    kp, vp: pooled (B, H, P, D) or None; qrh, qrw: (B, H, Hg*Wg, 2*w-1) float32 or None."""
    q, k, v, kp, vp = (_readable(t) for t in (q, k, v, kp, vp))
    qrh, qrw = (None if t is None else t.float().contiguous() for t in (qrh, qrw))
    B, H, N, D = q.shape
    out = _alloc.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    lse = _alloc.empty(B, H, N, dtype=torch.float32, device=q.device)
    P = 0 if kp is None else kp.shape[2]
    with torch.cuda.device(q.device):
        _launch.ext().window_attention_fwd(
            _operand(q), _operand(k), _operand(v), _operand(kp), _operand(vp), _launch.ptr(qrh),
            _launch.ptr(qrw), out.data_ptr(), lse.data_ptr(),
            _sizes(q, geometry, P, _rows(qrh), _rows(qrw)), float(scale), _launch.dtype_code(q),
            _launch.stream(q))
    return out, lse


@window_attention_fwd.register_fake
def _(q, k, v, kp, vp, qrh, qrw, geometry, scale):
    B, H, N, D = q.shape
    return q.new_empty(B, H, N, D), q.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("vitpose_kernels::window_attention_cuda_bwd", mutates_args=(), device_types="cuda")
def window_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         kp: Optional[torch.Tensor], vp: Optional[torch.Tensor], qrh: Optional[torch.Tensor],
                         qrw: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
                         geometry: list[int], scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor]:
    """-> (dq, dk, dv, dkp, dvp, dqrh, dqrw); the gradients of absent inputs are empty tensors."""
    dout, q, k, v, kp, vp = (_readable(t) for t in (dout, q, k, v, kp, vp))
    qrh, qrw = (None if t is None else t.float().contiguous() for t in (qrh, qrw))
    out, lse = out.contiguous(), lse.contiguous()
    B, H, N, D = q.shape
    dev = q.device
    dq, dk, dv = (_alloc.empty(B, H, N, D, dtype=q.dtype, device=dev) for _ in range(3))
    P = 0 if kp is None else kp.shape[2]
    if P:
        dkp, dvp = (_alloc.empty(B, H, P, D, dtype=q.dtype, device=dev) for _ in range(2))
    else:
        dkp, dvp = q.new_empty(0), q.new_empty(0)
    dqrh, dqrw = (_alloc.empty(*t.shape, dtype=torch.float32, device=dev) if t is not None
                  else q.new_empty(0, dtype=torch.float32) for t in (qrh, qrw))
    delta = torch.empty(B, H, N, dtype=torch.float32, device=dev)  # workspace
    with torch.cuda.device(dev):
        _launch.ext().window_attention_bwd(
            _operand(q), _operand(k), _operand(v), _operand(kp), _operand(vp), _operand(dout),
            _launch.ptr(qrh), _launch.ptr(qrw), out.data_ptr(), lse.data_ptr(), delta.data_ptr(),
            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), dkp.data_ptr() if P else 0,
            dvp.data_ptr() if P else 0, dqrh.data_ptr() if qrh is not None else 0,
            dqrw.data_ptr() if qrw is not None else 0,
            _sizes(q, geometry, P, _rows(qrh), _rows(qrw)), float(scale), _launch.dtype_code(q),
            _launch.stream(q))
    return dq, dk, dv, dkp, dvp, dqrh, dqrw


@window_attention_bwd.register_fake
def _(dout, q, k, v, kp, vp, qrh, qrw, out, lse, geometry, scale):
    B, H, N, D = q.shape
    like = (lambda t, **kw: q.new_empty(t.shape, **kw) if t is not None else q.new_empty(0, **kw))
    return (q.new_empty(B, H, N, D), q.new_empty(B, H, N, D), q.new_empty(B, H, N, D), like(kp), like(vp),
            like(qrh, dtype=torch.float32), like(qrw, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    q, k, v, kp, vp, qrh, qrw, geometry, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, kp, vp, qrh, qrw, out, lse)
    ctx.geometry, ctx.scale = list(geometry), float(scale)


def _backward(ctx, dout, _dlse):
    q, k, v, kp, vp, qrh, qrw, out, lse = ctx.saved_tensors
    dq, dk, dv, dkp, dvp, dqrh, dqrw = window_attention_bwd(dout, q, k, v, kp, vp, qrh, qrw, out, lse,
                                                            ctx.geometry, ctx.scale)
    present = lambda g, t: g if t is not None else None  # noqa: E731
    return (dq, dk, dv, present(dkp, kp), present(dvp, vp), present(dqrh, qrh), present(dqrw, qrw),
            None, None)


window_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _QDotRel(torch.autograd.Function):
    """q . rel^T in float32 for the grid queries, (B, H, Hg*Wg, R). Saves only the (low-precision)
    q view and rel, not a float32 copy of q."""

    @staticmethod
    def forward(ctx, qg, rel):
        ctx.save_for_backward(qg, rel)
        return torch.matmul(qg.float(), rel.float().t())

    @staticmethod
    def backward(ctx, g):
        qg, rel = ctx.saved_tensors
        dq = torch.matmul(g, rel.float()).to(qg.dtype) if ctx.needs_input_grad[0] else None
        drel = None
        if ctx.needs_input_grad[1]:
            drel = torch.matmul(g.reshape(-1, g.shape[-1]).t(), qg.reshape(-1, qg.shape[-1]).float()).to(rel.dtype)
        return dq, drel


# ----------------------------------------------------------------------------- backend entry
def _reasons(q, k, v, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> list[str]:
    out = []
    mod, why = _ext.load()
    if mod is None:
        out.append(why)
    elif not hasattr(mod, "window_attention_fwd"):
        out.append("vitpose_kernels._C was built without the window_attention kernels; rebuild it (pip install .)")
    out += _launch.common_reasons(q, k, v, fp32_ok=False)
    if q.dtype == torch.float32:
        out.append(_FP32_HINT)
    D = q.shape[-1]
    if D % 8 or D > 128:
        out.append(f"head dim q.shape[-1]={D} not supported (multiples of 8 up to 128; tuned: 32, 64, 80, 96, 128)")
    if max(spec.grid) >= 32768:
        out.append(f"grid={spec.grid} too large (sides < 32768)")
    if q.shape[0] > 65535 or q.shape[1] > 65535:
        out.append(f"q.shape={tuple(q.shape)}: batch and heads must each be <= 65535")
    return out


@dispatch.register("window_attention", "cuda", reasons=_reasons)
def window_attention(q, k, v, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> torch.Tensor:
    G = spec.num_global
    kp = vp = qrh = qrw = None
    if spec.pool:
        kp, vp = pooled_tokens(k[:, :, G:], spec), pooled_tokens(v[:, :, G:], spec)
    if rel_pos_h is not None:
        qrh = _QDotRel.apply(q[:, :, G:], rel_pos_h)
    if rel_pos_w is not None:
        qrw = _QDotRel.apply(q[:, :, G:], rel_pos_w)
    geometry = [G, *spec.grid, *spec.window, *spec.shift]
    out, _ = window_attention_fwd(q, k, v, kp, vp, qrh, qrw, geometry, spec.scale)
    return out
