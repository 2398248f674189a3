"""What a run writes as it goes (rank 0): RUN/log.csv (a row per logged step), RUN/eval.csv (a row
per evaluation), TensorBoard events in RUN/tb when tensorboard is installed, RUN/curves.png (loss
and AP) and RUN/metrics.json."""
from __future__ import annotations

import csv
import json
import os
import resource

import torch

from .checkpoint import atomic_write_bytes

STEP_FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "peak_mem_mib")


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """(MiB, what): CUDA's max allocated on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak alloc"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"


def _truncate_csv(path: str, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (a run killed after its last checkpoint logs them again)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= last_step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


class RunLog:
    def __init__(self, run_dir: str, enabled: bool, resume_step: int | None = None):
        self.run_dir, self.enabled = run_dir, enabled
        self.step_csv = os.path.join(run_dir, "log.csv")
        self.eval_csv = os.path.join(run_dir, "eval.csv")
        self.tb = None
        if not enabled:
            return
        if resume_step is not None:
            _truncate_csv(self.step_csv, resume_step)
            _truncate_csv(self.eval_csv, resume_step)
        else:
            for p in (self.step_csv, self.eval_csv):
                if os.path.exists(p):
                    os.remove(p)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=resume_step)
        except Exception:  # tensorboard not installed: the CSV files hold the same numbers
            self.tb = None

    def _append(self, path: str, row: dict, fields) -> None:
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def step(self, row: dict) -> None:
        if not self.enabled:
            return
        self._append(self.step_csv, row, STEP_FIELDS + tuple(k for k in row if k not in STEP_FIELDS))
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def evaluation(self, row: dict) -> None:
        if not self.enabled:
            return
        self._append(self.eval_csv, row, list(row))
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"val/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(run_dir: str, title: str = "") -> str | None:
    """RUN/curves.png: training loss against steps, COCO AP against epochs. None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = read_csv(os.path.join(run_dir, "log.csv"))
    evals = read_csv(os.path.join(run_dir, "eval.csv"))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        a.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], lw=1)
        a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("training loss (JointsMSE)")
    a.grid(alpha=0.3)
    if evals:
        b.plot([float(r["epoch"]) for r in evals], [float(r["coco_ap"]) for r in evals], "o-")
    b.set_xlabel("epoch")
    b.set_ylabel("COCO AP (val)")
    b.set_ylim(0, 1)
    b.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = os.path.join(run_dir, "curves.png")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_json(path: str, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=_jsonable).encode())


def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)
