"""Helpers shared by the benchmarks: timing, the environment record, hardware floors, output files.

Every benchmark prints its table with the peer, the paper and the hardware floor side by side and
writes JSON (+ a PNG) whose "environment" block says where and when the numbers were taken.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
MIB = 2 ** 20

# Vendor datasheet peaks (dense, no sparsity). Printed beside the measured peaks so a reader sees
# how far the achievable roofline is from the advertised one; floors use the *measured* peaks.
NOMINAL = {
    # name fragment: (bf16 dense TFLOP/s, HBM TB/s)
    "H200": (989.0, 4.8),
    "H100 80GB HBM3": (989.0, 3.35),  # SXM
    "H100 PCIe": (756.0, 2.0),
    "H100 NVL": (835.0, 3.9),
    "A100-SXM4-80GB": (312.0, 2.04),
    "A100-SXM4-40GB": (312.0, 1.56),
    "A100": (312.0, 1.94),
}


# ----------------------------------------------------------------------------- environment

def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()} ({os.cpu_count()} logical cores visible)"


def environment(device: torch.device | str | None = None) -> dict:
    """Where and when: device, versions, date, commit; attached to every JSON we write."""
    env = {
        "device": device_name(device),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        import vitpose_kernels
        env["vitpose_kernels"] = vitpose_kernels.__version__
        env["backends"] = {op: {b: (why or "available") for b, why in table.items()}
                           for op, table in vitpose_kernels.backends().items()}
    except Exception as e:  # the environment record must never stop a benchmark
        env["vitpose_kernels"] = f"unavailable ({e})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        env["capability"] = f"sm_{props.major}{props.minor}"
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


def environment_line(env: dict) -> str:
    parts = [env["device"], f"torch {env['torch']}", f"triton {env.get('triton')}"]
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    parts += [env["date_utc"], f"commit {env['git_commit'][:12]}"]
    return " | ".join(parts)


def import_vitpose(*needed: str):
    """The vitpose package, checked for the entry points a benchmark needs.

    An editable install made while vitpose/ was still empty maps it as a namespace package (no
    attributes); then fall back to this checkout's copy. Only vitpose is re-imported: the
    installed vitpose_kernels (with its compiled extension) is left as it is.
    """
    import importlib
    import sys

    mod = importlib.import_module("vitpose")
    if getattr(mod, "__file__", None) is None and str(REPO) not in sys.path:
        sys.modules.pop("vitpose", None)
        sys.path.insert(0, str(REPO))
        mod = importlib.import_module("vitpose")
    missing = [n for n in needed if not hasattr(mod, n)]
    if missing:
        raise ImportError(f"vitpose at {getattr(mod, '__file__', None)} lacks {missing}")
    return mod


# ----------------------------------------------------------------------------- timing

def sync(device: torch.device | str | None = None) -> None:
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize()


_L2_FLUSH: dict = {}


def flush_l2(device: torch.device) -> None:
    """Evict the GPU's L2 before a timed rep (a write over a buffer larger than any L2 today,
    256 MiB): a kernel re-reading inputs that the previous rep left in a 50 MB L2 would otherwise
    be timed at cache speed, which favours small inputs and multi-pass kernels unequally."""
    if device.type != "cuda":
        return
    buf = _L2_FLUSH.get(device)
    if buf is None:
        buf = _L2_FLUSH[device] = torch.empty(64 * 2 ** 20, dtype=torch.int32, device=device)
    buf.zero_()


def bench(fn: Callable[[], object], *, device="cuda", warmup: int = 3, rep: int = 20,
          max_seconds: float = 5.0, flush: bool = True) -> dict:
    """Median time of fn() in milliseconds (CUDA events on a GPU, perf_counter on CPU).

    The median, not the mean: the device is shared and a single preempted rep must not move the
    figure. Stops early after max_seconds of measured reps (at least 3 reps are always taken).
    On a GPU the L2 is flushed before every timed rep (flush_l2; outside the events), so every
    peer starts from HBM.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_start = time.perf_counter()
    for i in range(rep):
        if device.type == "cuda":
            if flush:
                flush_l2(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if i >= 2 and time.perf_counter() - t_start > max_seconds:
            break
    times.sort()
    q = max(1, len(times) // 4)
    return {"median_ms": statistics.median(times), "p25_ms": times[q - 1], "p75_ms": times[-q],
            "reps": len(times), "l2_flushed": bool(flush and device.type == "cuda")}


class Budget:
    """Wall-clock budget of a benchmark run: stop starting measurements once spent, so a run
    inside a fixed device lease still writes its JSON (the rows not run say 'skipped').
    None or inf: unlimited."""

    def __init__(self, seconds: float | None):
        self.seconds = float("inf") if seconds is None else float(seconds)
        self.end = time.perf_counter() + self.seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, need_s: float = 0.0) -> bool:
        """Whether a measurement expected to take about need_s seconds may still start."""
        return self.left() > need_s

    def skip_reason(self, need_s: float = 0.0) -> str:
        if self.left() <= 0:
            return "time budget spent (--budget-s)"
        return f"time budget: {self.left():.0f} s left, this measurement needs ~{need_s:.0f} s (--budget-s)"


def skip_reason(e: BaseException) -> str:
    """One line for a measurement that failed: NotImplementedError (a forced backend that cannot
    serve the call) gives its reasons as they are; OOM says so; anything else is typed."""
    if isinstance(e, NotImplementedError):
        return " ".join(str(e).split())
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of memory"
    return f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}"


