"""``python -m vitpose_kernels.info``: versions, what was built, and which backends run here."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

from . import __version__, _ext, dispatch


def report() -> str:
    lines = [f"vitpose_kernels {__version__}  python {platform.python_version()}  torch {torch.__version__}"]
    try:
        import triton
        lines.append(f"triton {triton.__version__}"
                     + ("  (TRITON_INTERPRET=1: CPU interpreter)" if dispatch.interpreting() else ""))
    except ImportError:
        lines.append("triton: not installed")
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        lines.append(f"device: {torch.cuda.get_device_name(i)} "
                     f"(sm_{''.join(map(str, torch.cuda.get_device_capability(i)))}), CUDA {torch.version.cuda}")
    else:
        lines.append("device: no CUDA device visible to torch")
    info = _ext.build_info()
    mod, why = _ext.load()
    recorded = Path(_ext.__file__).with_name("_build_info.json").exists()  # written by pip install
    if mod is not None:
        built = mod.build_info()
        lines.append(f"_C: built for archs {built['archs']} with nvcc {built['nvcc']} (cudart {built['cudart']})")
        if recorded and not info.get("cuda_built"):
            lines.append(f"   but this install did not build it ({info.get('reason')}): {mod.__file__} is stale; "
                         "delete it or reinstall")
    else:
        lines.append(f"_C: not available ({why})")
    if info.get("nvcc") and mod is None:
        lines.append(f"   install-time nvcc: {info['nvcc']}, archs {info['archs']}")
    lines.append("")
    for op, table in dispatch.backends().items():
        lines.append(f"{op}:")
        for name in dispatch.BACKENDS:
            why = table[name]
            lines.append(f"  {name:<10} " + ("available" if not why else "unavailable: " + "; ".join(why)))
    return "\n".join(lines)


def main() -> int:
    try:
        print(report(), flush=True)
    except BrokenPipeError:
        # The reader stopped early (`| head`): end quietly, as command-line tools do; point stdout
        # at /dev/null so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
