"""Run the real CUDA kernels of csrc/ on the CPU, to check their logic without a GPU.

``build()`` compiles csrc/*.cu (launch syntax rewritten, nothing else) and csrc/*.cpp (the
pybind11 bindings, unchanged) with the host C++ compiler against include/vpemu.h into a
``_C`` extension with exactly the functions of the real one. ``emulated()`` points the CUDA
backends' Python launchers (vitpose_kernels/cuda_backend/*.py) at it for CPU tensors, so that
``vk.window_attention(..., backend="cuda")`` and the shared parity harness run unchanged.

What it checks: indexing, tiling, masking, fragment layouts (mma.sync, ldmatrix), cp.async
grouping, barriers placed where data crosses threads, warp-collective convergence, the launch
configuration (dynamic shared memory limits) and the Python/C++ glue. What it cannot: speed,
register or shared-memory bank pressure, and races that depend on real timing (see README.md).

Environment: CXX picks the compiler (default g++, then clang++); VPEMU_BUILD_DIR the cache
(default <repo>/build/cuda_emulator); VPEMU_OPT the optimisation flags (default -O1; with
-DVPEMU_COUNT the executed-work counters of benchmarks/cost_model.py are built in); VPEMU_CSRC
another kernel tree (to check that a deliberately broken kernel fails);
VPEMU_SCHEDULE=reverse runs each block's threads in reverse order (race probe).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CSRC = Path(os.environ.get("VPEMU_CSRC", REPO / "csrc"))  # another tree: mutation tests of the emulator
INCLUDE = HERE / "include"
RUNTIME = [HERE / "runtime.cpp", HERE / "selftest.cpp"]

_FLAGS = ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-DVITPOSE_CPU_EMULATION", "-ffp-contract=off",
          "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function"]
# With -DVPEMU_COUNT in VPEMU_OPT (benchmarks/cost_model.py): the kernel sources call a counter on
# every load and store they execute (runtime.cpp defines the callbacks; no sanitizer runtime).
_COUNT_CU_FLAGS = ["-fsanitize=kernel-address", "--param", "asan-instrumentation-with-call-threshold=0",
                   "--param", "asan-stack=0", "--param", "asan-globals=0"]


# ----------------------------------------------------------------------------- source rewriting
_LAUNCH = re.compile(
    r"(?P<kernel>[A-Za-z_][\w:]*(?:\s*<[^<>;{}()]*(?:<[^<>;{}()]*>[^<>;{}()]*)*>)?)\s*"
    r"<<<(?P<cfg>.*?)>>>\s*\((?P<args>.*?)\)\s*;", re.S)
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?(?P<type>[\w:]+(?:\s+[\w:]+)*?)\s+(?P<name>\w+)\s*\[\s*\]\s*;")


def _split_top(s: str) -> list[str]:
    """Split on commas outside (), [] and {} (not <>: `a < b` is common in launch configurations)."""
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p for p in out if p.strip()] if len(out) > 1 or out[0].strip() else []


def _launch_sub(m: re.Match) -> str:
    kernel = " ".join(m["kernel"].split())
    cfg = _split_top(m["cfg"])
    if not 2 <= len(cfg) <= 4:
        raise ValueError(f"cannot parse the launch configuration <<<{m['cfg']}>>>")
    cfg += ["0", "static_cast<cudaStream_t>(nullptr)"][len(cfg) - 2:]
    args = m["args"].strip()
    name = kernel.replace('"', "'")
    out = f'::vpemu::launch("{name}", {kernel}, {", ".join(c.strip() for c in cfg)}{", " + args if args else ""});'
    # Keep the line count so that #line-mapped diagnostics point at the right .cu lines.
    return out.replace("\n", " ") + "\n" * m.group(0).count("\n")


def _shared_sub(m: re.Match) -> str:
    t, name = " ".join(m["type"].split()), m["name"]
    return f"{t}* const {name} = reinterpret_cast<{t}*>(::vpemu::dynamic_smem());"


def rewrite_cu(text: str, path: Path) -> str:
    """A .cu source as host C++: launches call vpemu::launch, `extern __shared__` arrays point at
    the launch's dynamic shared memory. Everything else is compiled as written."""
    body = _EXTERN_SHARED.sub(_shared_sub, _LAUNCH.sub(_launch_sub, text))
    if "<<<" in body:
        raise ValueError(f"{path}: a kernel launch the emulator build could not rewrite")
    return f'#line 1 "{path}"\n' + body


