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


# ----------------------------------------------------------------------------- real launches
LAUNCH_SCRIPT = r'''
import importlib, json, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

TARGET = GPUTarget("cuda", 90, 32)
BACKEND = make_backend(TARGET)
mod = importlib.import_module(MODULE)
seen = set()
current = {}


def ptxas(ptx):
    """Registers, spill bytes and serialized-wgmma notes (C7515) of the PTX, from ptxas -v."""
    with tempfile.TemporaryDirectory() as td:
        with open(td + "/k.ptx", "w") as f:
            f.write(ptx)
        run = subprocess.run([get_ptxas(90).path, "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a",
                              td + "/k.ptx", "-o", td + "/k.cubin"], capture_output=True, text=True, check=True)
    log = run.stderr
    return dict(registers=max(int(x) for x in re.findall(r"Used (\d+) registers", log)),
                spill_bytes=sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", log)),
                serialized_wgmma=sum("C7515" in line for line in log.splitlines()))


def compile_launch(kernel, grid, *args, **kwargs):
    """Specialize the arguments as triton's launcher would (value-1 ints constant, 16-divisible
    pointers and ints marked), compile for sm_90a, report once per specialization."""
    binder = create_function_from_signature(kernel.signature, kernel.params, BACKEND)
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(BACKEND, kwargs, bound, spec, options)
    key = (kernel.fn.__name__, str(signature), str(constexprs), str(attrs), str(options))
    if key in seen:
        return
    seen.add(key)
    k = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGET, options=options.__dict__)
    rep = dict(kernel=kernel.fn.__name__, num_warps=options.num_warps, num_stages=options.num_stages,
               shared=k.metadata.shared, wgmma=k.asm["ptx"].count("wgmma.mma_async"), **ptxas(k.asm["ptx"]),
               **current)
    print("REPORT " + json.dumps(rep), flush=True)


mod._launch = compile_launch
for i, call in enumerate(CALLS):
    current.update(call=i, strict=bool(call[-1]))
    getattr(mod, FUNCTION)(*call[:-1])
'''


def compile_launches_for_sm90a(module: str, function: str, calls: list) -> list[dict]:
    """Run module.function(*call[:-1]) for each call with module._launch replaced by a compiler:
    every kernel launch is compiled for sm_90a as the GPU launcher would specialize it. Returns one
    report per distinct compilation: kernel, registers, spill_bytes, serialized_wgmma (ptxas C7515
    notes), wgmma count, shared memory, num_warps/stages, call index and call[-1] as `strict`."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = f"MODULE = {module!r}\nFUNCTION = {function!r}\nCALLS = {calls!r}\n" + LAUNCH_SCRIPT
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0 and "ptxas" in run.stderr and "not found" in run.stderr:
        pytest.skip(f"no ptxas: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line[7:]) for line in run.stdout.splitlines() if line.startswith("REPORT ")]