class Interrupted(Exception):
    """Raised in the main thread by SIGTERM (e.g. `timeout`): the benchmark stops where it is and
    still writes what it measured so far."""


def stop_on_sigterm() -> None:
    import signal

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second TERM kills
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def peak_memory(fn: Callable[[], object], device) -> dict | None:
    """Peak allocated bytes of one fn() above what was allocated before it (CUDA only)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"before_bytes": before, "peak_bytes": peak, "peak_above_before_bytes": peak - before}


# ----------------------------------------------------------------------------- targets

def check(issue: int, what: str, value: float | None, target: float, *, at_most: bool = False,
          unit: str = "x", why_missing: str = "not measured") -> dict:
    """One of the issues' performance targets: PASS / MISS, or n/a with the reason."""
    op = "<=" if at_most else ">="
    row = {"issue": issue, "what": what, "value": value, "target": f"{op} {target:g}{unit}"}
    if value is None:
        row["status"] = f"n/a ({why_missing})"
    else:
        row["status"] = "PASS" if (value <= target if at_most else value >= target) else "MISS"
    return row


def not_judged(checks: Sequence[dict], why: str) -> None:
    """Targets are set for the H100 at full shapes: elsewhere the value is shown, not judged."""
    for c in checks:
        if c["status"] in ("PASS", "MISS"):
            c["status"] = f"not judged ({why})"


def render_checks(checks: Sequence[dict], title: str = "targets (the issues' performance goals)") -> str:
    if not checks:
        return ""
    body = [[f"#{c['issue']}", c["what"], fmt(c["value"], ".3g"), c["target"], c["status"]] for c in checks]
    return f"{title}\n" + format_table(["issue", "check", "value", "target", "status"], body,
                                          align="<<>><")


# ----------------------------------------------------------------------------- hardware floors

def nominal_peaks(name: str) -> tuple[float, float] | None:
    for frag, peaks in NOMINAL.items():
        if frag in name:
            return peaks
    return None


def measure_peaks(device="cuda", dtype=torch.bfloat16) -> dict:
    """Achievable peaks measured here: a large matmul (TFLOP/s) and a large copy (TB/s).

    These are the floors the kernels are held against: time >= max(bytes / bandwidth,
    flops / matmul peak). On a CPU they are measured too (small sizes), but only as context.
    """
    device = torch.device(device)
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = bench(lambda: torch.mm(a, b), device=device, warmup=3, rep=10, max_seconds=2)["median_ms"]
    tflops = 2 * n ** 3 / (t * 1e-3) / 1e12
    numel = (2 ** 28 if device.type == "cuda" else 2 ** 24)  # 1 GiB / 64 MiB of fp32
    src = torch.empty(numel, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), device=device, warmup=3, rep=10, max_seconds=2)["median_ms"]
    tbps = 2 * src.numel() * 4 / (t * 1e-3) / 1e12
    del a, b, src, dst
    out = {"matmul_tflops": tflops, "matmul_dtype": str(dtype).replace("torch.", ""),
           "copy_tbps": tbps, "nominal": None}
    nom = nominal_peaks(device_name(device))
    if nom is not None:
        out["nominal"] = {"bf16_tflops": nom[0], "hbm_tbps": nom[1]}
    return out


