"""Compile Triton kernels to sm_90 machine code on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1) does not type-check like the compiler (loop-carried types,
constexpr mixing, dot operand layouts), so the CPU test suite also compiles every kernel with the
ptxas bundled in the triton wheel. Runs in a subprocess without TRITON_INTERPRET, because the
variable decides at decoration time whether @triton.jit builds compilable kernels.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRELUDE = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

FLOAT_ARGS = {"qk_scale", "scale", "inv_s", "size_x", "size_y", "shortcut_floor", "fx", "fy", "radius",
              "size", "c0", "two_sigma2"}


def build(fn, ptrs, consts, **opts):
    """Compile fn for sm_90: pointer args typed by `ptrs`, listed floats fp32, other args i32."""
    sig = {a: ("constexpr" if a in consts else ptrs.get(a) or ("fp32" if a in FLOAT_ARGS else "i32"))
           for a in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4, **opts})
    print("COMPILED", fn.__name__, "shared", k.metadata.shared)
'''


def compile_for_sm90(script: str, expected: int) -> None:
    """Run PRELUDE + script; it must print COMPILED `expected` times."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        run = subprocess.run([sys.executable, "-c", PRELUDE + script], env=env, capture_output=True,
                             text=True, timeout=900)
    except subprocess.TimeoutExpired:
        # A hang or a blow-up in codegen is a failure, not an unavailable feature.
        pytest.fail("compiling the Triton kernels for sm_90 took over 15 minutes (hang or codegen blow-up?)")
    if run.returncode != 0 and "ptxas" in run.stderr and "not found" in run.stderr:
        pytest.skip(f"no ptxas: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("COMPILED") == expected, run.stdout
