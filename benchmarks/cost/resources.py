"""ptxas' resource report of a CUDA source, per kernel instantiation and arch, as the markdown tables
of csrc/RESOURCES.md:

    python benchmarks/cost/resources.py csrc/window_attention.cu --launches  # sm_90a and sm_80
    python benchmarks/cost/resources.py csrc/masked_attention.cu --dtype fp16

Compiles `source` with the device-code flags CMakeLists.txt gives it (a Release build, as setup.py
drives CMake) plus -Xptxas=-v, once per arch (`-gencode=arch=compute_X,code=sm_X`, -cubin), and
reads registers / stack frame / static shared memory / local memory from the cubin (cuobjdump) and
the spill bytes from ptxas' log, both with benchmarks/cost/cubin.py; results are cached under
build/cost_model by the sources' hash. With --launches (window_attention only), the dynamic shared
memory of every launch of the cost model's window_attention cases, recorded by the CPU emulator's
dry mode (the real host code, tests/cuda_emulator), and the CTAs per SM that allows on an H100.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cost import cubin, cuda_counter  # noqa: E402
from cost.cuda_counter import _nvcc, short_name  # noqa: E402

REPO = cubin.REPO
# CMakeLists.txt's CUDA compile options + CMake's Release flags and the pybind11 module's defaults
# (read from the generated build.ninja); the host-only ones do not change device code.
FLAGS = ["-O3", "-DNDEBUG", "-Xcompiler=-fPIC", "-Xcompiler=-fvisibility=hidden", "--expt-relaxed-constexpr",
         "-lineinfo", "-Xcompiler=-Wall", "-std=c++17", "-D_C_EXPORTS", "-Xptxas=-v"]
WARPS = 4  # every window_attention / masked_attention kernel runs 128 threads (kThreads)


def compile_arch(source: Path, arch: str) -> dict[str, dict]:
    """{demangled kernel: regs, stack, static_smem, local, spill_stores, spill_loads} for sm_`arch`."""
    csrc = source.parent
    h = hashlib.sha256(source.read_bytes() + " ".join(FLAGS).encode())
    for p in sorted(csrc.glob("*.h")) + sorted(csrc.glob("*.cuh")):
        h.update(p.name.encode() + p.read_bytes())
    out_dir = cubin.CACHE / f"resources-{source.stem}-sm_{arch}-{h.hexdigest()[:16]}"
    done = out_dir / "stats.json"
    if done.exists():
        return json.loads(done.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "build_info.h").write_text('#pragma once\n#define VITPOSE_CUDA_ARCHS "resources"\n'
                                          '#define VITPOSE_NVCC_VERSION "resources"\n')
    cmd = [_nvcc(), "-cubin", f"-gencode=arch=compute_{arch},code=sm_{arch}", *FLAGS, f"-I{csrc}", f"-I{out_dir}",
           str(source), "-o", str(out_dir / "k.cubin")]
    t0 = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    (out_dir / "ptxas.log").write_text(" ".join(cmd) + "\n" + run.stderr)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    print(f"sm_{arch}: compiled in {time.time() - t0:.0f} s", file=sys.stderr)
    sass = cubin.sass_stats((out_dir / "k.cubin").read_bytes())
    ptxas = cubin.parse_ptxas_log(run.stderr)
    missing = sorted(set(sass) - set(ptxas))
    if missing:  # a function without its spill line would read as "0 spills"
        raise RuntimeError(f"ptxas -v reported nothing for {missing} (see {out_dir / 'ptxas.log'})")
    names = cubin.demangle(list(sass))
    stats = {names[m]: dict(regs=s["regs"], stack=s["stack"], static_smem=s["static_smem"], local=s["local"],
                            spill_stores=ptxas[m]["spill_stores"], spill_loads=ptxas[m]["spill_loads"])
             for m, s in sass.items()}
    done.write_text(json.dumps(stats, indent=1))
    return stats


def split_name(name: str) -> tuple[str, list[str]]:
    """'void ns::(anonymous namespace)::wa_fwd_kernel<__nv_bfloat16, 64, false>(Params, Plan)' ->
    ('wa_fwd_kernel', ['bf16', '64', 'false'])."""
    m = re.match(r"(\w+)(?:<(.*)>)?$", short_name(name))
    if not m:
        return name, []
    short = {"__nv_bfloat16": "bf16", "__half": "fp16"}
    return m[1], [short.get(a.strip(), a.strip()) for a in (m[2] or "").split(",") if a.strip()]


def source_order(source: Path) -> dict[str, int]:
    """Kernel name -> its position in the source (rows in the order the file defines them)."""
    text = source.read_text()
    return {m[1]: m.start() for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", text)}


def _joined(values: list) -> str:
    """'0' when every arch agrees, else 'a / b'."""
    return str(values[0]) if len(set(values)) == 1 else " / ".join(map(str, values))


def table(stats: dict[str, dict[str, dict]], dtype: str, order: dict[str, int]) -> str:
    """One row per kernel instantiation of `dtype` (and the dtype-free ones), registers per arch."""
    archs = list(stats)
    rows = {}
    for arch in archs:
        for name, s in stats[arch].items():
            kern, args = split_name(name)
            if args and args[0] in ("bf16", "fp16") and args[0] != dtype:
                continue
            rows.setdefault((kern, tuple(a for a in args if a not in ("bf16", "fp16"))), {})[arch] = s
    head = (["kernel", "template args"] + [f"regs sm_{a}" for a in archs]
            + ["stack", "spill st/ld", "local", "CTAs/SM by regs (sm_90)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def key(kv):
        (kern, args), _ = kv
        return order.get(kern, 1 << 30), kern, [a.zfill(4) for a in args]

    for (kern, args), per in sorted(rows.items(), key=key):
        got = [per[a] for a in archs if a in per]
        lines.append("| " + " | ".join(
            [kern, ", ".join(args) or "-"] + [str(per[a]["regs"]) if a in per else "" for a in archs]
            + [_joined([s["stack"] for s in got]), _joined([f"{s['spill_stores']}/{s['spill_loads']}" for s in got]),
               _joined([s["local"] for s in got]),
               str(cubin.occupancy(per["90a"]["regs"], 1, WARPS)) if "90a" in per else ""]) + " |")
    return "\n".join(lines)


def dtype_diff(stats: dict[str, dict[str, dict]]) -> list[str]:
    """Where the fp16 instantiation's resources differ from bf16's."""
    out = []
    keys = ("regs", "stack", "static_smem", "local", "spill_stores", "spill_loads")
    for arch, per in stats.items():
        for name, s in per.items():
            if "__half" not in name:
                continue
            b = per.get(name.replace("__half", "__nv_bfloat16"))
            if b is None or any(s[k] != b[k] for k in keys):
                out.append(f"sm_{arch} {short_name(name)}: "
                           + ("no bf16 twin" if b is None else
                              ", ".join(f"{k} {s[k]} vs bf16 {b[k]}" for k in keys if s[k] != b[k])))
    return out


# Extra geometries for the launch check: the head-dim classes and plan branches the cost model's
# cases do not reach (large tiles with global tokens, pooling + rel-pos, DP 96 / 128).
EXTRA = [
    ("d128-window8x8-shift-pool-relpos", dict(D=128, grid=(16, 12), window=(8, 8), shift=(4, 4), pool=True,
                                              rel_pos=True)),
    ("d96-window16x16-3global", dict(D=96, grid=(16, 16), window=(16, 16), num_global=3)),
    ("d80-window7x7-pool", dict(D=80, grid=(14, 14), window=(7, 7), pool=True)),
    ("d128-window12x12-shift-relpos", dict(D=128, grid=(24, 24), window=(12, 12), shift=(6, 6), rel_pos=True)),
    ("d32-window8x8-5global-relpos", dict(D=32, grid=(16, 16), window=(8, 8), num_global=5, rel_pos=True)),
]


def launches(sm90: dict[str, dict] | None) -> str:
    """Every CUDA launch of forward + backward (B = H = 1) of the cost model's window_attention
    cases and EXTRA, recorded by the CPU emulator's dry mode: kernel, grid, dynamic shared memory;
    with the sm_90a stats, the CTAs per SM on an H100 (registers, shared memory + 1 KB reserve)."""
    import cost_model  # benchmarks/cost_model.py: its cases, and the op run as the model runs it

    cuda_counter.enable_in_this_process()
    backend = cost_model.BACKENDS["cuda"]
    why = backend.reason()
    if why:
        raise RuntimeError(why)
    cases = [c for c in cost_model.all_cases() if c.op == "window_attention"]
    cases += [cost_model.Case(n, cost_model.geometry.Geometry(B=1, H=1, **g), "") for n, g in EXTRA]
    regs = {short_name(n): s["regs"] for n, s in (sm90 or {}).items()}
    lines = ["| case | D, N, E = P + G, rel rows | kernel | CTAs per (b, h) | dynamic smem (B) | CTAs/SM H100 |",
             "|---|---|---|---|---|---|"]
    no_smem = set()
    for case in cases:
        g = case.geom
        got, _, _ = cost_model.run_op(case, backend, "fwd+bwd", 1, 1, dry=True)
        rel = 2 * sum(g.win) - 2 if g.rel_pos else 0
        what = f"{g.D}, {g.N}, {g.num_pooled} + {g.num_global}, {rel}"
        for lnch in got:
            k, args = split_name(lnch.kernel)
            if not lnch.options["smem"]:
                no_smem.add(k)
                continue
            r = regs.get(lnch.kernel)
            warps = -(-lnch.options["block"][0] * lnch.options["block"][1] * lnch.options["block"][2] // 32)
            ctas = "" if r is None else cubin.occupancy(r, lnch.options["smem"] + cubin.SM90["smem_reserved_per_cta"],
                                                        warps)
            lines.append(f"| {case.name} | {what} | {k}<{', '.join(args)}> | {lnch.grid[0]} | "
                         f"{lnch.options['smem']:,} | {ctas} |")
    return "\n".join(lines + ["", f"No dynamic shared memory (rows left out): {', '.join(sorted(no_smem))}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default=str(REPO / "csrc" / "window_attention.cu"))
    ap.add_argument("--arch", nargs="+", default=["90a", "80"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--jobs", type=int, default=1, help="archs compiled at once")
    ap.add_argument("--launches", action="store_true",
                    help="also the per-launch dynamic shared memory of window_attention (CPU emulator, dry run)")
    args = ap.parse_args()
    source = Path(args.source).resolve()
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as ex:
        stats = dict(zip(args.arch, ex.map(lambda a: compile_arch(source, a), args.arch)))
    print(table(stats, args.dtype, source_order(source)))
    print()
    for arch, per in stats.items():
        spills = [short_name(n) for n, s in per.items() if s["spill_stores"] or s["spill_loads"] or s["local"]]
        at_cap = sorted(short_name(n) for n, s in per.items() if s["regs"] >= 255)
        print(f"sm_{arch}: {len(per)} kernels, max {max(s['regs'] for s in per.values())} registers; "
              f"spills / local memory: {spills or 'none'}; at 255 registers: {at_cap or 'none'}; "
              f"stack max {max(s['stack'] for s in per.values())} B; cuobjdump SHARED max "
              f"{max(s['static_smem'] for s in per.values())} B"
              + (" (the 1 KB per-CTA system reserve)" if arch.startswith("9") else ""))
    diff = dtype_diff(stats)
    print("fp16 vs bf16: " + ("identical registers, stack, shared, local memory and spills" if not diff else ""))
    for d in diff:
        print("  " + d)
    print(f"({time.time() - t0:.0f} s)")
    if args.launches:
        print()
        print(launches(stats.get("90a")))


if __name__ == "__main__":
    main()
