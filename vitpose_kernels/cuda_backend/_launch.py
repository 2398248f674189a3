"""How a torch.Tensor crosses into vitpose_kernels._C: a data pointer, sizes, strides (in
elements), a dtype code and the current CUDA stream, all plain Python ints. The extension never
sees a torch type, so it neither links against nor depends on the PyTorch version."""
from __future__ import annotations

import torch

from .. import _ext

# Must match vitpose::DType in csrc/common.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def strides(t: torch.Tensor) -> list[int]:
    return list(t.stride())


def stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def ext():
    return _ext.require()


def common_reasons(*tensors: torch.Tensor | None, fp32_ok: bool = True) -> list[str]:
    """Reasons shared by every CUDA op: device, dtype, compute capability."""
    out = []
    ts = [t for t in tensors if t is not None]
    if any(t.device.type != "cuda" for t in ts):
        out.append(f"tensors must be on a CUDA device, got {sorted({str(t.device) for t in ts})}")
    allowed = (torch.float16, torch.bfloat16) + ((torch.float32,) if fp32_ok else ())
    bad = sorted({str(t.dtype) for t in ts if t.is_floating_point() and t.dtype not in allowed})
    if bad:
        out.append(f"dtype {', '.join(bad)} not supported (supported: {[str(d) for d in allowed]})")
    if not out and ts and torch.cuda.get_device_capability(ts[0].device) < (8, 0):
        out.append(f"compute capability {torch.cuda.get_device_capability(ts[0].device)} < (8, 0)")
    return out
