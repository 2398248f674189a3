"""CUDA backend of window_attention: csrc/window_attention.cu behind the op schema shared with the
Triton backend (vitpose_kernels._attention_ops: forward saves out, the natural-log logsumexp and
extra_kv; backward returns dq, dk, dv with the pooled keys' and rel-pos contributions in them).

The kernels (mma.sync tensor cores, FlashAttention-2 forward with a saved logsumexp, deterministic
backward) read q, k, v in place through their strides. Inside the op, this host side does on
tensors much smaller than q, k, v what the kernels do not (yet: issue 13 item 6 ports the
Triton v2 design, vitpose_kernels/triton_backend/window_attention, to csrc/):
  - the pooled keys/values (tile means, ``reference.pooled_tokens``) for extra_kv, and in the
    backward the spread of their gradients (the mean's backward) into dk, dv;
  - q . rel_pos_h^T and q . rel_pos_w^T per grid query (recomputed in the backward), and from
    the kernels' gradients of those products dq's relative-position term and d rel_pos.
With packed qkv the kernels write contiguous dq, dk, dv that are copied into the packed gradient
(the Triton kernels write it in place).
"""
from __future__ import annotations

import functools

import torch

from .. import _alloc, _attention_ops, _ext, dispatch
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
    """The binding's sizes: [B, H, N, D] + the op's geometry [Hg, Wg, wh, ww, sh, sw, G] + [P, Rh, Rw]."""
    return [*q.shape, *geometry, P, Rh, Rw]


