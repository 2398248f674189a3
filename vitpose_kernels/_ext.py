"""The optional compiled extension ``vitpose_kernels._C``: loading it, and what was built."""
from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

_BUILD_INFO = Path(__file__).with_name("_build_info.json")


@functools.lru_cache(maxsize=None)
def build_info() -> dict:
    """What `pip install` recorded: whether `_C` was built, why not, the CUDA archs and nvcc."""
    try:
        info = json.loads(_BUILD_INFO.read_text())
    except (OSError, ValueError):
        info = {"cuda_built": False, "archs": None, "nvcc": None,
                "reason": "no build record (the package was not installed with `pip install .`)"}
    return info


@functools.lru_cache(maxsize=None)
def load():
    """Return ``(module, None)`` or ``(None, reason)``; never raises."""
    try:
        return importlib.import_module("vitpose_kernels._C"), None
    except ImportError as e:
        reason = build_info().get("reason") or f"import failed: {e}"
        hint = "reinstall with nvcc on PATH (pip install .) to build it"
        return None, f"the CUDA extension vitpose_kernels._C is not available: {reason}; {hint}"


def require():
    """The extension module, or a RuntimeError that says why it is missing and what to do."""
    mod, reason = load()
    if mod is None:
        raise RuntimeError(reason)
    return mod
