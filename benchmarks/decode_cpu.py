"""decode_heatmaps on CPU tensors: the CPU backend against the reference and mmpose's UDPHeatmap.decode.

    python benchmarks/decode_cpu.py                  # 1024 instances x 17 maps of 64x48, 1 and 2 threads
    python benchmarks/decode_cpu.py --instances 256 --threads 1

Rows (instances per second, median of --rep runs over the whole batch):
  cpu backend            vitpose_kernels.decode_heatmaps on CPU tensors (the default there): input
                         checks, then the CPU backend (blur only around each maximum, vectorised)
  cpu backend, kernel    the same without the input checks (what the dispatcher runs after them)
  input checks           vitpose_kernels' validation alone (_prepare_decode_heatmaps)
  reference              backend="reference": the spec, full-map blur as two conv2d
  mmpose (numpy+cv2)     mmpose 1.x UDPHeatmap.decode, one instance at a time as mmpose calls it.
                         mmpose cannot be installed here: this is a re-implementation written for
                         this benchmark from mmpose's code (get_heatmap_maximum, gaussian_blur with
                         cv2.GaussianBlur on a zero-padded copy, refine_keypoints_dark_udp), in
                         numpy + OpenCV as mmpose runs it. The issue measured mmpose itself at
                         ~1,450 instances/s on one thread of this machine kind.
Plus the largest keypoint difference of each row to the reference, in heatmap pixels.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MMPOSE_MEASURED = 1450  # instances/s, mmpose's UDPHeatmap.decode, one thread (issue 17)


# ----------------------------------------------------------------------------- cases

def heatmaps(n: int, K: int = 17, H: int = 64, W: int = 48, seed: int = 0) -> torch.Tensor:
    """A trained model's heatmaps: one Gaussian peak (sigma 2, as UDP targets) per map, some near
    or past the border, amplitude 0.3-1, over low noise."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, K, 2, generator=g) * torch.tensor([W + 2.0, H + 2.0]) - 1.0
    ys, xs = torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32)
    d2 = (xs - centre[..., 0, None, None]) ** 2 + (ys[:, None] - centre[..., 1, None, None]) ** 2
    amp = 0.3 + 0.7 * torch.rand(n, K, 1, 1, generator=g)
    return (amp * torch.exp(-d2 / 8.0) + 0.01 * torch.rand(n, K, H, W, generator=g)).contiguous()


# ----------------------------------------------------------------------------- peers