# ----------------------------------------------------------------------------- toolchain
@functools.lru_cache(maxsize=None)
def compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def skip_reason() -> str | None:
    """Why the emulator cannot be built here (None: it can)."""
    if not sys.platform.startswith("linux"):
        return f"the CUDA emulator needs Linux (fibers on mmap'ed stacks), this is {sys.platform}"
    if compiler() is None:
        return "no host C++ compiler found (set CXX, or install g++ or clang++)"
    try:
        import pybind11  # noqa: F401
    except ImportError:
        return "pybind11 is not installed (pip install pybind11); the emulated extension uses the real bindings"
    return None


def _includes(csrc: Path) -> list[str]:
    import pybind11

    return [f"-I{INCLUDE}", f"-I{csrc}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]


def _compiler_id(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _tmp(p: Path) -> Path:
    """A per-process temporary name next to p (concurrent builds replace atomically)."""
    return p.with_name(f"{p.name}.{os.getpid()}.tmp")


def build_dir() -> Path:
    return Path(os.environ.get("VPEMU_BUILD_DIR", REPO / "build" / "cuda_emulator"))


def build(verbose: bool = False, csrc: Path | None = None, opt: str | None = None,
          file_opt: dict[str, str] | None = None) -> Path:
    """Compile (or reuse) the emulated extension of `csrc` (default: the repository's kernels, or
    VPEMU_CSRC) with optimisation flags `opt` (default VPEMU_OPT, else -O1; file_opt: other flags
    for some files by name, e.g. a mutant's one changed file at -O0); returns the path of the
    shared library.

    Objects are cached by the hash of their source, every header they may include, the
    compiler and the flags, so editing one kernel recompiles one file."""
    why = skip_reason()
    if why:
        raise RuntimeError(why)
    csrc = Path(csrc) if csrc is not None else CSRC
    cxx = compiler()
    default_opt = opt or os.environ.get("VPEMU_OPT", "-O1")  # extra flags may follow: "-O1 -DVPEMU_UCONTEXT"
    file_opt = file_opt or {}
    flags = _FLAGS + _includes(csrc)
    headers = sorted(list(csrc.glob("*.h")) + list(csrc.glob("*.cuh")) + list(INCLUDE.glob("*.h")))
    # Keyed by content, not by where the tree lives: a mutant tree (tests/test_mutations.py)
    # recompiles only the file that differs.
    located = [f for f in flags if f != f"-I{csrc}"]
    common = hashlib.sha256("\0".join([cxx, _compiler_id(cxx), *located]).encode())
    for h in headers:
        common.update(h.name.encode() + h.read_bytes())
    out = build_dir()
    gen = out / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    (gen / "build_info.h").write_text('#pragma once\n#define VITPOSE_CUDA_ARCHS "cpu-emulation"\n'
                                      '#define VITPOSE_NVCC_VERSION "none (tests/cuda_emulator)"\n')
    flags.append(f"-I{gen}")

    def key_of(src: Path, content: bytes) -> tuple[str, list[str]]:
        o = file_opt.get(src.name, default_opt).split()
        return hashlib.sha256(common.digest() + "\0".join(o).encode() + content).hexdigest()[:16], o

    jobs = []  # (source to compile, object, optimisation flags)
    for src in sorted(csrc.glob("*.cu")):
        text = rewrite_cu(src.read_text(), Path("csrc") / src.name)
        key, o = key_of(src, text.encode())
        cpp = gen / f"{src.stem}.{key}.cpp"
        if not cpp.exists():
            _tmp(cpp).write_text(text)
            os.replace(_tmp(cpp), cpp)
        jobs.append((cpp, out / f"{src.stem}.cu.{key}.o", o))
    for src in sorted(csrc.glob("*.cpp")) + RUNTIME:
        key, o = key_of(src, src.read_bytes())
        jobs.append((src, out / f"{src.stem}.{key}.o", o))

    todo = [(s, o, f) for s, o, f in jobs if not o.exists()]
    procs, limit = [], max(1, min(len(todo), os.cpu_count() or 1))
    errors = []

    def reap(p_src_obj):
        p, s, o = p_src_obj
        stdout, _ = p.communicate()
        if p.returncode:
            errors.append(f"{s}:\n{stdout}")
        else:
            os.replace(_tmp(o), o)
            if stdout:  # warnings: the emulator build is -Wall clean, keep it so
                print(stdout, file=sys.stderr)

    for s, o, f in todo:
        while len(procs) >= limit:
            reap(procs.pop(0))
        extra = _COUNT_CU_FLAGS if "-DVPEMU_COUNT" in f and o.name.split(".")[1:2] == ["cu"] else []
        cmd = [cxx, *flags, *f, *extra, "-x", "c++", "-c", str(s), "-o", str(_tmp(o))]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), s, o))
    for p in procs:
        reap(p)
    if errors:
        raise RuntimeError("building the CUDA emulator failed:\n" + "\n".join(errors))

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    objs = [str(o) for _, o, _ in jobs]
    key = hashlib.sha256("\0".join(objs).encode()).hexdigest()[:16]
    lib = out / key / f"_C{suffix}"
    if not lib.exists():
        lib.parent.mkdir(exist_ok=True)
        tmp = _tmp(lib)
        subprocess.run([cxx, "-shared", "-o", str(tmp), *objs, "-lpthread"], check=True)
        os.replace(tmp, lib)
    return lib


