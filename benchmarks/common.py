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


def bench(fn: Callable[[], object], *, device="cuda", warmup: int = 3, rep: int = 20,
          max_seconds: float = 5.0) -> dict:
    """Median time of fn() in milliseconds (CUDA events on a GPU, perf_counter on CPU).

    The median, not the mean: the device is shared and a single preempted rep must not move the
    figure. Stops early after max_seconds of measured reps (at least 3 reps are always taken).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_start = time.perf_counter()
    for i in range(rep):
        if device.type == "cuda":
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
            "reps": len(times)}


class Budget:
    """Wall-clock budget of a benchmark run: stop starting measurements once spent, so a run
    inside a fixed device lease still writes its JSON (the rows not run say 'skipped')."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


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


# ----------------------------------------------------------------------------- output

def out_dir(path: str | os.PathLike | None) -> Path:
    d = Path(path) if path else DEFAULT_OUT
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_json(payload: dict, directory: Path, stem: str) -> Path:
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
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


def pyplot():
    """matplotlib with a non-interactive backend, or None (the benchmark then skips the PNG)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None