def mmpose_udp_decode(maps: np.ndarray, input_size=(192, 256), kernel: int = 11):
    """mmpose 1.x UDPHeatmap.decode of one instance, (K, H, W) float32 -> keypoints (K, 2) in
    crop pixels, scores (K,). Written for this benchmark after mmpose's code, step for step."""
    import cv2
    K, H, W = maps.shape
    flat = maps.reshape(K, -1)
    best = np.argmax(flat, axis=1)
    locs = np.stack([best % W, best // W], axis=-1).astype(np.float32)
    scores = np.amax(flat, axis=1)
    locs[scores <= 0.0] = -1
    # gaussian_blur: each map on a zero canvas grown by the kernel radius, blurred by OpenCV,
    # cropped back and rescaled to the map's own maximum
    r = (kernel - 1) // 2
    blurred = maps.copy()
    for k in range(K):
        top = np.max(blurred[k])
        canvas = np.zeros((H + 2 * r, W + 2 * r), dtype=np.float32)
        canvas[r:-r, r:-r] = blurred[k]
        canvas = cv2.GaussianBlur(canvas, (kernel, kernel), 0)
        blurred[k] = canvas[r:-r, r:-r]
        blurred[k] *= top / np.max(blurred[k])
    np.clip(blurred, 1e-3, 50.0, blurred)
    np.log(blurred, blurred)
    # refine_keypoints_dark_udp: central differences on the edge-padded log-maps, one Newton step
    padded = np.pad(blurred, ((0, 0), (1, 1), (1, 1)), mode="edge").ravel()
    at = (locs[:, 0] + 1 + (locs[:, 1] + 1) * (W + 2) + (W + 2) * (H + 2) * np.arange(K)).astype(int)[:, None]
    c = padded[at]
    xp, xm, yp, ym = padded[at + 1], padded[at - 1], padded[at + W + 2], padded[at - W - 2]
    xyp, xym = padded[at + W + 3], padded[at - W - 3]
    grad = np.concatenate([0.5 * (xp - xm), 0.5 * (yp - ym)], axis=1).reshape(K, 2, 1)
    dxx, dyy = xp - 2 * c + xm, yp - 2 * c + ym
    dxy = 0.5 * (xyp - xp - yp + c + c - xm - ym + xym)
    hess = np.concatenate([dxx, dxy, dxy, dyy], axis=1).reshape(K, 2, 2)
    hess = np.linalg.inv(hess + np.finfo(np.float32).eps * np.eye(2))
    locs = locs - np.einsum("imn,ink->imk", hess, grad).squeeze(-1)
    return locs / np.array([W - 1, H - 1]) * np.array(input_size), scores


# ----------------------------------------------------------------------------- the run

def run(args, rows, notes):
    import vitpose_kernels as vk
    from vitpose_kernels import ops
    from vitpose_kernels.cpu_backend.decode_heatmaps import decode_heatmaps as cpu_kernel
    hm = heatmaps(args.instances)
    B, K, H, W = hm.shape
    lattice = dict(input_size=(W - 1, H - 1))  # keypoints in heatmap pixels: errors read directly
    ref_kp, ref_sc = vk.decode_heatmaps(hm, backend="reference", **lattice)
    prepared = ops._prepare_decode_heatmaps(hm, **lattice)
    flip = dict(flip_heatmaps=heatmaps(args.instances, seed=1), flip_indices=list(range(K)))
    cases = {
        "cpu backend": lambda: vk.decode_heatmaps(hm, **lattice),
        "cpu backend, kernel": lambda: cpu_kernel(*prepared),
        "input checks": lambda: ops._prepare_decode_heatmaps(hm, **lattice),
        "cpu backend, flip test": lambda: vk.decode_heatmaps(hm, **flip, **lattice),
        "reference": lambda: vk.decode_heatmaps(hm, backend="reference", **lattice),
        "mmpose (numpy+cv2)": lambda: [mmpose_udp_decode(m, (W - 1, H - 1)) for m in hm.numpy()],
    }
    import cv2
    for threads in args.threads:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        for name, fn in cases.items():
            if name == "reference" and args.skip_reference:
                continue
            reps = 1 if name in ("reference", "mmpose (numpy+cv2)") else args.rep
            t = common.bench(fn, device="cpu", warmup=1 if reps > 1 else 0, rep=reps, max_seconds=30)
            row = {"what": name, "threads": threads, "instances": B, **t,
                   "instances_per_s": B / (t["median_ms"] * 1e-3)}
            out = fn() if name in ("cpu backend", "mmpose (numpy+cv2)") and threads == args.threads[0] else None
            if name == "cpu backend":
                row["max_kp_diff_px"] = float((out[0] - ref_kp).abs().max())
                row["scores_equal"] = bool(torch.equal(out[1], ref_sc))
            elif out is not None:
                kp = torch.from_numpy(np.stack([o[0] for o in out])).float()
                found = ref_sc > 0  # mmpose marks maps whose maximum is <= 0 with -1 (see the reference)
                row["max_kp_diff_px"] = float((kp - ref_kp)[found].abs().max())
            rows.append(row)
    notes.append(f"mmpose's own UDPHeatmap.decode, measured in issue 17 on this machine kind: "
                 f"{MMPOSE_MEASURED} instances/s on one thread")


def render(results) -> str:
    body = [[r["what"], str(r["threads"]), f"{r['median_ms']:.1f}", f"{r['instances_per_s']:,.0f}",
             common.fmt(r.get("max_kp_diff_px"), ".2g")] for r in results["rows"]]
    table = common.format_table(["decode of %d x 17 maps 64x48" % results["instances"], "threads", "ms",
                                 "instances/s", "max |kp - ref| px"], body)
    return "\n".join([common.environment_line(results["environment"]), "", table, ""]
                     + [f"note: {n}" for n in results["notes"]])


def plot(results, path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    rows = [r for r in results["rows"] if r["threads"] == min(r2["threads"] for r2 in results["rows"])]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["what"] for r in rows], [r["instances_per_s"] for r in rows])
    ax.axvline(MMPOSE_MEASURED, color="k", ls="--", lw=1, label="mmpose measured (issue 17)")
    ax.set_xscale("log")
    ax.set_xlabel("instances / s (one thread)")
    ax.legend(fontsize=7)
    return common.save_figure(plt, fig, path, "decode_heatmaps on CPU", results["environment"])


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--instances", type=int, default=1024)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--skip-reference", action="store_true", help="the reference takes ~10 s per batch")
    common.add_run_args(p, rep=5)
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if args.smoke:
        args.instances, args.threads, args.rep = 16, args.threads[:1], 2
    t0 = time.perf_counter()
    results = {"environment": common.environment("cpu"), "instances": args.instances, "rows": [], "notes": []}
    run(args, results["rows"], results["notes"])
    common.finish(results, args.out, "decode_cpu" + ("_smoke" if args.smoke else ""), render, plot, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
