"""What the CUDA kernels (csrc/) execute, counted in the CPU emulator (tests/cuda_emulator).

The emulator built with VPEMU_OPT="-O1 -DVPEMU_COUNT" counts, per launch: mma.sync
m16n8k16 instructions (2*16*8*16 = 4096 FLOPs each, counted once per warp), cp.async bytes
(zero-filled bytes apart: the masked lanes), every plain load/store the kernel code executes
into a registered global buffer (the kernel sources are compiled with -fsanitize=kernel-address,
whose per-access callbacks the emulator defines), and the distinct 32-byte sectors all of these
touch. The buffers are
the op's tensors: its inputs, registered here, and every storage created while it runs, reported
by the dispatch mode (cost.torch_counter) as it is allocated.

Kernels are named by their instantiation (`wa_fwd_kernel<__nv_bfloat16, 64>`), found from the
launched function's address in the emulated library's symbol table; the same name picks the
function in the sm_90a cubin that `nvcc -cubin -arch=sm_90a` makes of the same source.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import cubin
from .launches import SECTOR, Counts, Launch

REPO = Path(__file__).resolve().parents[2]
COUNT_FLAG = "-DVPEMU_COUNT"
MMA_FLOPS = 2 * 16 * 8 * 16


def _emulator():
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    import cuda_emulator

    return cuda_emulator


def enable_in_this_process() -> None:
    """Ask for the counting build of the emulator (before its first use in this process)."""
    opt = os.environ.get("VPEMU_OPT", "-O1")
    if COUNT_FLAG not in opt.split():
        os.environ["VPEMU_OPT"] = f"{opt} {COUNT_FLAG}"


def unavailable_reason() -> str | None:
    why = _emulator().skip_reason()
    if why:
        return why
    if COUNT_FLAG not in os.environ.get("VPEMU_OPT", "").split():
        return (f"the CUDA emulator of this process is not the counting build (VPEMU_OPT needs {COUNT_FLAG} "
                "before its first use; benchmarks/cost_model.py sets it)")
    return None


def _lib() -> ctypes.CDLL:
    path = _emulator().load().__vpemu_library__
    lib = ctypes.CDLL(path)
    if not hasattr(lib, "vpemu_count_enabled"):
        raise RuntimeError(f"cost model: {path} was built without {COUNT_FLAG}")
    lib.vpemu_count_launch.restype = ctypes.c_char_p
    lib.vpemu_count_launches.restype = ctypes.c_longlong
    lib.vpemu_count_add_range.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    lib.vpemu_count_remove_range.argtypes = [ctypes.c_size_t]
    return lib


def emulated():
    """The emulator's patching of the CUDA launchers, without canary-padded outputs (they would
    change the allocations the memory trace sees)."""
    return _emulator().emulated(guard_outputs=False)


# ----------------------------------------------------------------------------- kernel names
def short_name(demangled: str) -> str:
    """'void ns::(anonymous namespace)::k<float, 64>(P, C)' -> 'k<float, 64>'."""
    text = demangled.replace("(anonymous namespace)", "anon")

    def top_level(s: str):  # indices of characters outside <...> and (...)
        depth = 0
        for i, ch in enumerate(s):
            if ch in "<(" and not (ch == "(" and depth == 0):
                depth += 1
            elif ch in ">)" and depth:
                depth -= 1
            elif depth == 0:
                yield i, ch

    cut = next((i for i, ch in top_level(text) if ch == "("), len(text))
    head = text[:cut]
    start = 0
    for i, ch in top_level(head):
        if ch == " " or (ch == ":" and head[i + 1:i + 2] == ":"):
            start = i + 1
    return head[start:].lstrip(":")


def _symbols(path: str) -> dict[int, str]:
    """Address (relative to the load base) -> demangled short name of every function."""
    out = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    addr = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            addr[int(parts[0], 16)] = parts[2]
    names = cubin.demangle(list(addr.values()))
    return {a: short_name(names[m]) for a, m in addr.items()}


def _load_base(path: str) -> int:
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and os.path.realpath(parts[5]) == real and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    raise RuntimeError(f"cost model: {path} is not mapped in this process")


# ----------------------------------------------------------------------------- counter
class CudaCounter:
    """Context manager: counts every kernel the emulator launches inside it (`launches`); with
    dry=True the launches are recorded (grid, block, shared memory) without running."""

    def __init__(self, dry: bool = False):
        self.dry = dry
        self.launches: list[Launch] = []
        self._lib = _lib()
        self._path = _emulator().load().__vpemu_library__

    def in_launch(self) -> bool:
        return False  # the emulated launches run no PyTorch ops

    def watch(self, *tensors) -> None:
        """Register the storages of tensors made before the counter (the op's inputs)."""
        for t in tensors:
            if t is not None:
                st = t.untyped_storage()
                self.on_alloc(st.data_ptr(), st.nbytes())

    def on_alloc(self, ptr: int, nbytes: int) -> None:
        self._lib.vpemu_count_add_range(ptr, nbytes)

    def on_free(self, ptr: int) -> None:
        self._lib.vpemu_count_remove_range(ptr)

    def __enter__(self):
        self._lib.vpemu_count_reset()
        self._lib.vpemu_count_clear_ranges()
        self._lib.vpemu_count_set_dry(1 if self.dry else 0)
        return self

    def __exit__(self, *exc):
        self._lib.vpemu_count_set_dry(0)
        self._lib.vpemu_count_clear_ranges()
        syms, base = _symbols(self._path), _load_base(self._path)
        vals = (ctypes.c_longlong * 19)()
        for i in range(self._lib.vpemu_count_launches()):
            raw = self._lib.vpemu_count_launch(i, vals).decode()
            v = list(vals)
            name = syms.get(v[0] - base) or raw
            c = Counts(programs=v[8], dots=v[9], flops=v[9] * MMA_FLOPS, loads=v[10] + v[14],
                       load_bytes=v[11] + v[15], load_masked_bytes=v[16], stores=v[12], store_bytes=v[13],
                       load_sector_bytes=v[17] * SECTOR, store_sector_bytes=v[18] * SECTOR)
            self.launches.append(Launch(kernel=name, module="csrc", grid=tuple(v[1:4]), counts=c, args={},
                                        constexprs={}, options=dict(block=tuple(v[4:7]), smem=v[7])))
        self._lib.vpemu_count_reset()
        return False


# ----------------------------------------------------------------------------- sm_90a cubin
def _nvcc() -> str | None:
    return shutil.which("nvcc") or next((str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc")), None)


def cubin_stats(source: Path = REPO / "csrc" / "window_attention.cu") -> dict[str, dict]:
    """{short kernel name: {sass stats, ptxas spills/C7515}} of `source` compiled for sm_90a with
    the flags CMakeLists.txt uses (cached by the sources' hash)."""
    nvcc = _nvcc()
    if nvcc is None:
        raise RuntimeError("cost model: nvcc not found; the CUDA kernels' sm_90a code cannot be analysed")
    csrc = source.parent
    h = hashlib.sha256(source.read_bytes())
    for p in sorted(csrc.glob("*.h")) + sorted(csrc.glob("*.cuh")):
        h.update(p.name.encode() + p.read_bytes())
    out_dir = cubin.CACHE / f"cuda-{source.stem}-{h.hexdigest()[:16]}"
    done = out_dir / "stats.json"
    if done.exists():
        return json.loads(done.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "build_info.h").write_text('#pragma once\n#define VITPOSE_CUDA_ARCHS "90a-real"\n'
                                          '#define VITPOSE_NVCC_VERSION "cost model"\n')
    cmd = [nvcc, "-cubin", "-arch=sm_90a", "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-v",
           f"-I{csrc}", f"-I{out_dir}", str(source), "-o", str(out_dir / "k.cubin")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"cost model: {' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    sass = cubin.sass_stats((out_dir / "k.cubin").read_bytes())
    ptxas = cubin.parse_ptxas_log(run.stderr)
    names = cubin.demangle(list(sass))
    stats = {short_name(names[m]): dict(mangled=m, sass=sass[m], ptxas=ptxas.get(m, {})) for m in sass}
    done.write_text(json.dumps(stats))
    return stats


def machine_code(launches: list[Launch]) -> list[dict]:
    stats = cubin_stats()
    out = []
    for lnch in launches:
        s = stats.get(lnch.kernel)
        if s is None:
            raise RuntimeError(f"cost model: kernel {lnch.kernel} not in the sm_90a cubin (has {sorted(stats)})")
        warps = -(-lnch.options["block"][0] * lnch.options["block"][1] * lnch.options["block"][2] // 32)
        out.append(cubin.summarize({s["mangled"]: s["sass"]}, {s["mangled"]: s["ptxas"]}, s["mangled"],
                                   lnch.options["smem"], warps))
    return out