@functools.lru_cache(maxsize=None)
def load(csrc: Path | None = None, opt: str | None = None, file_opt: tuple = ()) -> types.ModuleType:
    """The emulated ``_C`` module of `csrc` (default: the repository's kernels), built on first use
    (opt, file_opt: see build; file_opt as ((name, flags), ...))."""
    lib = build(csrc=csrc, opt=opt, file_opt=dict(file_opt))
    # A name of its own per build: pybind11 (>= 3) caches modules by spec name, and a second "_C"
    # (a mutant kernel tree) would silently come back as the first.
    spec = importlib.util.spec_from_file_location(f"vpemu_{lib.parent.name}._C", lib)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.__vpemu_library__ = str(lib)
    return mod


@functools.lru_cache(maxsize=None)
def _cdll() -> ctypes.CDLL:
    lib = ctypes.CDLL(load().__vpemu_library__)
    lib.vpemu_selftest.restype = ctypes.c_char_p
    lib.vpemu_launch_count.restype = ctypes.c_longlong
    lib.vpemu_block_count.restype = ctypes.c_longlong
    return lib


def selftest() -> str:
    """Runs the emulator's own checks (PTX fragments against plain products, error detection);
    returns '' or what failed."""
    return _cdll().vpemu_selftest().decode()


def launch_count() -> int:
    return int(_cdll().vpemu_launch_count())


# ----------------------------------------------------------------------------- patching
_ACTIVE = [False]


class _NoDevice(contextlib.nullcontext):
    def __init__(self, *args, **kwargs):
        super().__init__()


