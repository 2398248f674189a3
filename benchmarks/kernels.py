"""Each vitpose_kernels op against its peers, forward and forward+backward, beside its roofline floor.

    python benchmarks/kernels.py                 # on a GPU: every op, bf16
    python benchmarks/kernels.py --smoke         # tiny shapes on CPU: checks the harness, not speed
    python benchmarks/kernels.py --ops decode    # decoding only (on CPU too, vs transformers)

window_attention (the Table 5 shapes at 32x24 tokens, full attention at 192, 768 and 3888 tokens,
192 tokens + a knowledge token) against
  reference   vitpose_kernels' reference ops (cells by pad/reshape, logits materialized)
  sdpa        F.scaled_dot_product_attention over [k, pooled k] with the equivalent boolean mask
              (no mask, hence the flash kernel, for plain full attention)
  flex        FlexAttention, torch.compile'd, with the equivalent mask_mod (pooled tokens
              concatenated as extra keys); the block mask is built once, outside the timing
  triton/cuda our fused backends, forced; skipped with the dispatcher's reasons where unavailable.
simple_decoder (ReLU, bilinear x4, 3x3 conv) against the reference (interpolate + cuDNN conv over
the upsampled map). decode_heatmaps against transformers' VitPoseImageProcessor
.post_process_pose_estimation (NumPy, CPU).

Floors: time >= max(bytes that must move / measured copy bandwidth, useful FLOPs / measured matmul
peak). Attention FLOPs count only allowed (query, key) pairs: 4*D per pair forward (QK^T and PV),
14*D per pair forward+backward (FlashAttention-2 style, scores recomputed: 7 matmuls). Bytes: q, k,
v read and out written forward; plus out, dout, lse read and dq, dk, dv written backward.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import vitpose_kernels  # noqa: E402
from vitpose_kernels import _validate  # noqa: E402
from vitpose_kernels.reference import pooled_tokens  # noqa: E402
from vitpose_kernels.reference.window_attention import _cell_padding  # noqa: E402  (the spec's geometry)

OURS = ("triton", "cuda")


# ----------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class AttnCase:
    name: str
    B: int
    H: int
    D: int
    grid: tuple
    window: tuple | None = None
    shift: tuple = (0, 0)
    pool: bool = False
    num_global: int = 0

    @property
    def N(self) -> int:
        return self.num_global + self.grid[0] * self.grid[1]


def attention_cases(smoke: bool) -> list[AttnCase]:
    if smoke:
        return [AttnCase("smoke full 8x6", 2, 2, 16, (8, 6)),
                AttnCase("smoke window 4x4 shift+pool", 2, 2, 16, (8, 6), (4, 4), (2, 2), True),
                AttnCase("smoke full + 1 global", 2, 2, 16, (8, 6), num_global=1)]
    t5 = dict(B=64, H=12, D=64, grid=(32, 24))
    return [
        AttnCase("T5 full 32x24 (768 tok)", **t5),
        AttnCase("T5 window 8x8", **t5, window=(8, 8)),
        AttnCase("T5 window 8x8 shift", **t5, window=(8, 8), shift=(4, 4)),
        AttnCase("T5 window 8x8 pool", **t5, window=(8, 8), pool=True),
        AttnCase("T5 window 8x8 shift+pool", **t5, window=(8, 8), shift=(4, 4), pool=True),
        AttnCase("T5 window 16x12 shift+pool", **t5, window=(16, 12), shift=(8, 6), pool=True),
        AttnCase("full 16x12 (192 tok)", 64, 12, 64, (16, 12)),
        AttnCase("full 192 tok + knowledge token", 64, 12, 64, (16, 12), num_global=1),
        AttnCase("full 72x54 (3888 tok)", 4, 12, 64, (72, 54)),
    ]


# ----------------------------------------------------------------------------- equivalent masks

GLOBAL, POOLED = -1, -2


def cell_ids(case: AttnCase, spec, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell index of every query (N,) and key (N + P,): GLOBAL for global tokens, POOLED for the
    pooled keys. Grid token (y, x) is in cell ((y + top) // wh, (x + left) // ww) where top/left is
    the reference's padding that aligns (shifted) cell boundaries with multiples of the window."""
    (hg, wg), (wh, ww), (sh, sw) = spec.grid, spec.window, spec.shift
    top, _ = _cell_padding(hg, wh, sh)
    left, _ = _cell_padding(wg, ww, sw)
    y = torch.arange(hg, device=device)[:, None].expand(hg, wg)
    x = torch.arange(wg, device=device)[None, :].expand(hg, wg)
    ncol = (wg + left + ww - 1) // ww + 1
    grid_ids = (((y + top) // wh) * ncol + (x + left) // ww).reshape(-1)
    g = torch.full((case.num_global,), GLOBAL, device=device, dtype=torch.long)
    q_ids = torch.cat([g, grid_ids])
    k_ids = torch.cat([q_ids, torch.full((spec.num_pooled,), POOLED, device=device, dtype=torch.long)])
    return q_ids, k_ids


def allowed(qc: torch.Tensor, kc: torch.Tensor) -> torch.Tensor:
    """Same cell, or a global key, or a global query (to every real token), or a pooled key for a
    grid query. Works on tensors of any broadcastable shape (dense mask or FlexAttention indices)."""
    q_global, k_global, k_pooled = qc == GLOBAL, kc == GLOBAL, kc == POOLED
    return (qc == kc) | k_global | (q_global & ~k_pooled) | (k_pooled & ~q_global)


def extra_keys(k, v, spec):
    """[k, pooled k] and [v, pooled v]: the pooled tile means as extra keys, as the reference makes."""
    if not spec.pool:
        return k, v
    G = spec.num_global
    return (torch.cat([k, pooled_tokens(k[:, :, G:], spec)], dim=2),
            torch.cat([v, pooled_tokens(v[:, :, G:], spec)], dim=2))


# ----------------------------------------------------------------------------- window_attention

def make_qkv(case: AttnCase, dtype, device, requires_grad):
    # The model's layout: one qkv projection (B, N, 3, H, D) read as strided views.
    qkv = torch.randn(case.B, case.N, 3, case.H, case.D, device=device, dtype=dtype)
    qkv.requires_grad_(requires_grad)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return qkv, q, k, v


def attention_peers(case: AttnCase, spec, device, smoke: bool, with_flex: bool = True) -> dict:
    """name -> (fn(q, k, v) or None, reason when None)."""
    kwargs = dict(grid=case.grid, window=case.window, shift=case.shift, pool=case.pool,
                  num_global=case.num_global)
    peers = {"reference": (lambda q, k, v: vitpose_kernels.window_attention(q, k, v, **kwargs,
                                                                            backend="reference"), "")}
    q_ids, k_ids = cell_ids(case, spec, device)
    plain_full = spec.full and not spec.pool and case.num_global == 0
    mask = None if plain_full else allowed(q_ids[:, None], k_ids[None, :])

    def sdpa(q, k, v):
        kx, vx = extra_keys(k, v, spec)
        return F.scaled_dot_product_attention(q, kx, vx, attn_mask=mask, scale=spec.scale)

    peers["sdpa" + ("" if plain_full else " (masked)")] = (sdpa, "")
    peers["flex (compiled)"] = (flex_peer(case, spec, q_ids, k_ids, device, smoke) if with_flex
                                else (None, "not built in this pass"))
    for name in OURS:
        peers[name] = (lambda q, k, v, _n=name: vitpose_kernels.window_attention(q, k, v, **kwargs, backend=_n), "")
    return peers


def flex_peer(case, spec, q_ids, k_ids, device, smoke):
    if smoke or device.type != "cuda":
        return None, "FlexAttention is timed compiled on a GPU only"
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        return None, f"torch.nn.attention.flex_attention unavailable: {e}"

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(q_ids[q_idx], k_ids[kv_idx])

    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=case.N, KV_LEN=len(k_ids), device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def flex(q, k, v):
        kx, vx = extra_keys(k, v, spec)
        return compiled(q, kx, vx, block_mask=block_mask, scale=spec.scale)

    return flex, ""


def attention_floor(case: AttnCase, q_ids, k_ids, itemsize: int, peaks: dict) -> dict:
    pairs = float(allowed(q_ids[:, None], k_ids[None, :]).sum()) * case.B * case.H
    bhnd = case.B * case.H * case.N * case.D * itemsize
    lse = case.B * case.H * case.N * 4
    fwd = dict(flops=4 * case.D * pairs, bytes=4 * bhnd)
    bwd = dict(flops=14 * case.D * pairs, bytes=4 * bhnd + 3 * bhnd + 2 * lse + 3 * bhnd)
    return {"fwd_ms": common.floor_ms(fwd["flops"], fwd["bytes"], peaks),
            "fwdbwd_ms": common.floor_ms(bwd["flops"], bwd["bytes"], peaks),
            "fwd_gflop": fwd["flops"] / 1e9, "fwd_mbytes": fwd["bytes"] / 1e6}


def bench_attention(args, device, dtype, peaks) -> list[dict]:
    """Every case with every peer; FlexAttention (a compile per shape) in a second pass, so that a
    spent --budget-s costs the compiled peer's rows first."""
    cases = []
    for case in attention_cases(args.smoke):
        torch.manual_seed(0)
        _, q, k, v = make_qkv(case, dtype, device, requires_grad=False)
        spec = _validate.window_attention_spec(q, k, v, grid=case.grid, window=case.window, shift=case.shift,
                                               pool=case.pool, num_global=case.num_global,
                                               rel_pos_h=None, rel_pos_w=None, scale=None)
        q_ids, k_ids = cell_ids(case, spec, device)
        cases.append((case, spec, attention_floor(case, q_ids, k_ids, q.element_size(), peaks)))
    rows = []
    for flex_pass in (False, True):
        for case, spec, floor in cases:
            peers = {name: peer for name, peer in attention_peers(case, spec, device, args.smoke, flex_pass).items()
                     if name.startswith("flex") == flex_pass}
            if not peers:
                continue
            torch.manual_seed(0)
            _, q, k, v = make_qkv(case, dtype, device, requires_grad=False)
            want = vitpose_kernels.window_attention(q, k, v, grid=case.grid, window=case.window, shift=case.shift,
                                                    pool=case.pool, num_global=case.num_global, backend="reference")
            for peer, (fn, why) in peers.items():
                row = {"op": "window_attention", "case": case.name, "peer": peer, "floor": floor,
                       "shape": f"B{case.B} H{case.H} N{case.N} D{case.D}"}
                if args.budget.left() <= 0:
                    row["skipped"] = "time budget spent (--budget-s)"
                else:
                    row.update(_run_attention(fn, why, case, dtype, device, want, args))
                rows.append(row)
                _progress(row)
            del q, k, v, want
            if device.type == "cuda":
                torch.cuda.empty_cache()
    order = {c.name: i for i, (c, _, _) in enumerate(cases)}
    return sorted(rows, key=lambda r: order[r["case"]])  # stable: peers keep their order per case


def _run_attention(fn, why, case, dtype, device, want, args) -> dict:
    if fn is None:
        return {"skipped": why}
    try:
        torch.manual_seed(0)
        qkv, q, k, v = make_qkv(case, dtype, device, requires_grad=False)
        out = fn(q, k, v)
        err = (out.float() - want.float()).abs().max().item()
        res = {"max_abs_err_vs_reference": err,
               "fwd": common.bench(lambda: fn(q, k, v), device=device, rep=args.rep,
                                   max_seconds=args.max_seconds)}
        if not args.no_backward:
            qkv.requires_grad_(True)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            grad = torch.randn_like(want)

            def step():
                qkv.grad = None
                fn(q, k, v).backward(grad)

            res["fwdbwd"] = common.bench(step, device=device, rep=args.rep, max_seconds=args.max_seconds)
        return res
    except NotImplementedError as e:  # a forced backend that cannot serve the call: its reasons
        return {"skipped": " ".join(str(e).split())}
    except torch.cuda.OutOfMemoryError:
        return {"skipped": "out of memory"}
    except Exception as e:  # a peer that breaks must not hide the others' numbers
        return {"skipped": f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}


# ----------------------------------------------------------------------------- simple_decoder

def bench_simple_decoder(args, device, dtype, peaks) -> list[dict]:
    B, C, h, w, K, s = (2, 8, 8, 6, 5, 4) if args.smoke else (64, 768, 16, 12, 17, 4)
    torch.manual_seed(0)
    x = torch.randn(B, C, h, w, device=device, dtype=dtype)
    weight = torch.randn(K, C, 3, 3, device=device, dtype=dtype) * 0.02
    bias = torch.randn(K, device=device, dtype=dtype)
    item = x.element_size()
    out_numel = B * K * h * s * w * s
    # Upsampling is linear, so the 9 taps can be applied at low resolution: the FLOP floor.
    fwd_flops = 2 * B * h * w * C * 9 * K
    fwd_bytes = (x.numel() + weight.numel() + out_numel) * item
    floor = {"fwd_ms": common.floor_ms(fwd_flops, fwd_bytes, peaks),
             "fwdbwd_ms": common.floor_ms(3 * fwd_flops, 2 * fwd_bytes + (x.numel() + out_numel) * item, peaks),
             "fwd_gflop": fwd_flops / 1e9, "fwd_mbytes": fwd_bytes / 1e6,
             "reference_conv_gflop": 2 * out_numel * C * 9 / 1e9}
    want = vitpose_kernels.simple_decoder(x, weight, bias, scale_factor=s, backend="reference")
    peers = {"reference (interpolate + cuDNN conv)" if device.type == "cuda" else "reference (interpolate + conv)":
             lambda x_, w_, b_: vitpose_kernels.simple_decoder(x_, w_, b_, scale_factor=s, backend="reference")}
    for name in OURS:
        peers[name] = lambda x_, w_, b_, _n=name: vitpose_kernels.simple_decoder(x_, w_, b_, scale_factor=s, backend=_n)
    rows = []
    for peer, fn in peers.items():
        row = {"op": "simple_decoder", "case": f"B{B} C{C} {h}x{w} -> K{K} {h * s}x{w * s}", "peer": peer,
               "floor": floor, "shape": f"x {tuple(x.shape)}"}
        if args.budget.left() <= 0:
            rows.append({**row, "skipped": "time budget spent (--budget-s)"})
            continue
        try:
            out = fn(x, weight, bias)
            row["max_abs_err_vs_reference"] = (out.float() - want.float()).abs().max().item()
            row["fwd"] = common.bench(lambda: fn(x, weight, bias), device=device, rep=args.rep,
                                      max_seconds=args.max_seconds)
            if not args.no_backward:
                xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
                grad = torch.randn_like(want)

                def step():
                    xg.grad = wg.grad = bg.grad = None
                    fn(xg, wg, bg).backward(grad)

                row["fwdbwd"] = common.bench(step, device=device, rep=args.rep,
                                             max_seconds=args.max_seconds)
        except NotImplementedError as e:
            row = {**row, "skipped": " ".join(str(e).split())}
        except Exception as e:
            row = {**row, "skipped": f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        rows.append(row)
        _progress(row)
    return rows


# ----------------------------------------------------------------------------- decode_heatmaps

def hf_post_processor():
    try:
        import transformers
        from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput
        proc_cls = getattr(transformers, "VitPoseImageProcessorPil", None) or transformers.VitPoseImageProcessor
        return proc_cls(), VitPoseEstimatorOutput, ""
    except Exception as e:
        return None, None, f"transformers VitPose unavailable: {type(e).__name__}: {e}"


def bench_decode(args, device, peaks) -> list[dict]:
    B, K, Hh, Wh = (4, 17, 64, 48) if args.smoke else (64, 17, 64, 48)
    torch.manual_seed(0)
    heat_cpu = torch.rand(B, K, Hh, Wh)
    flip_cpu = torch.rand(B, K, Hh, Wh)
    centers = torch.rand(B, 2) * 400 + 100
    scales = torch.rand(B, 2) * 200 + 100
    flip_indices = list(range(K))
    try:
        vp = common.import_vitpose("COCO_FLIP_INDICES")
        flip_indices = list(vp.COCO_FLIP_INDICES)
    except ImportError:
        pass
    floor_bytes = heat_cpu.numel() * 4
    rows = []

    def add(peer, dev, fn, note=""):
        row = {"op": "decode_heatmaps", "case": f"B{B} K{K} {Hh}x{Wh}" + note, "peer": peer, "device": dev.type,
               "floor": {"fwd_ms": common.floor_ms(0, floor_bytes * (2 if "flip" in note else 1), peaks)
                         if dev.type == device.type else None}}
        if args.budget.left() <= 0:
            row["skipped"] = "time budget spent (--budget-s)"
            rows.append(row)
            return
        try:
            fn()
            row["fwd"] = common.bench(fn, device=dev, rep=args.rep, max_seconds=args.max_seconds)
        except NotImplementedError as e:
            row["skipped"] = " ".join(str(e).split())
        except Exception as e:
            row["skipped"] = f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        rows.append(row)
        _progress(row)

    devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
    for dev in devices:
        h, fh, c, s = (t.to(dev) for t in (heat_cpu, flip_cpu, centers, scales))
        for name in ("reference",) + OURS:
            if dev.type == "cpu" and name != "reference":
                continue
            add(f"{name} [{dev.type}]", dev, lambda _n=name: vitpose_kernels.decode_heatmaps(
                h, bbox_centers=c, bbox_scales=s, backend=_n))
            add(f"{name} [{dev.type}]", dev, lambda _n=name: vitpose_kernels.decode_heatmaps(
                h, flip_heatmaps=fh, flip_indices=flip_indices, bbox_centers=c, bbox_scales=s, backend=_n),
                note=" + flip")
    proc, out_cls, why = hf_post_processor()
    boxes = [[[float(cx - sx / 2), float(cy - sy / 2), float(sx), float(sy)]]
             for (cx, cy), (sx, sy) in zip(centers.tolist(), scales.tolist())]
    if proc is None:
        rows.append({"op": "decode_heatmaps", "case": f"B{B} K{K} {Hh}x{Wh}", "peer": "transformers [cpu]",
                     "skipped": why})
    else:
        add("transformers post_process_pose_estimation [cpu]", torch.device("cpu"),
            lambda: proc.post_process_pose_estimation(out_cls(heatmaps=heat_cpu), boxes))
    return rows


# ----------------------------------------------------------------------------- report

def _progress(row):
    t = row.get("fwd", {}).get("median_ms")
    print(f"  .. {row['op']:<16} {row['case']:<34} {row['peer']:<40} "
          + (f"{t:.3f} ms" if t is not None else f"skipped: {row.get('skipped', '')[:80]}"), file=sys.stderr)


def render(results: dict) -> str:
    env, peaks = results["environment"], results["peaks"]
    lines = [f"# kernels: {results['dtype']}, {'SMOKE (tiny shapes; timings mean nothing)' if results['smoke'] else 'full shapes'}",
             f"# {common.environment_line(env)}",
             f"# measured peaks: matmul {peaks['matmul_tflops']:.3g} TFLOP/s ({peaks['matmul_dtype']}), "
             f"copy {peaks['copy_tbps'] * 1e3:.0f} GB/s"
             + (f"; datasheet {peaks['nominal']['bf16_tflops']:.0f} TFLOP/s, {peaks['nominal']['hbm_tbps']:.2f} TB/s"
                if peaks.get("nominal") else ""),
             "# floor = max(bytes / measured bandwidth, useful FLOPs / measured matmul peak); "
             "'% floor' = floor / time (100% = at the roofline); err = max |out - reference|"]
    by_op = {}
    for r in results["rows"]:
        by_op.setdefault(r["op"], []).append(r)
    for op, rows in by_op.items():
        body, skipped = [], []
        for r in rows:
            if "skipped" in r:
                skipped.append(f"  {r['case']} / {r['peer']}: skipped: {r['skipped']}")
                continue
            fl = r.get("floor") or {}
            f_ms, b_ms = r["fwd"]["median_ms"], r.get("fwdbwd", {}).get("median_ms")
            body.append([r["case"], r["peer"], common.fmt(f_ms, ".3f"), common.fmt(fl.get("fwd_ms"), ".3f"),
                         common.fmt(_pct(fl.get("fwd_ms"), f_ms), ".0f"),
                         common.fmt(b_ms, ".3f"), common.fmt(fl.get("fwdbwd_ms"), ".3f"),
                         common.fmt(_pct(fl.get("fwdbwd_ms"), b_ms), ".0f"),
                         common.fmt(r.get("max_abs_err_vs_reference"), ".1e")])
        lines += ["", op, common.format_table(
            ["case", "peer", "fwd ms", "floor", "% floor", "fwd+bwd ms", "floor", "% floor", "err"], body)]
        lines += skipped
    if results.get("notes"):
        lines += [""] + [f"# {n}" for n in results["notes"]]
    return "\n".join(lines)


def _pct(floor, t):
    return None if floor is None or not t else 100 * floor / t


def plot(results: dict, path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    rows = [r for r in results["rows"] if "fwd" in r and r["op"] == "window_attention"]
    other = [r for r in results["rows"] if "fwd" in r and r["op"] != "window_attention"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 1.3]})
    for ax, subset, title in ((axes[0], rows, "window_attention, fwd+bwd (fwd where no bwd)"),
                              (axes[1], other, "simple_decoder / decode_heatmaps, fwd")):
        cases = list(dict.fromkeys(r["case"] for r in subset))
        peers = list(dict.fromkeys(r["peer"] for r in subset))
        width = 0.8 / max(1, len(peers))
        for i, peer in enumerate(peers):
            xs, ys = [], []
            for j, case in enumerate(cases):
                for r in subset:
                    if r["case"] == case and r["peer"] == peer:
                        t = r.get("fwdbwd", r["fwd"]) if ax is axes[0] else r["fwd"]
                        xs.append(j + i * width)
                        ys.append(t["median_ms"])
            ax.bar(xs, ys, width, label=peer)
        floors = [next((r["floor"].get("fwdbwd_ms" if ax is axes[0] else "fwd_ms") for r in subset
                        if r["case"] == c and r.get("floor")), None) for c in cases]
        for j, f in enumerate(floors):
            if f:
                ax.hlines(f, j - width / 2, j + 0.8 - width / 2, colors="k", linestyles="dashed",
                          label="floor" if j == 0 else None)
        ax.set_yscale("log")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("ms (median)")
        ax.set_title(title, fontsize=9)
        if subset:
            ax.legend(fontsize=6)
    env = results["environment"]
    fig.suptitle(f"vitpose_kernels ops vs peers, {results['dtype']} - {env['device']}, torch {env['torch']}, "
                 f"{env['date_utc'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", default="attention,decoder,decode", help="subset of attention,decoder,decode")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU): exercises the harness only")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--rep", type=int, default=20, help="timed repetitions per measurement (median)")
    p.add_argument("--max-seconds", type=float, default=2.0, help="of timed reps per measurement")
    p.add_argument("--budget-s", type=float, default=1e9,
                   help="start no new measurement after this many seconds (rows say 'skipped'); JSON is still written")
    p.add_argument("--out", default=None, help="directory for JSON + PNG (default benchmarks/results)")
    args = p.parse_args(argv)
    args.budget = common.Budget(args.budget_s)
    ops = {o.strip() for o in args.ops.split(",") if o.strip()}
    bad = ops - {"attention", "decoder", "decode"}
    if bad:
        p.error(f"--ops: unknown {sorted(bad)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    notes = []
    if device.type == "cpu":
        if not args.smoke:
            kept = ops & {"decode"}
            if ops - kept:
                notes.append("no GPU: window_attention and simple_decoder are GPU benchmarks; run them here "
                             "with --smoke (tiny shapes, harness check only). Decoding ran on CPU.")
            ops = kept
        if args.dtype != "fp32":
            dtype = torch.float32
            notes.append(f"CPU: {args.dtype} replaced by fp32")
        if not ops:
            print("\n".join(f"# {n}" for n in notes))
            return 0
    t0 = time.perf_counter()
    print("measuring peaks ...", file=sys.stderr)
    peaks = common.measure_peaks(device, dtype if device.type == "cuda" else torch.float32)
    results = {"environment": common.environment(device), "dtype": str(dtype).replace("torch.", ""),
               "smoke": args.smoke, "peaks": peaks, "rows": [], "notes": notes}
    try:
        results["backends"] = {op: {b: (why or "available") for b, why in t.items()}
                               for op, t in vitpose_kernels.backends().items()}
    except Exception as e:
        results["notes"].append(f"vitpose_kernels.backends() failed: {type(e).__name__}: {e}")
    if "attention" in ops:
        results["rows"] += bench_attention(args, device, dtype, peaks)
    if "decoder" in ops:
        results["rows"] += bench_simple_decoder(args, device, dtype, peaks)
    if "decode" in ops:
        results["rows"] += bench_decode(args, device, peaks)
    results["seconds"] = time.perf_counter() - t0
    print(render(results))
    d = common.out_dir(args.out)
    stem = f"kernels_{'gpu' if device.type == 'cuda' else 'cpu'}{'_smoke' if args.smoke else ''}_{results['dtype']}"
    path = common.save_json(results, d, stem)
    png = d / f"{stem}.png"
    made = plot(results, png)
    print(f"\nwrote {path}" + (f" and {png}" if made else "") + f"  [{results['seconds']:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
