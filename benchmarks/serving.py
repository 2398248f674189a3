"""Serving latency: crop + model + decode per batch-size bucket, eager against CUDA graphs and torch.compile (GPU).

    python benchmarks/serving.py                      # on a GPU: ViTPose-B, buckets 1..64, flip on
    python benchmarks/serving.py --sizes S,B --buckets 1,8 --budget-s 120
    python benchmarks/serving.py --smoke              # tiny model on the CPU: checks the harness only

Each row is one call of ``TopDownPredictor.run_boxes`` on N person boxes of one 1920x1080 frame
already on the device (what a video server does per frame): the host work (box layout, the copy
of the frame into the canvas), then crop (one grid_sample), the model on N crops plus their
mirrors, and decode_heatmaps to image pixels. Columns: median latency (CUDA events around the
whole call) and people per second (N / latency), for mode="eager", "graph" (each bucket one
CUDA-graph replay) and "compile" (torch.compile + graphs), and the speed-up of graph over eager.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODES = ("eager", "graph", "compile")


def frame_and_boxes(n: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (3, 1080, 1920), generator=g, dtype=torch.uint8).to(device)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([1700.0, 700.0])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([150.0, 300.0]) + torch.tensor([50.0, 80.0])
    return frame, torch.cat([xy, wh], 1).numpy()


def run(args, vp, device, rows, notes, budget):
    for size in args.sizes:
        cfg = vp.vitpose_config(size) if not args.smoke else vp.vitpose_config(size, embed_dim=32, depth=1, num_heads=2)
        with torch.device(device):
            base = vp.ViTPose(cfg).eval()
        for mode in args.modes:
            if not budget.allows(10):
                rows.append({"size": size, "mode": mode, "skipped": budget.skip_reason(10)})
                continue
            try:
                predictor = vp.TopDownPredictor(copy.deepcopy(base), device=device, batch_size=max(args.buckets),
                                                flip=not args.no_flip, mode=mode)
            except Exception as e:
                rows.append({"size": size, "mode": mode, "skipped": common.skip_reason(e)})
                continue
            for n in args.buckets:
                frame, boxes = frame_and_boxes(n, device)
                row = {"size": size, "mode": mode, "boxes": n}
                if not budget.allows(2):
                    rows.append({**row, "skipped": budget.skip_reason(2)})
                    continue
                try:
                    t = common.bench(lambda: predictor.run_boxes([frame], [0] * n, boxes), device=device,
                                     warmup=3, rep=args.rep, max_seconds=2)
                    row.update(t, people_per_s=n / (t["median_ms"] * 1e-3))
                except Exception as e:
                    row["skipped"] = common.skip_reason(e)
                rows.append(row)
            del predictor
            if device.type == "cuda":
                torch.cuda.empty_cache()
    by = {(r["size"], r["mode"], r.get("boxes")): r for r in rows if "median_ms" in r}
    for (size, mode, n), r in by.items():
        eager = by.get((size, "eager", n))
        if mode != "eager" and eager:
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]


def render(results) -> str:
    head = [common.environment_line(results["environment"]), f"flip test: {results['flip']}", ""]
    body = []
    for r in results["rows"]:
        if "skipped" in r:
            body.append([r["size"], r["mode"], common.fmt(r.get("boxes")), "-", "-", "-", r["skipped"][:60]])
        else:
            body.append([r["size"], r["mode"], str(r["boxes"]), f"{r['median_ms']:.3f}", f"{r['people_per_s']:,.0f}",
                         common.fmt(r.get("speedup_vs_eager"), ".2f"), ""])
    table = common.format_table(["size", "mode", "boxes", "ms", "people/s", "x eager", "note"], body,
                                align="<<>>>><")
    return "\n".join(head + [table] + [""] + [f"note: {n}" for n in results["notes"]])


def plot(results, path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for size in sorted({r["size"] for r in results["rows"]}):
        for mode in MODES:
            pts = [(r["boxes"], r["median_ms"]) for r in results["rows"]
                   if r["size"] == size and r["mode"] == mode and "median_ms" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{size} {mode}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("people per call (bucket)")
    ax.set_ylabel("latency, ms")
    ax.legend(fontsize=7)
    return common.save_figure(plt, fig, path, "serving latency", results["environment"])


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--sizes", default="B")
    p.add_argument("--buckets", default="1,2,4,8,16,32,64")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--no-flip", action="store_true")
    common.add_run_args(p, rep=50)
    args = p.parse_args(argv)
    common.stop_on_sigterm()
    args.sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    args.buckets = sorted(int(b) for b in args.buckets.split(",") if b.strip())
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    gpu = torch.cuda.is_available()
    if not gpu and not args.smoke:
        print("serving.py measures CUDA-graph latency on a GPU and none is visible here. Nothing measured "
              "(GPU-owed). `python benchmarks/serving.py --smoke` runs a tiny CPU check of the harness.")
        return 0
    if args.smoke:
        args.buckets, args.rep = args.buckets[:2], min(args.rep, 3)
        args.modes = args.modes if gpu else ["eager", "static"]
    device = torch.device("cuda" if gpu else "cpu")
    vp = common.import_vitpose("ViTPose", "vitpose_config", "TopDownPredictor")
    t0 = time.perf_counter()
    results = {"environment": common.environment(device), "smoke": args.smoke, "flip": not args.no_flip,
               "rows": [], "notes": [], "budget_s": args.budget_s}
    try:
        run(args, vp, device, results["rows"], results["notes"], common.Budget(args.budget_s))
    except common.Interrupted as e:
        results["notes"].append(f"interrupted ({e}): rows not run are missing")
    common.finish(results, args.out, f"serving_{'gpu' if gpu else 'cpu'}{'_smoke' if args.smoke else ''}",
                  render, plot, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
