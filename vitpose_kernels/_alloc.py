"""Output allocation for kernel backends.

Every Triton/CUDA backend allocates its outputs and gradient buffers through ``empty``. Inside
``poisoned()`` (the parity tests) they come back filled with NaN, so an element a kernel forgot
to write shows up as a mismatch instead of passing by luck with whatever memory held.
"""
from __future__ import annotations

import contextlib

import torch

_POISON = [False]


def empty(*shape, dtype, device) -> torch.Tensor:
    t = torch.empty(*shape, dtype=dtype, device=device)
    if _POISON[0]:
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


def empty_like(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return empty(*t.shape, dtype=dtype or t.dtype, device=t.device)


@contextlib.contextmanager
def poisoned():
    prev, _POISON[0] = _POISON[0], True
    try:
        yield
    finally:
        _POISON[0] = prev