def _rows(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.shape[-1]


@functools.lru_cache(maxsize=64)
def _spec(geometry: tuple) -> AttentionSpec:
    hg, wg, wh, ww, sh, sw, G = geometry
    return AttentionSpec((hg, wg), (wh, ww), (sh, sw), True, G, 1.0, False)


@functools.lru_cache(maxsize=64)
def _tile_of_token(geometry: tuple, device: torch.device):
    """Per grid token, its tile of the unshifted tiling and 1 / that tile's size: the pooled
    mean's backward as a gather."""
    hg, wg, wh, ww = geometry[:4]
    y, x = torch.arange(hg).repeat_interleave(wg), torch.arange(wg).repeat(hg)
    ty, tx = y // wh, x // ww
    size = (torch.clamp(hg - ty * wh, max=wh) * torch.clamp(wg - tx * ww, max=ww)).float()
    return (ty * -(-wg // ww) + tx).to(device), (1.0 / size).to(device)


def _q_dot_rel(q_grid: torch.Tensor, rel: torch.Tensor | None) -> torch.Tensor | None:
    """q . rel^T in float32 for the grid queries: (B, H, Hg*Wg, 2*w - 1)."""
    # rel rounded to q's dtype first, as the spec (and the Triton kernels) do.
    return None if rel is None else torch.matmul(q_grid.float(), rel.to(q_grid.dtype).float().t()).contiguous()


# ----------------------------------------------------------------------------- the op's kernels
def _forward(q, k, v, rel_pos_h, rel_pos_w, geometry, pool, scale):
    geometry = tuple(geometry)
    G = geometry[6]
    B, H, N, D = q.shape
    P = _attention_ops.num_pooled(geometry, pool)
    extra = _alloc.empty(2, B, H, P + G, D, dtype=q.dtype, device=q.device)
    if P:
        for i, t in enumerate((k, v)):
            extra[i, :, :, :P] = pooled_tokens(t[:, :, G:], _spec(geometry))
    if G:
        extra[0, :, :, P:], extra[1, :, :, P:] = k[:, :, :G], v[:, :, :G]
    kp, vp = (extra[0, :, :, :P], extra[1, :, :, :P]) if P else (None, None)
    q, k, v = (_readable(t) for t in (q, k, v))
    qrh, qrw = _q_dot_rel(q[:, :, G:], rel_pos_h), _q_dot_rel(q[:, :, G:], rel_pos_w)
    out = _alloc.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    lse = _alloc.empty(B, H, N, dtype=torch.float32, device=q.device)
    with torch.cuda.device(q.device):
        _launch.ext().window_attention_fwd(
            _operand(q), _operand(k), _operand(v), _operand(kp), _operand(vp), _launch.ptr(qrh),
            _launch.ptr(qrw), out.data_ptr(), lse.data_ptr(), _sizes(q, geometry, P, _rows(qrh), _rows(qrw)),
            float(scale), _launch.dtype_code(q), _launch.stream(q))
    return out, lse, extra


def _backward(dout, q, k, v, out, lse, extra, rel_pos_h, rel_pos_w, geometry, pool, scale, dq, dk, dv):
    geometry = tuple(geometry)
    G = geometry[6]
    B, H, N, D = q.shape
    dev = q.device
    P = _attention_ops.num_pooled(geometry, pool)
    kp, vp = (extra[0, :, :, :P], extra[1, :, :, :P]) if P else (None, None)
    dout, q, k, v = (_readable(t) for t in (dout, q, k, v))
    out, lse = out.contiguous(), lse.contiguous()
    qrh, qrw = _q_dot_rel(q[:, :, G:], rel_pos_h), _q_dot_rel(q[:, :, G:], rel_pos_w)
    # The kernels write contiguous (B, H, N, D) gradients: the caller's buffers when they are.
    grads = [g if g.is_contiguous() else _alloc.empty(B, H, N, D, dtype=q.dtype, device=dev) for g in (dq, dk, dv)]
    dkp, dvp = ((_alloc.empty(B, H, P, D, dtype=q.dtype, device=dev) for _ in range(2)) if P
                else (q.new_empty(0), q.new_empty(0)))
    dqrh, dqrw = (_alloc.empty(*t.shape, dtype=torch.float32, device=dev) if t is not None
                  else q.new_empty(0, dtype=torch.float32) for t in (qrh, qrw))
    delta = torch.empty(B, H, N, dtype=torch.float32, device=dev)  # workspace
    with torch.cuda.device(dev):
        _launch.ext().window_attention_bwd(
            _operand(q), _operand(k), _operand(v), _operand(kp), _operand(vp), _operand(dout),
            _launch.ptr(qrh), _launch.ptr(qrw), out.data_ptr(), lse.data_ptr(), delta.data_ptr(),
            grads[0].data_ptr(), grads[1].data_ptr(), grads[2].data_ptr(), dkp.data_ptr() if P else 0,
            dvp.data_ptr() if P else 0, dqrh.data_ptr() if qrh is not None else 0,
            dqrw.data_ptr() if qrw is not None else 0,
            _sizes(q, geometry, P, _rows(qrh), _rows(qrw)), float(scale), _launch.dtype_code(q),
            _launch.stream(q))
    gq, gk, gv = (g[:, :, G:] for g in grads)
    rel = [(d, r) for d, r in ((dqrh, rel_pos_h), (dqrw, rel_pos_w)) if r is not None]
    if rel:  # dq's rel-pos term (fp32, one rounding) and d rel_pos
        gq.copy_(gq.float() + sum(torch.matmul(d, r.to(q.dtype).float()) for d, r in rel))
        qg = q[:, :, G:].reshape(-1, D).float()
    drel = [None if r is None else torch.matmul(d.reshape(-1, d.shape[-1]).t(), qg).to(r.dtype)
            for d, r in ((dqrh, rel_pos_h), (dqrw, rel_pos_w))]
    if P:  # the pooled means' backward: each tile member gets its tile's gradient / its size
        idx, inv = _tile_of_token(geometry, dev)
        gk.copy_(gk.float() + dkp.float()[:, :, idx] * inv[:, None])
        gv.copy_(gv.float() + dvp.float()[:, :, idx] * inv[:, None])
    for dst, src in zip((dq, dk, dv), grads):
        if dst is not src:
            dst.copy_(src)
    return drel[0], drel[1]


window_attention_op, window_attention_backward_op = _attention_ops.define_ops("cuda", _forward, _backward,
                                                                              device_types="cuda")


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


window_attention = dispatch.register("window_attention", "cuda", reasons=_reasons)(
    _attention_ops.entry(window_attention_op))
