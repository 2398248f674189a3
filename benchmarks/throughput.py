"""Table 9: ViTPose-S/B/L/H (and TokenPose-S/L) inference throughput at 256x192, this package against its peers (GPU).

    python benchmarks/throughput.py                         # on a GPU: every row, batch 64 and 256
    python benchmarks/throughput.py --sizes B,L --batches 64 --budget-s 240
    python benchmarks/throughput.py --smoke                 # tiny model on CPU: harness check only

Rows, images per second (median of CUDA-event timings), in one run:
  ours fused + graph   ViTPose with the fastest vitpose_kernels backend, bf16 weights, BatchNorm
                       folded, the whole forward replayed as one CUDA graph
  ours reference       the same model with the reference ops, bf16, eager
  hf eager / hf compiled  transformers' VitPoseForPoseEstimation (random weights, same sizes),
                       bf16, its backbone switched to SDPA attention, eager and torch.compile'd
  end-to-end           full images already on the GPU -> UDP crops -> model -> decode_heatmaps to
                       image pixels, flip test on and off (vitpose.TopDownPredictor.run_boxes);
                       for transformers: its image processor (CPU) + model + post-processing
  batch 1              latency of ours with and without the CUDA graph
  TokenPose-S / -L     (the paper's abbreviations: S-v2 and L/D24) fused, with and without the CUDA
                       graph, against the same model with plain PyTorch attention (the reference
                       ops: dense QK^T, softmax, PV), bf16, batch 64; --tokenpose "" skips them
  video                TAR-ViTPose (video, clips of T frames at 384x288, batch 16 as the paper's
                       Table 3): clips/s (= person-frames/s) with the fused masked attention and
                       with the reference ops, T = 5 (the default) and T = 3 (Table 3's setting;
                       the paper also reuses each frame's features across clips, we do not)
Beside each: the paper's fps (A100, batch 64, precision not stated) and the fraction of the bf16
roofline = forward FLOPs per image (torch.utils.flop_counter) x images/s / measured matmul peak.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PAPER_FPS = {"S": None, "B": 944, "L": 411, "H": 241}  # Table 9, A100, batch 64
TOKENPOSE = {"S": "tokenpose-s-v2", "L": "tokenpose-l-d24"}  # TokenPose Sec. 4.1: "S" and "L"
TAR_PAPER_FPS = {"S": 413, "B": 186, "L": None, "H": 28}  # TAR-ViTPose Table 3, A6000, batch 16, T = 3
HF_SIZES = {"S": (384, 12, 12), "B": (768, 12, 12), "L": (1024, 24, 16), "H": (1280, 32, 16)}


# ----------------------------------------------------------------------------- models

def ours(vp, size: str, backend, dtype, device, smoke: bool):
    cfg = vp.vitpose_config(size, backend=backend) if not smoke else vp.vitpose_config(
        size, embed_dim=64, depth=2, num_heads=2, backend=backend)
    with torch.device(device):  # initialized in place: ViT-H on the CPU takes seconds
        model = vp.ViTPose(cfg)
    return model.eval().to(device, dtype).fold_batchnorm()


def tokenpose(vp, which: str, backend, dtype, device, smoke: bool):
    kw = dict(backend=backend)
    if smoke:
        kw.update(dim=32, heads=2, depth=1, hidden_heatmap_dim=64, hrnet_width=8)
    with torch.device(device):
        model = vp.build_model(TOKENPOSE[which], **kw)
    return model.eval().to(device, dtype)


def hf_model(size: str, dtype, device, smoke: bool):
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation
    C, depth, heads = (64, 2, 2) if smoke else HF_SIZES[size]
    bc = VitPoseBackboneConfig(hidden_size=C, num_hidden_layers=depth, num_attention_heads=heads,
                               intermediate_size=4 * C, image_size=[256, 192], patch_size=[16, 16])
    # The classic decoder (two deconvolutions), as ours and as the paper's Table 9 models.
    with torch.device(device):
        model = VitPoseForPoseEstimation._from_config(VitPoseConfig(backbone_config=bc, num_labels=17,
                                                                    use_simple_decoder=False),
                                                      attn_implementation="eager")
    # VitPoseForPoseEstimation refuses attn_implementation="sdpa" (no flag on the wrapper), but its
    # backbone supports SDPA; switch the backbone, where attention runs.
    note = "SDPA"
    try:
        model.backbone.set_attn_implementation("sdpa")
    except Exception as e:
        note = f"eager attention (SDPA refused: {e})"
    return model.eval().to(device, dtype), note


def tar(vp, size: str, frames: int, backend, dtype, device, smoke: bool):
    tiny = dict(embed_dim=64, depth=2, num_heads=2, jta_layers=2, input_size=(64, 48)) if smoke else {}
    with torch.device(device):
        model = vp.build_model(f"tar-vitpose-{size.lower()}", frames=frames, backend=backend, **tiny)
    return model.eval().to(device, dtype).fold_batchnorm()


def forward_flops(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x[:1])
    return fc.get_total_flops()


def graphed(model, x):
    """The forward captured as one CUDA graph on a static input; returns replay()."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(s):
        for _ in range(3):  # warm up (autotuning, cuBLAS handles) outside the capture
            model(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(g):
        model(x)
    return g.replay


# ----------------------------------------------------------------------------- end to end

def synthetic_scene(n: int, device, seed=0):
    """n full images (3, 480, 640) uint8 already decoded on the device, one person box each."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8, generator=g).to(device) for _ in range(n)]
    boxes = torch.tensor([[100.0 + i % 50, 60.0, 180.0, 360.0] for i in range(n)])
    return images, torch.arange(n), boxes


def e2e_ours(vp, model, flip: bool, n: int, device):
    predictor = vp.TopDownPredictor(model, device=device, dtype=next(model.parameters()).dtype, flip=flip,
                                    batch_size=n, fold_batchnorm=False)
    images, index, boxes = synthetic_scene(n, device)
    return lambda: predictor.run_boxes(images, index, boxes)


def e2e_hf(model, n: int, device, dtype):
    import numpy as np
    import transformers
    from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput  # noqa: F401
    proc_cls = getattr(transformers, "VitPoseImageProcessorPil", None) or transformers.VitPoseImageProcessor
    proc = proc_cls()
    images, _, boxes = synthetic_scene(n, "cpu")
    pil = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in images]
    per_image = [[b.tolist()] for b in boxes]

    def run():
        inputs = proc(images=pil, boxes=per_image, return_tensors="pt")
        with torch.inference_mode():
            out = model(inputs["pixel_values"].to(device, dtype))
        out.heatmaps = out.heatmaps.float().cpu()
        return proc.post_process_pose_estimation(out, boxes=per_image)

    return run


# ----------------------------------------------------------------------------- the run

def measure(rows, budget, what: dict, fn_factory, batch: int, device, flops_per_image, peaks, rep,
            need_s: float = 0.0):
    row = {**what, "batch": batch}
    if not budget.allows(need_s):
        row["skipped"] = budget.skip_reason(need_s)
    else:
        try:
            fn = fn_factory()
            t = common.bench(fn, device=device, warmup=3, rep=rep, max_seconds=min(5.0, max(1.0, budget.left())))
            row.update(ms=t["median_ms"], img_s=batch * 1e3 / t["median_ms"], timing=t)
            if flops_per_image and peaks:
                row["roofline_frac"] = flops_per_image * row["img_s"] / (peaks["matmul_tflops"] * 1e12)
        except common.Interrupted:
            raise
        except Exception as e:
            row["skipped"] = common.skip_reason(e)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows.append(row)
    print(f"  .. {row.get('model', row['size'])} {row['variant']:<34} b{batch:<4} "
          + (f"{row['img_s']:9.1f} img/s" if "img_s" in row else f"skipped: {row['skipped'][:90]}"),
          file=sys.stderr, flush=True)


def run(args, vp, device, dtype, rows, notes, peaks):
    """Measurements in order of importance, so that a spent --budget-s (or a SIGTERM) drops the
    least useful: the paper's batch 64 for every size; end to end and batch-1 latency for the
    first size; transformers compiled; batch 256; the rest. rows and notes fill as it goes."""
    budget = common.Budget(args.budget_s)
    models = {}
    gpu = device.type == "cuda"
    x1 = torch.randn(1, 3, 256, 192, device=device, dtype=dtype)

    def get(size):
        if size not in models:
            fused = ours(vp, size, None, dtype, device, args.smoke)
            ref = ours(vp, size, "reference", dtype, device, args.smoke)
            flops = forward_flops(ref, x1)  # flop_counter cannot see inside the fused custom ops
            try:
                hf, note = hf_model(size, dtype, device, args.smoke)
            except Exception as e:
                hf, note = None, f"transformers VitPose unavailable: {type(e).__name__}: {e}"
            notes.append(f"ViTPose-{size}: forward {flops / 2e9:.2f} GMACs/image; transformers attention: {note}")
            models[size] = dict(fused=fused, ref=ref, hf=hf, flops=flops, compiled=None)
        return models[size]

    def base(size, variant, kind):
        return {"size": size, "variant": variant, "kind": kind,
                "paper_fps": None if args.smoke else PAPER_FPS.get(size)}

    def tokenpose_rows(which, batch):
        """TokenPose fused against the same model with plain PyTorch attention (no paper fps)."""
        if not budget.allows():
            return
        key = f"tokenpose-{which}"
        if key not in models:
            fused = tokenpose(vp, which, None, dtype, device, args.smoke)
            ref = tokenpose(vp, which, "reference", dtype, device, args.smoke)
            ref.load_state_dict(fused.state_dict())
            flops = forward_flops(ref, x1)
            notes.append(f"TokenPose-{which} ({TOKENPOSE[which]}): forward {flops / 2e9:.2f} GMACs/image")
            models[key] = dict(fused=fused, ref=ref, flops=flops)
        m = models[key]
        x = torch.randn(batch, 3, 256, 192, device=device, dtype=dtype)
        a = (batch, device, m["flops"], peaks, args.rep)
        row = lambda variant: {**base(which, variant, "model"), "model": f"TokenPose-{which}", "paper_fps": None}
        if gpu:
            measure(rows, budget, row("ours fused + CUDA graph"), lambda: graphed(m["fused"], x), *a)
        measure(rows, budget, row("ours fused, eager"), lambda: (lambda: _infer(m["fused"], x)), *a)
        measure(rows, budget, row("plain PyTorch attention, eager"), lambda: (lambda: _infer(m["ref"], x)), *a)

    def model_rows(size, batch):
        if not budget.allows():
            return
        m = get(size)
        x = torch.randn(batch, 3, 256, 192, device=device, dtype=dtype)
        a = (batch, device, m["flops"], peaks, args.rep)
        if gpu:
            measure(rows, budget, base(size, "ours fused + CUDA graph", "model"), lambda: graphed(m["fused"], x), *a)
        measure(rows, budget, base(size, "ours fused, eager", "model"), lambda: (lambda: _infer(m["fused"], x)), *a)
        measure(rows, budget, base(size, "ours reference ops", "model"), lambda: (lambda: _infer(m["ref"], x)), *a)
        if m["hf"] is not None:
            measure(rows, budget, base(size, "transformers eager", "model"), lambda: (lambda: _infer(m["hf"], x)), *a)

    def compiled_rows(size, batch):
        if not (gpu and budget.allows() and not args.no_compile):
            return
        m = get(size)
        if m["hf"] is None:
            return
        x = torch.randn(batch, 3, 256, 192, device=device, dtype=dtype)

        def factory():
            m["compiled"] = m["compiled"] or torch.compile(m["hf"], dynamic=False)
            return lambda: _infer(m["compiled"], x)
        measure(rows, budget, base(size, "transformers torch.compile", "model"), factory,
                batch, device, m["flops"], peaks, args.rep, need_s=60.0)

    def e2e_rows(size):
        if args.no_e2e or not budget.allows():
            return
        m, n = get(size), args.batches[0]
        for flip in (False, True):
            measure(rows, budget, base(size, f"e2e ours, flip {'on' if flip else 'off'}", "end-to-end"),
                    lambda: e2e_ours(vp, m["fused"], flip, n, device), n, device, None, None, args.rep)
        if m["hf"] is not None:
            measure(rows, budget, base(size, "e2e transformers (processor on CPU)", "end-to-end"),
                    lambda: e2e_hf(m["hf"], n, device, dtype), n, device, None, None, min(args.rep, 5))

    def latency_rows(size):
        if not (gpu and budget.allows()):
            return
        m = get(size)
        a = (1, device, m["flops"], peaks, args.rep)
        measure(rows, budget, base(size, "ours fused, eager", "batch-1 latency"),
                lambda: (lambda: _infer(m["fused"], x1)), *a)
        measure(rows, budget, base(size, "ours fused + CUDA graph", "batch-1 latency"),
                lambda: graphed(m["fused"], x1), *a)

    def video_rows(size):
        if args.no_video or not budget.allows():
            return
        batch = 2 if args.smoke else 16
        for frames in (5, 3):
            for variant, backend in (("fused", None), ("reference ops", "reference")):
                row = base(size, f"TAR-ViTPose T={frames}, {variant}", "video")
                row["paper_fps"] = None if args.smoke or frames != 3 else TAR_PAPER_FPS.get(size)

                def factory(frames=frames, backend=backend):
                    model = tar(vp, size, frames, backend, dtype, device, args.smoke)
                    H, W = model.config.input_size
                    x = torch.randn(batch, frames, 3, H, W, device=device, dtype=dtype)
                    return lambda: _infer(model, x)
                measure(rows, budget, row, factory, batch, device, None, None, args.rep)

    first, rest = args.batches[0], args.batches[1:]
    lead = "B" if "B" in args.sizes else args.sizes[0]
    for size in args.sizes:
        model_rows(size, first)
    for which in args.tokenpose:
        tokenpose_rows(which, first)
    e2e_rows(lead)
    latency_rows(lead)
    video_rows(lead)
    compiled_rows(lead, first)
    for batch in rest:
        for size in args.sizes:
            model_rows(size, batch)
    for size in args.sizes:
        if size != lead:
            e2e_rows(size)
            latency_rows(size)
            compiled_rows(size, first)
    for batch in rest:
        compiled_rows(lead, batch)


def _infer(model, x):
    with torch.inference_mode():
        return model(x)


def render(results) -> str:
    peaks = results["peaks"]
    lines = [f"# throughput (Table 9): {results['dtype']}, 256x192"
             + (", SMOKE (tiny model; numbers mean nothing)" if results["smoke"] else "")
             + (" -- INTERRUPTED, partial" if results.get("interrupted") else ""),
             f"# {common.environment_line(results['environment'])}",
             f"# roofline = forward FLOPs/image x img/s / measured matmul peak "
             f"({peaks['matmul_tflops']:.3g} TFLOP/s {peaks['matmul_dtype']}); paper fps: A100, batch 64, "
             "precision not stated (x paper compares different GPUs: context, not a target)"]
    for kind in ("model", "end-to-end", "batch-1 latency", "video"):
        rows = [r for r in results["rows"] if r["kind"] == kind]
        if not rows:
            continue
        body, skipped = [], []
        for r in rows:
            label = r.get("model", f"ViTPose-{r['size']}")
            if "skipped" in r:
                skipped.append(f"  {label} {r['variant']} b{r['batch']}: skipped: {r['skipped']}")
                continue
            hf = next((h["img_s"] for h in rows if h.get("model") == r.get("model") and h["size"] == r["size"]
                       and h["batch"] == r["batch"] and h["variant"] == "transformers eager" and "img_s" in h), None)
            body.append([label, r["variant"], str(r["batch"]), common.fmt(r["img_s"], ",.0f"),
                         common.fmt(r["ms"], ".2f"), common.fmt(r.get("paper_fps"), ",.0f"),
                         common.fmt(r.get("paper_fps") and r["img_s"] / r["paper_fps"], ".2f"),
                         common.fmt(hf and r["img_s"] / hf, ".2f"),
                         common.fmt(r.get("roofline_frac") and 100 * r["roofline_frac"], ".0f")])
        unit = "clips/s" if kind == "video" else "img/s"
        lines += ["", kind, common.format_table(["model", "variant", "batch", unit, "ms", "paper fps",
                                                 "x paper", "x hf eager", "% roofline"], body)] + skipped
    lines += [""] + [f"# {n}" for n in results["notes"]]
    return "\n".join(lines)


def plot(results, path: Path) -> bool:
    plt = common.pyplot()
    rows = [r for r in results["rows"] if r["kind"] == "model" and "img_s" in r]
    if plt is None or not rows:
        return False
    def key(r):
        return f"{r.get('model', r['size'])} b{r['batch']}"
    labels = list(dict.fromkeys(key(r) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / (len(variants) + 1)
    for i, var in enumerate(variants):
        pts = [(labels.index(key(r)), r["img_s"]) for r in rows if r["variant"] == var]
        ax.bar([j + i * width for j, _ in pts], [v for _, v in pts], width, label=var)
    paper = [(j, next((r["paper_fps"] for r in rows if key(r) == lab), None))
             for j, lab in enumerate(labels)]
    ax.bar([j + len(variants) * width for j, v in paper if v], [v for _, v in paper if v], width,
           label="paper (A100, b64)", color="grey")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels)
    ax.set_ylabel("images / s")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return common.save_figure(plt, fig, path, f"ViTPose throughput, {results['dtype']}", results["environment"])


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--sizes", default="S,B,L,H")
    p.add_argument("--batches", default="64,256", help="the paper's batch is 64")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd transformers row")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end rows")
    p.add_argument("--tokenpose", default="S,L", help='TokenPose rows: S (S-v2), L (L/D24); "" for none')
    p.add_argument("--no-video", action="store_true", help="skip the TAR-ViTPose (video) rows")
    common.add_run_args(p, rep=20)
    args = p.parse_args(argv)
    common.stop_on_sigterm()
    args.sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    args.tokenpose = [t.strip().upper() for t in args.tokenpose.split(",") if t.strip()]
    if any(t not in TOKENPOSE for t in args.tokenpose):
        p.error(f"--tokenpose: choose from {sorted(TOKENPOSE)}")
    if any(s not in PAPER_FPS for s in args.sizes):
        p.error(f"--sizes: choose from {sorted(PAPER_FPS)}")
    if not args.batches or min(args.batches) < 1:
        p.error("--batches: positive integers")
    gpu = torch.cuda.is_available()
    if not gpu and not args.smoke:
        print("throughput.py measures Table 9 on a CUDA GPU and none is visible here (torch "
              f"{torch.__version__}, cuda available: False). Nothing measured. Run it on a GPU, or "
              "`python benchmarks/throughput.py --smoke` for a tiny CPU run that checks the harness.")
        return 0
    if args.smoke:
        args.sizes, args.batches, args.rep = args.sizes[:1] if gpu else ["B"], [2], min(args.rep, 3)
        args.tokenpose = args.tokenpose[:1]
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    vp = common.import_vitpose("ViTPose", "vitpose_config", "TopDownPredictor", "build_model")
    t0 = time.perf_counter()
    peaks = common.measure_peaks(device, torch.bfloat16 if gpu else torch.float32)
    results = {"environment": common.environment(device), "dtype": str(dtype).replace("torch.", ""),
               "smoke": args.smoke, "peaks": peaks, "rows": [], "notes": [], "budget_s": args.budget_s}
    try:
        run(args, vp, device, dtype, results["rows"], results["notes"], peaks)
    except common.Interrupted as e:
        results["interrupted"] = str(e)
        results["notes"].append(f"interrupted ({e}): rows not run are missing")
    try:
        import vitpose_kernels
        results["window_attention_backends"] = {b: (why or "available") for b, why in
                                                vitpose_kernels.backends("window_attention").items()}
    except Exception as e:
        results["notes"].append(f"vitpose_kernels.backends() failed: {type(e).__name__}: {e}")
    stem = f"throughput_{'gpu' if gpu else 'cpu'}{'_smoke' if args.smoke else ''}"
    common.finish(results, args.out, stem, render, plot, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
