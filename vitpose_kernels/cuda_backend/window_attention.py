"""CUDA backend of window_attention: csrc/window_attention.cu behind the op schema shared with the
Triton backend (vitpose_kernels._attention_ops: forward saves out, the natural-log logsumexp and
extra_kv; backward returns dq, dk, dv with the pooled keys' and rel-pos contributions in them).

The kernels implement the Triton v2 algorithm (dense tile packing with cell-id masks, pooled keys
computed in-kernel from k and v as they are and folded into the cell's softmax, global tokens in
their own kernels, a single-pass deterministic backward per tile, relative position in-kernel) on
mma.sync tensor cores; see the header of csrc/window_attention.cu. This host side only checks and
allocates: q, k, v (views of a packed qkv included) and dout are read in place through their
strides, dq, dk, dv are written in place in the caller's layout (one packed (B, N, 3, H, D)
gradient when the caller packed q, k, v), the rel-pos tables are rounded to q's dtype (as the spec
does) and their float32 gradients converted back to the tables' dtype.
"""
from __future__ import annotations

import functools
import os

import torch

from .. import _alloc, _attention_ops, _ext, dispatch
from .._validate import AttentionSpec
from . import _launch

_FP32_HINT = "float32 inputs are served by the triton backend (this kernel uses fp16/bf16 tensor cores)"
MAX_REL_ROWS = 128  # rel_pos_h rows + rel_pos_w rows (csrc kMaxRelRows: a (64, 128) float32 smem table)


def _resident() -> int:
    """1 unless VITPOSE_CUDA_RESIDENT=0: whether the kernels may keep a whole head in shared memory
    (pooled windows with head dims 33..64 and N up to ~768, see csrc/window_attention.cu). Read at
    call time so that tests can run the streamed kernels on the same shapes."""
    return 0 if os.environ.get("VITPOSE_CUDA_RESIDENT", "1") == "0" else 1


def _operand(t: torch.Tensor) -> list[int]:
    """[data_ptr, stride_b, stride_h, stride_n] of a (B, H, rows, D) tensor (0 for size-1 dims)."""
    return [t.data_ptr()] + [s if n > 1 else 0 for n, s in zip(t.shape[:3], t.stride()[:3])]


def _aligned(t: torch.Tensor) -> bool:
    """Head dim contiguous and 16-byte aligned rows: what the kernels read and write in place."""
    return (t.stride(-1) == 1 or t.shape[-1] == 1) and t.data_ptr() % 16 == 0 and all(
        s % 8 == 0 for n, s in zip(t.shape[:3], t.stride()[:3]) if n > 1)


def _readable(t: torch.Tensor) -> torch.Tensor:
    """t itself when the kernel can read it in place, else a contiguous copy. A packed qkv view
    (B, N, 3, H, D) with D % 8 == 0 qualifies."""
    return t if _aligned(t) else t.clone(memory_format=torch.contiguous_format)


def _sizes(shape, geometry, P: int, Rh: int, Rw: int) -> list[int]:
    """The binding's sizes: [B, H, N, D] + the op's geometry [Hg, Wg, wh, ww, sh, sw, G] + [P, Rh, Rw]."""
    return [*shape, *geometry, P, Rh, Rw]