def register_cpu_kernels(module=None):
    """The window_attention custom ops are declared for CUDA tensors only; give them (those of
    `module`, default the cuda backend's window_attention module) a CPU kernel that runs the same
    Python body, but only inside emulated()."""
    if module is None:
        from vitpose_kernels.cuda_backend import window_attention as module

    for op in (module.window_attention_fwd, module.window_attention_bwd):
        if "cpu" in op._backend_fns:
            continue

        def cpu_kernel(*args, _op=op, **kwargs):
            if not _ACTIVE[0]:
                raise NotImplementedError(f"{_op._name} on CPU tensors exists only under tests/cuda_emulator")
            return _op._init_fn(*args, **kwargs)

        op.register_kernel("cpu", cpu_kernel)


_GUARD_BYTES = 256  # canary zone on each side of every output buffer (keeps 16-byte alignment)
_CANARY = 0xA5


def _guarded_empty(orig_empty, guarded):
    """_alloc.empty with canary zones before and after the tensor: a kernel that writes outside
    its output shows up when emulated() checks the zones."""
    import torch

    def empty(*shape, dtype, device):
        n = 1
        for s in shape:
            n *= int(s)
        g = _GUARD_BYTES // torch.empty(0, dtype=dtype).element_size()
        buf = orig_empty(n + 2 * g, dtype=dtype, device=device)
        raw = buf.view(torch.uint8).view(-1)
        gb = g * buf.element_size()
        raw[:gb] = _CANARY
        raw[-gb:] = _CANARY
        guarded.append((buf, gb, tuple(shape), dtype))
        return buf[g:g + n].view(*shape)

    return empty


def _check_guards(guarded):
    for buf, gb, shape, dtype in guarded:
        raw = buf.view(-1).view(__import__("torch").uint8)
        for where, zone in (("before", raw[:gb]), ("after", raw[-gb:])):
            if bool((zone != _CANARY).any()):
                raise AssertionError(f"a kernel wrote {where} its output buffer of shape {shape} ({dtype}): "
                                     "out-of-bounds global store")


@contextlib.contextmanager
def emulated(guard_outputs: bool = True, csrc: Path | None = None, opt: str | None = None, file_opt: tuple = ()):
    """Inside: the CUDA backends accept CPU tensors and launch their kernels through the emulator
    (of the kernels in `csrc`, default the repository's, built with `opt`, see build).
    With guard_outputs, output buffers (vitpose_kernels._alloc) get canary zones, checked on the
    way out (their storage offset is then not 0, which opcheck's fake-tensor comparison rejects)."""
    import torch

    from vitpose_kernels import _alloc, _ext, dispatch
    from vitpose_kernels.cuda_backend import _launch

    mod = load(csrc, opt, file_opt)
    dispatch.probe()
    register_cpu_kernels()
    orig_reasons = _launch.common_reasons

    def cpu_ok_reasons(*tensors, **kw):
        return [r for r in orig_reasons(*tensors, **kw) if not r.startswith("tensors must be on a CUDA device")]

    props = types.SimpleNamespace(shared_memory_per_block_optin=227 * 1024, name="vpemu (CPU emulation)")
    saved = [(_ext, "load", _ext.load), (_launch, "stream", _launch.stream),
             (_launch, "common_reasons", orig_reasons), (torch.cuda, "device", torch.cuda.device),
             (torch.cuda, "get_device_properties", torch.cuda.get_device_properties), (_alloc, "empty", _alloc.empty)]
    guarded = []
    machine = dispatch._MACHINE.get("cuda")
    try:
        _ext.load = lambda: (mod, None)
        _launch.stream = lambda t: 0
        _launch.common_reasons = cpu_ok_reasons
        torch.cuda.device = _NoDevice
        torch.cuda.get_device_properties = lambda *a, **k: props
        dispatch._MACHINE["cuda"] = []
        if guard_outputs:
            _alloc.empty = _guarded_empty(_alloc.empty, guarded)
        _ACTIVE[0] = True
        yield mod
        _check_guards(guarded)
    finally:
        _ACTIVE[0] = False
        for obj, name, value in saved:
            setattr(obj, name, value)
        dispatch._MACHINE["cuda"] = machine
