"""Make the Triton CPU interpreter round float32 -> bfloat16 to nearest, as every GPU does.

triton 3.9's interpreter converts with `_convert_float(..., rounding_mode=None)`, which truncates
the mantissa: every bfloat16 store and every `p.to(tl.bfloat16)` before a tensor-core product is
biased toward zero by up to one ulp, so a kernel run under the interpreter is up to twice as far
from the truth as the same kernel on a GPU, and the parity harness would have to be twice as loose
for bfloat16. tests/conftest.py installs this once; it changes nothing on a GPU.
"""
from __future__ import annotations

import numpy as np
import torch


def round_bfloat16_to_nearest() -> bool:
    """Patch the interpreter's float32 -> bfloat16 cast to torch's round-to-nearest-even.
    Returns False (and changes nothing) when triton or its interpreter is not there."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or getattr(builder.cast_impl, "_vitpose_rtne", False):
        return builder is not None
    truncating = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            data = np.ascontiguousarray(src.data, dtype=np.float32)
            bits = torch.from_numpy(data).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return interpreter.TensorHandle(bits.reshape(data.shape), dst_type.scalar)
        return truncating(self, src, dst_type)

    cast_impl._vitpose_rtne = True
    builder.cast_impl = cast_impl
    return True