def _rows(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.shape[0]


def _table(rel: torch.Tensor | None, dtype) -> torch.Tensor | None:
    # Rounded to q's dtype first, as the spec (and the Triton kernels) do; tiny ((2w - 1, D)).
    return None if rel is None else rel.to(dtype).contiguous()


@functools.lru_cache(maxsize=256)
def _workspace_floats(sizes: tuple, resident: int) -> int:
    return int(_launch.ext().window_attention_workspace(list(sizes), resident))


# ----------------------------------------------------------------------------- the op's kernels
def _forward(q, k, v, rel_pos_h, rel_pos_w, geometry, pool, scale):
    geometry = tuple(geometry)
    B, H, N, D = q.shape
    P = _attention_ops.num_pooled(geometry, pool)
    dev = q.device
    q, k, v = (_readable(t) for t in (q, k, v))
    rh, rw = _table(rel_pos_h, q.dtype), _table(rel_pos_w, q.dtype)
    out = _alloc.empty(B, H, N, D, dtype=q.dtype, device=dev)
    lse = _alloc.empty(B, H, N, dtype=torch.float32, device=dev)
    extra = _alloc.empty(2, B, H, P + geometry[6], D, dtype=q.dtype, device=dev)
    with torch.cuda.device(dev):
        _launch.ext().window_attention_fwd(
            _operand(q), _operand(k), _operand(v), _launch.ptr(rh), _launch.ptr(rw), out.data_ptr(), lse.data_ptr(),
            extra.data_ptr(), _sizes(q.shape, geometry, P, _rows(rh), _rows(rw)), float(scale),
            _launch.dtype_code(q), _launch.stream(q), _resident())
    return out, lse, extra


def _backward(dout, q, k, v, out, lse, extra, rel_pos_h, rel_pos_w, geometry, pool, scale, dq, dk, dv):
    geometry = tuple(geometry)
    B, H, N, D = q.shape
    dev = q.device
    P = _attention_ops.num_pooled(geometry, pool)
    dout, q, k, v = (_readable(t) for t in (dout, q, k, v))
    out, lse, extra = out.contiguous(), lse.contiguous(), extra.contiguous()
    rh, rw = _table(rel_pos_h, q.dtype), _table(rel_pos_w, q.dtype)
    # Written in place through their strides (the packed gradient's views qualify); a buffer the
    # kernels cannot address gets a contiguous stand-in, copied at the end.
    grads = [g if _aligned(g) else _alloc.empty(B, H, N, D, dtype=g.dtype, device=dev) for g in (dq, dk, dv)]
    drel = [_alloc.empty(*r.shape, dtype=torch.float32, device=dev) if r is not None else None for r in (rh, rw)]
    sizes = _sizes(q.shape, geometry, P, _rows(rh), _rows(rw))
    resident = _resident()
    work = _alloc.empty(max(_workspace_floats(tuple(sizes), resident), 1), dtype=torch.float32, device=dev)
    with torch.cuda.device(dev):
        _launch.ext().window_attention_bwd(
            _operand(q), _operand(k), _operand(v), _operand(dout), _launch.ptr(rh), _launch.ptr(rw), out.data_ptr(),
            lse.data_ptr(), extra.data_ptr(), *(_operand(g) for g in grads), _launch.ptr(drel[0]),
            _launch.ptr(drel[1]), work.data_ptr(), sizes, float(scale), _launch.dtype_code(q), _launch.stream(q),
            resident)
    for dst, src in zip((dq, dk, dv), grads):
        if dst is not src:
            dst.copy_(src)
    return tuple(None if d is None else d.to(r.dtype) for d, r in zip(drel, (rel_pos_h, rel_pos_w)))


window_attention_op, window_attention_backward_op = _attention_ops.define_ops("cuda", _forward, _backward,
                                                                              device_types="cuda")


# ----------------------------------------------------------------------------- backend entry
def _smem_reason(q, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> str | None:
    """The largest launch's shared memory against what the device grants a block."""
    geometry = _attention_ops.geometry(spec)
    P = _attention_ops.num_pooled(geometry, spec.pool)
    sizes = _sizes(q.shape, geometry, P, _rows(rel_pos_h), _rows(rel_pos_w))
    need = int(_launch.ext().window_attention_smem(sizes, _launch.dtype_code(q), _resident()))
    have = torch.cuda.get_device_properties(q.device).shared_memory_per_block_optin
    if need > have:
        return (f"needs {need} bytes of shared memory per block, the device grants {have} "
                f"(head dim {q.shape[-1]}, {P + spec.num_global} extra keys, rel-pos rows {_rows(rel_pos_h)} + "
                f"{_rows(rel_pos_w)})")
    return None


def _reasons(q, k, v, rel_pos_h, rel_pos_w, spec: AttentionSpec) -> list[str]:
    out = []
    mod, why = _ext.load()
    if mod is None:
        out.append(why)
    elif not hasattr(mod, "window_attention_workspace"):
        out.append("vitpose_kernels._C was built without the window_attention v2 kernels; rebuild it (pip install .)")
    out += _launch.common_reasons(q, k, v, fp32_ok=False)
    if q.dtype == torch.float32:
        out.append(_FP32_HINT)
    D = q.shape[-1]
    if D % 8 or D > 128:
        out.append(f"head dim q.shape[-1]={D} not supported (multiples of 8 up to 128; tuned: 32, 64, 80, 96, 128)")
    if max(spec.grid) >= 32768:
        out.append(f"grid={spec.grid} too large (sides < 32768)")
    if q.shape[0] * q.shape[1] > 65535:
        out.append(f"q.shape={tuple(q.shape)}: batch * heads must be <= 65535")
    if q.shape[2] * D >= 2 ** 31:
        out.append(f"q.shape={tuple(q.shape)}: one head spans 2**31 elements or more")
    rel_rows = _rows(rel_pos_h) + _rows(rel_pos_w)
    if rel_rows > MAX_REL_ROWS:
        out.append(f"rel_pos_h and rel_pos_w have {rel_rows} rows together > {MAX_REL_ROWS} (windows up to about "
                   "32x32; larger ones run on the triton backend)")
    if not out:
        why = _smem_reason(q, rel_pos_h, rel_pos_w, spec)
        if why:
            out.append(why)
    return out


window_attention = dispatch.register("window_attention", "cuda", reasons=_reasons)(
    _attention_ops.entry(window_attention_op))