def floor_ms(flops: float, nbytes: float, peaks: dict) -> float:
    """The roofline floor for one call: whichever of compute and memory traffic takes longer."""
    return max(flops / (peaks["matmul_tflops"] * 1e12), nbytes / (peaks["copy_tbps"] * 1e12)) * 1e3


def floors(flops: float, nbytes: float, peaks: dict, phase: str) -> dict:
    """PHASE_bw_floor_ms (bytes / measured bandwidth), PHASE_flop_floor_ms (FLOPs / measured
    matmul peak) and PHASE_ms, the larger of the two."""
    bw = nbytes / (peaks["copy_tbps"] * 1e12) * 1e3
    fl = flops / (peaks["matmul_tflops"] * 1e12) * 1e3
    return {f"{phase}_bw_floor_ms": bw, f"{phase}_flop_floor_ms": fl, f"{phase}_ms": max(bw, fl)}


def peaks_line(peaks: dict) -> str:
    line = (f"matmul {peaks['matmul_tflops']:.3g} TFLOP/s ({peaks['matmul_dtype']}), "
            f"copy {peaks['copy_tbps'] * 1e3:.0f} GB/s (read + write)")
    if peaks.get("nominal"):
        line += f"; datasheet {peaks['nominal']['bf16_tflops']:.0f} TFLOP/s, {peaks['nominal']['hbm_tbps']:.2f} TB/s"
    return line


# ----------------------------------------------------------------------------- output

def out_dir(path: str | os.PathLike | None) -> Path:
    d = Path(path) if path else DEFAULT_OUT
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_json(payload: dict, directory: Path, stem: str) -> Path:
    path = directory / f"{stem}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)  # never a half-written JSON, even when killed while writing
    return path


def add_run_args(p, *, rep: int = 20, budget_help: str = "") -> None:
    """The flags every benchmark shares: --rep, --budget-s, --smoke, --out."""
    p.add_argument("--rep", type=int, default=rep, help="timed repetitions per measurement (median)")
    p.add_argument("--budget-s", type=float, default=None,
                   help=budget_help or "start no new measurement after this many seconds (rows say "
                                       "'skipped'); the JSON is still written")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on any device: checks the harness only")
    p.add_argument("--out", default=None, help="directory for JSON + PNG (default benchmarks/results)")


def finish(results: dict, out: str | os.PathLike | None, stem: str, render: Callable[[dict], str],
           plot: Callable[[dict, Path], bool] | None = None, t0: float | None = None) -> Path:
    """Print the table, write STEM.json (+ STEM.png) under out, say where. A failing plot or a
    missing matplotlib costs the PNG only."""
    if t0 is not None:
        results["seconds"] = time.perf_counter() - t0
    print(render(results), flush=True)
    d = out_dir(out)
    path = save_json(results, d, stem)
    png, made = d / f"{stem}.png", False
    if plot is not None:
        try:
            made = plot(results, png)
        except Exception as e:  # the numbers matter more than the picture
            print(f"(no PNG: {type(e).__name__}: {e})")
    secs = f"  [{results['seconds']:.1f} s]" if "seconds" in results else ""
    print(f"\nwrote {path}" + (f" and {png}" if made else " (no PNG)") + secs, flush=True)
    return path


def fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
    if value is None:
        return missing
    if isinstance(value, str):
        return value
    return format(value, spec)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, align: str | None = None) -> str:
    """Plain fixed-width table; the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ("<" + ">" * (len(headers) - 1))

    def line(r):
        return "  ".join(format(c, f"{a}{w}") for c, a, w in zip(r, align, widths)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def parser(doc: str):
    """The benchmarks' argument parser: its description is the module docstring's first line."""
    import argparse
    return argparse.ArgumentParser(description=doc.split("\n")[0])


def save_figure(plt, fig, path: Path, title: str, env: dict) -> bool:
    """Stamp the figure with where and when it was measured, write it, close it."""
    fig.suptitle(f"{title} - {env['device']}, torch {env['torch']}, {env['date_utc'][:10]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pyplot():
    """matplotlib with a non-interactive backend, or None (the benchmark then skips the PNG)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None
