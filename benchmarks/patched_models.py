"""Hugging Face SAM ViT-B and VitDet-B at 1024x1024, patched with vitpose_kernels vs as shipped.

    python benchmarks/patched_models.py                   # on a CUDA GPU: bf16, batch 1
    python benchmarks/patched_models.py --batch 2 --backend triton
    python benchmarks/patched_models.py --smoke           # tiny configs, any device (CPU: fp32)

Rows: SAM ViT-B image encoder forward (transformers' SDPA path: the rel-pos bias goes in as a
dense attn_mask, so SDPA runs its memory-efficient/math kernel with a (B*H, N, N) bias), VitDet-B
forward and forward+backward (transformers' VitDet has only its eager attention path). Each is
timed unpatched and after ``vitpose_kernels.patch(model)``: median of CUDA-event timings after
warmup, and the peak of torch.cuda.max_memory_allocated over one call (absolute, and above what
was allocated before the call: weights, input, and for backward nothing else, as gradients are
freed between calls). Forward-only rows run under torch.inference_mode. The max error of the
patched output against the unpatched one is printed beside the times, as a sanity check.
The issue's goal: patched >= 1.5x faster with a lower peak, for every row.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL_SPEEDUP = 1.5


def sam_vit_b(smoke: bool):
    from transformers import SamVisionConfig, SamVisionModel

    if smoke:
        cfg = SamVisionConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=128,
                              patch_size=16, window_size=3, global_attn_indexes=[1, 3], output_channels=32,
                              mlp_dim=128)
    else:  # SamVisionConfig's defaults are SAM's ViT-B image encoder (1024x1024, window 14)
        cfg = SamVisionConfig()
    return SamVisionModel._from_config(cfg, attn_implementation="sdpa"), cfg.image_size


def vitdet_b(smoke: bool):
    from transformers import VitDetConfig, VitDetModel

    # ViTDet-B (Li et al. 2022): 12 blocks, windows of 14 in all but blocks 2, 5, 8, 11 (global),
    # decomposed relative position, absolute positions pretrained at 224. No drop path (timing).
    if smoke:
        cfg = VitDetConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=128,
                           pretrain_image_size=64, patch_size=16, window_size=3, window_block_indices=[0, 2],
                           use_relative_position_embeddings=True)
    else:
        cfg = VitDetConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=1024,
                           pretrain_image_size=224, patch_size=16, window_size=14,
                           window_block_indices=[0, 1, 3, 4, 6, 7, 9, 10],
                           use_relative_position_embeddings=True, use_absolute_position_embeddings=True)
    return VitDetModel(cfg), cfg.image_size


# (label, builder, with backward, unpatched attention path)
CASES = [
    ("SAM ViT-B encoder, forward", sam_vit_b, False, "sdpa (rel-pos as attn_mask)"),
    ("VitDet-B, forward", vitdet_b, False, "eager (transformers has no SDPA path for VitDet)"),
    ("VitDet-B, forward+backward", vitdet_b, True, "eager (transformers has no SDPA path for VitDet)"),
]


def _randomize(model: torch.nn.Module, device: torch.device) -> None:
    # Pretrained-like scales: SAM initializes to ~1e-10 and the rel-pos tables to zero, which would
    # make every softmax uniform.
    g = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, device=device)
            if p.dim() >= 2:
                p.copy_(r * p[0].numel() ** -0.5)
            else:
                p.copy_(r * 0.02 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))


def _step(model, x, backward: bool):
    if not backward:
        with torch.inference_mode():
            return model(x).last_hidden_state
    out = model(x).last_hidden_state
    out.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return out.detach()


def _peak_mib(fn, device) -> tuple[float | None, float | None]:
    mem = common.peak_memory(fn, device)
    if mem is None:
        return None, None
    return mem["peak_bytes"] / common.MIB, mem["peak_above_before_bytes"] / common.MIB


def run_case(label, build, backward, path, args, device, dtype) -> dict:
    import vitpose_kernels as vk

    torch.manual_seed(0)
    with device:  # built in place on the GPU: initializing ViT-B on the CPU takes seconds
        model, size = build(args.smoke)
    _randomize(model, device)
    model = model.to(dtype=dtype).eval()
    x = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype)
    row = {"case": label + (" (tiny smoke config)" if args.smoke else ""), "backward": backward,
           "unpatched_path": path, "image": [size, size], "batch": args.batch,
           "dtype": str(dtype).replace("torch.", "")}
    outputs = {}
    for variant in ("unpatched", "patched"):
        if variant == "patched":
            report = vk.patch(model, backend=args.backend)
            row["patched_modules"] = len(report.patched)
            row["untouched"] = [f"{n} ({c}): {why}" for n, c, why in report.untouched]
        fn = lambda: _step(model, x, backward)  # noqa: E731
        outputs[variant] = fn().float()
        t = common.bench(fn, device=device, warmup=args.warmup, rep=args.rep, max_seconds=args.max_seconds)
        peak, above = _peak_mib(fn, device)
        row[variant] = {**t, "peak_mib": peak, "peak_above_start_mib": above}
    vk.unpatch(model)
    ref = outputs["unpatched"]
    row["max_abs_err"] = float((outputs["patched"] - ref).abs().max())
    row["max_rel_err"] = row["max_abs_err"] / max(float(ref.abs().max()), 1e-30)
    row["speedup"] = row["unpatched"]["median_ms"] / row["patched"]["median_ms"]
    if row["unpatched"]["peak_mib"] is not None:
        row["peak_ratio"] = row["patched"]["peak_mib"] / row["unpatched"]["peak_mib"]
        row["goal_met"] = row["speedup"] >= GOAL_SPEEDUP and row["peak_ratio"] < 1.0
    del model, x, outputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def render(results: dict) -> str:
    headers = ["case", "unpatched path", "ms unpatched", "ms patched", "speedup", "peak MiB unp.",
               "peak MiB pat.", "max rel err", "goal"]
    rows = []
    for r in results["rows"]:
        if "skipped" in r:
            rows.append([r["case"], f"skipped: {r['skipped']}"] + ["-"] * 7)
            continue
        goal = "-" if "goal_met" not in r else ("met" if r["goal_met"] else "NOT met")
        unp, pat = r["unpatched"], r["patched"]
        rows.append([r["case"], r["unpatched_path"].split(" ")[0], common.fmt(unp["median_ms"], ".2f"),
                     common.fmt(pat["median_ms"], ".2f"), f"{r['speedup']:.2f}x", common.fmt(unp["peak_mib"]),
                     common.fmt(pat["peak_mib"]), f"{r['max_rel_err']:.2e}", goal])
    title = (f"Patched vs unpatched Hugging Face models ({results['mode']}, {results['dtype']}, batch "
             f"{results['batch']}, backend={results['backend'] or 'auto'}); "
             f"goal >= {GOAL_SPEEDUP}x and a lower peak")
    if results.get("interrupted"):
        title += " -- INTERRUPTED, partial"
    return "\n".join([title, common.environment_line(results["environment"]), "",
                      common.format_table(headers, rows), "", common.render_checks(results.get("targets", []))])


def targets(results: dict) -> list[dict]:
    """Issue 9: patched at least 1.5x faster and with a lower peak, for every row."""
    out = []
    for r in results["rows"]:
        name = r["case"]
        why = r.get("skipped", "not measured")
        out.append(common.check(9, f"{name}: speedup patched vs unpatched", r.get("speedup"), GOAL_SPEEDUP,
                                why_missing=why))
        out.append(common.check(9, f"{name}: peak memory patched / unpatched", r.get("peak_ratio"), 1.0,
                                at_most=True, unit="", why_missing=why if "skipped" in r else "GPU only"))
    return out


def plot(results: dict, path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    done = [r for r in results["rows"] if "skipped" not in r]
    if not done:
        return False
    labels = [r["case"] for r in done]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, key, unit in ((axes[0], "median_ms", "ms"), (axes[1], "peak_mib", "MiB")):
        ys = [[r[v][key] or 0 for r in done] for v in ("unpatched", "patched")]
        xs = range(len(labels))
        ax.bar([i - 0.2 for i in xs], ys[0], 0.4, label="unpatched")
        ax.bar([i + 0.2 for i in xs], ys[1], 0.4, label="patched")
        ax.set_xticks(list(xs), labels, rotation=15, fontsize=7)
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
    return common.save_figure(plt, fig, path, f"patched vs unpatched, {results['dtype']}, batch {results['batch']}",
                              results["environment"])


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backend", choices=("reference", "triton", "cuda"), default=None,
                   help="force a window_attention backend (default: the fastest that fits each call)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=10.0, help="per variant, of measured reps")
    common.add_run_args(p, rep=20, budget_help="wall-clock budget: rows not started when it is spent are "
                                                "recorded as skipped; the JSON is still written")
    args = p.parse_args(argv)
    common.stop_on_sigterm()
    if args.batch < 1:
        p.error("--batch must be >= 1")
    gpu = torch.cuda.is_available()
    if not gpu and not args.smoke:
        print("patched_models.py measures CUDA time and peak memory at 1024x1024 in bf16 and needs a CUDA "
              "GPU; none is visible (torch.cuda.is_available() is False). Run it on a GPU machine, or "
              "pass --smoke for a tiny CPU run that only checks the script works.", file=sys.stderr)
        return 2
    try:
        import transformers
    except ImportError:
        print("patched_models.py needs transformers (pip install transformers)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    if not gpu:
        args.warmup, args.rep = min(args.warmup, 1), min(args.rep, 3)
    t0 = time.perf_counter()
    results = {"environment": common.environment(device), "transformers": transformers.__version__,
               "mode": "smoke" if args.smoke else "full", "dtype": str(dtype).replace("torch.", ""),
               "batch": args.batch, "backend": args.backend, "goal_speedup": GOAL_SPEEDUP,
               "timing": "CUDA events, median after warmup" if gpu else "perf_counter, median (CPU smoke)",
               "budget_s": args.budget_s, "rows": []}
    budget = common.Budget(args.budget_s)
    try:
        for case in CASES:
            if not budget.allows():
                results["rows"].append({"case": case[0], "skipped": budget.skip_reason()})
                continue
            try:
                results["rows"].append(run_case(*case, args, device, dtype))
            except common.Interrupted:
                raise
            except Exception as e:  # one model that breaks must not cost the others' rows
                results["rows"].append({"case": case[0], "skipped": common.skip_reason(e)})
    except common.Interrupted as e:
        results["interrupted"] = str(e)
    results["targets"] = targets(results)
    if args.smoke or not gpu:
        common.not_judged(results["targets"], "smoke run" if args.smoke else "no GPU")
    stem = f"patched_models_{'gpu' if gpu else 'cpu'}_{results['dtype']}_b{args.batch}"
    stem += "_smoke" if args.smoke else ""
    common.finish(results, args.out, stem, render, plot, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
