"""Backend registry and selection.

Each backend registers, per op, a function and a predicate ``reasons(*args, **kwargs) -> list[str]``
that says why it cannot serve a given call (empty: it can). The same predicate serves both
automatic selection (skip, and remember why) and forced selection (raise, listing the reasons),
as in xformers' ``not_supported_reasons`` and NATTEN's backend checks.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import _ext

log = logging.getLogger("vitpose_kernels")

OPS = ("window_attention", "simple_decoder", "decode_heatmaps", "udp_targets", "masked_attention",
       "heatmap_key_mask")
BACKENDS = ("cuda", "triton", "reference")
# Fastest first, per device type. On the CPU the Triton interpreter is far slower than PyTorch,
# so it is used only when forced.
PRIORITY = {"cuda": ("cuda", "triton", "reference"), "cpu": ("reference", "triton", "cuda")}


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    fn: Callable
    reasons: Callable[..., list]


_REGISTRY: dict[str, dict[str, Backend]] = {op: {} for op in OPS}
_MACHINE: dict[str, list[str]] = {}  # backend -> reasons it cannot run on this machine at all


def register(op: str, name: str, reasons: Callable[..., list] | None = None):
    """Decorator: ``@register("window_attention", "triton", reasons=fn)`` on the backend's entry."""
    if op not in OPS or name not in BACKENDS:
        raise ValueError(f"unknown op/backend {op!r}/{name!r}; ops: {OPS}, backends: {BACKENDS}")

    def wrap(fn):
        _REGISTRY[op][name] = Backend(op, name, fn, reasons or (lambda *a, **k: []))
        return fn

    return wrap


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def probe() -> None:
    """Import the backends once and record what stands in the way of each on this machine."""
    if _MACHINE:
        return
    _MACHINE["reference"] = []
    importlib.import_module("vitpose_kernels.reference")
    try:
        importlib.import_module("vitpose_kernels.triton_backend")
        triton_reasons = []
        if not torch.cuda.is_available() and not interpreting():
            triton_reasons.append("no CUDA device, and TRITON_INTERPRET=1 (the CPU interpreter) is not set")
    except ImportError as e:
        triton_reasons = [f"triton is not importable ({e}); pip install triton"]
    except Exception as e:  # a broken backend must not take the package down with it
        triton_reasons = [_import_failure("triton", e)]
    _MACHINE["triton"] = triton_reasons
    mod, why = _ext.load()
    cuda_reasons = [] if mod is not None else [why]
    if mod is not None:
        status = mod.device_status()
        if not torch.cuda.is_available():
            cuda_reasons.append("no CUDA device: torch.cuda.is_available() is False")
        elif status["count"] == 0:
            cuda_reasons.append(f"the extension sees no CUDA device ({status['error'] or 'count 0'})")
        try:
            importlib.import_module("vitpose_kernels.cuda_backend")
        except Exception as e:
            cuda_reasons.append(_import_failure("cuda", e))
    _MACHINE["cuda"] = cuda_reasons


def _import_failure(name: str, e: Exception) -> str:
    log.warning("vitpose_kernels: the %s backend failed to import: %r", name, e)
    return f"the {name} backend failed to import ({type(e).__name__}: {e}); please report this"


def machine_reasons(name: str) -> list[str]:
    probe()
    return list(_MACHINE[name])


def _static_reasons(op: str, name: str) -> list[str]:
    out = list(_MACHINE[name])
    if name not in _REGISTRY[op]:
        out.append(f"no {name} implementation of {op}")
    return out


def reasons(op: str, name: str, *args, **kwargs) -> list[str]:
    """Why backend `name` cannot serve this call of `op` (already validated arguments)."""
    probe()
    out = _static_reasons(op, name)
    return out or list(_REGISTRY[op][name].reasons(*args, **kwargs))


def select(op: str, backend: str | None, device: torch.device, *args, **kwargs) -> Backend:
    """The backend to run: the forced one (or an error with its reasons), else the first that fits."""
    probe()
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got backend={backend!r}")
        why = reasons(op, backend, *args, **kwargs)
        if why:
            raise NotImplementedError(f"{op}: backend={backend!r} cannot serve this call:\n  - "
                                      + "\n  - ".join(why))
        return _REGISTRY[op][backend]
    skipped = {}
    for name in PRIORITY["cuda" if device.type == "cuda" else "cpu"]:
        why = reasons(op, name, *args, **kwargs)
        if not why:
            if skipped:
                log.debug("%s: using %s; not used: %s", op, name, skipped)
            return _REGISTRY[op][name]
        skipped[name] = why
    raise NotImplementedError(f"{op}: no backend can serve this call: {skipped}")


def backends(op: str | None = None) -> dict:
    """Per op, the backends on this machine and, for each that cannot run, the reasons.

    ``backends()`` -> ``{op: {backend: [reasons...]}}``; ``backends("window_attention")`` ->
    ``{backend: [reasons...]}``. An empty list means the backend can run here (for inputs it
    supports; the per-call reasons are in the error of a forced backend or in ``explain``).
    """
    probe()
    if op is not None and op not in OPS:
        raise ValueError(f"op must be one of {OPS} or None, got op={op!r}")
    table = {o: {name: _static_reasons(o, name) for name in BACKENDS} for o in OPS}
    return table[op] if op is not None else table
