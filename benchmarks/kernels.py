"""Each vitpose_kernels op against its peers, forward and forward+backward, beside its floors.

    python benchmarks/kernels.py                 # on a GPU: every op, bf16
    python benchmarks/kernels.py --smoke         # tiny shapes on CPU: checks the harness, not speed
    python benchmarks/kernels.py --ops decode    # decoding only (on CPU too, vs transformers)

window_attention (the Table 5 shapes at 32x24 tokens, full attention at 192, 768 and 3888 tokens,
192 tokens + a knowledge token) against
  reference   vitpose_kernels' reference ops (cells by pad/reshape, logits materialized)
  sdpa flash  F.scaled_dot_product_attention forced to its flash backend
              (torch.nn.attention.sdpa_kernel) for full attention (with or without global
              tokens, which leave full attention dense)
  sdpa masked F.scaled_dot_product_attention over [k, pooled k] with the equivalent boolean mask
              (its own backend choice: flash takes no mask)
  flex        FlexAttention, torch.compile'd, with the equivalent mask_mod (pooled tokens
              concatenated as extra keys); the block mask is built once, outside the timing
  natten      NATTEN's fused 2-D neighbourhood attention (na2d, odd k x k ~ the window) when
              installed, on the plain window cases: comparable work, not the same op (no error)
  triton/cuda our fused backends, forced, through the packed-qkv entry the model uses (one
              packed gradient); skipped with the dispatcher's reasons where unavailable.
Every GPU timing flushes the L2 before each rep (common.flush_l2), so no peer is timed from cache.
masked_attention (TAR-ViTPose's joint queries over the clip's tokens with the heatmap masks, JTA,
and the centre frame's tokens over the joint tokens, GRA; the official 384x288 input, 4 heads of
192 for ViT-B, and the 256x192 / 12 x 64 variant) against
  reference   vitpose_kernels' reference (dense logits, masked softmax)
  sdpa bool   F.scaled_dot_product_attention with the boolean mask (its own backend choice)
  mha layer   the official layer: nn.MultiheadAttention(batch_first) with the repeated attn_mask,
              beside the same layer (same weights) built on our op: "layer triton" / "layer cuda"
and heatmap_key_mask (the official mask generation, PyTorch) against its one-launch kernel.
simple_decoder (ReLU, bilinear x4, 3x3 conv) against the reference (interpolate + cuDNN conv over
the upsampled map). decode_heatmaps (1024 instances x 17 keypoints, flip merge) on the GPU against
transformers' VitPoseImageProcessor.post_process_pose_estimation (NumPy, this machine's CPU).

Two floors per measurement, from the measured copy bandwidth and matmul peak:
  bw floor    the bytes that must move / bandwidth. Attention forward: q, k, v read once and out
              written once; forward+backward adds out, dout, lse read and dq, dk, dv written.
  flop floor  useful FLOPs / matmul peak. Attention counts only allowed (query, key) pairs: 4*D
              per pair forward (QK^T, PV), 14*D forward+backward (FlashAttention-2: 7 matmuls).
On a GPU, forward+backward also records its peak memory: inputs (q, k, v, dout) plus the peak
allocated above them, over the bytes of q, k, v, out and their gradients (issue 4: <= 1.10).
The run ends with the issues' targets (4, 5, 6, 7), each PASS, MISS or n/a.

Measurements run in order of importance (the targets' rows first, FlexAttention's compiles and
the remaining shapes last), so a spent --budget-s or a SIGTERM drops the least useful; the JSON is
written either way.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import vitpose_kernels  # noqa: E402
from vitpose_kernels import _validate  # noqa: E402
from vitpose_kernels.reference import pooled_tokens  # noqa: E402
from vitpose_kernels.reference.window_attention import _cell_padding  # noqa: E402  (the spec's geometry)

OURS = ("triton", "cuda")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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
    role: str = ""  # "target": issue 4/6's window case; "full192"/"full768": the SDPA comparisons

    @property
    def N(self) -> int:
        return self.num_global + self.grid[0] * self.grid[1]

    def kwargs(self) -> dict:
        return dict(grid=self.grid, window=self.window, shift=self.shift, pool=self.pool,
                    num_global=self.num_global)


def attention_cases(smoke: bool) -> list[AttnCase]:
    if smoke:
        return [AttnCase("smoke full 8x6", 2, 2, 16, (8, 6), role="full192"),
                AttnCase("smoke window 4x4 shift+pool", 2, 2, 16, (8, 6), (4, 4), (2, 2), True, role="target"),
                AttnCase("smoke full + 1 global", 2, 2, 16, (8, 6), num_global=1)]
    t5 = dict(B=64, H=12, D=64, grid=(32, 24))
    return [
        AttnCase("T5 full 32x24 (768 tok)", **t5, role="full768"),
        AttnCase("T5 window 8x8", **t5, window=(8, 8)),
        AttnCase("T5 window 8x8 shift", **t5, window=(8, 8), shift=(4, 4)),
        AttnCase("T5 window 8x8 pool", **t5, window=(8, 8), pool=True),
        AttnCase("T5 window 8x8 shift+pool", **t5, window=(8, 8), shift=(4, 4), pool=True, role="target"),
        AttnCase("T5 window 16x12 shift+pool", **t5, window=(16, 12), shift=(8, 6), pool=True),
        AttnCase("full 16x12 (192 tok)", 64, 12, 64, (16, 12), role="full192"),
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

def make_qkv(case: AttnCase, dtype, device, requires_grad=False):
    # The model's layout: one qkv projection (B, N, 3, H, D) read as strided views.
    torch.manual_seed(0)
    qkv = torch.randn(case.B, case.N, 3, case.H, case.D, device=device, dtype=dtype)
    qkv.requires_grad_(requires_grad)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return qkv, q, k, v


@dataclass
class AttnSetup:
    """What every peer of one case shares: the spec, the equivalent mask's cell ids, the floors,
    and the reference output (computed once, for the error column)."""
    case: AttnCase
    spec: object
    q_ids: torch.Tensor
    k_ids: torch.Tensor
    floor: dict
    want: torch.Tensor | None = None
    want_error: str = ""

    def reference_out(self, dtype, device):
        if self.want is None and not self.want_error:
            try:
                _, q, k, v = make_qkv(self.case, dtype, device)
                self.want = vitpose_kernels.window_attention(q, k, v, **self.case.kwargs(), backend="reference")
            except Exception as e:
                self.want_error = common.skip_reason(e)
        return self.want


def attention_setup(case: AttnCase, dtype, device, peaks) -> AttnSetup:
    _, q, k, v = make_qkv(case, dtype, device)
    spec = _validate.window_attention_spec(q, k, v, **case.kwargs(), rel_pos_h=None, rel_pos_w=None, scale=None)
    q_ids, k_ids = cell_ids(case, spec, device)
    return AttnSetup(case, spec, q_ids, k_ids, attention_floor(case, q_ids, k_ids, q.element_size(), peaks))


def attention_floor(case: AttnCase, q_ids, k_ids, itemsize: int, peaks: dict) -> dict:
    pairs = float(allowed(q_ids[:, None], k_ids[None, :]).sum()) * case.B * case.H
    bhnd = case.B * case.H * case.N * case.D * itemsize  # one of q, k, v, out, dq, ...
    lse = case.B * case.H * case.N * 4
    fwd_bytes = 4 * bhnd  # q, k, v read, out written
    bwd_bytes = 5 * bhnd + lse + 3 * bhnd  # q, k, v, out, dout, lse read; dq, dk, dv written
    flops = {"fwd": 4 * case.D * pairs, "fwdbwd": 14 * case.D * pairs}
    nbytes = {"fwd": fwd_bytes, "fwdbwd": fwd_bytes + lse + bwd_bytes}
    out = {"fwd_gflop": flops["fwd"] / 1e9, "fwd_mbytes": nbytes["fwd"] / 1e6,
           "fwdbwd_gflop": flops["fwdbwd"] / 1e9, "fwdbwd_mbytes": nbytes["fwdbwd"] / 1e6,
           "qkv_out_and_grads_bytes": 8 * bhnd, "one_tensor_bytes": bhnd}
    for phase in ("fwd", "fwdbwd"):
        out.update(common.floors(flops[phase], nbytes[phase], peaks, phase))
    return out


def attention_fn(setup: AttnSetup, peer: str, device, smoke: bool):
    """fn(q, k, v) for a peer, or raise NotImplementedError with the reason it cannot run."""
    case, spec = setup.case, setup.spec
    if peer == "reference":
        return lambda q, k, v: vitpose_kernels.window_attention(q, k, v, **case.kwargs(), backend=peer)
    if peer in OURS:  # as the model calls them: the packed qkv entry (one packed gradient)
        def ours(q, k, v):
            qkv = q._base  # make_qkv's q, k, v are views of one (B, N, 3, H, D) leaf
            if qkv is None or qkv.shape != (case.B, case.N, 3, case.H, case.D):
                return vitpose_kernels.window_attention(q, k, v, **case.kwargs(), backend=peer)
            return vitpose_kernels.window_attention_qkvpacked(qkv, **case.kwargs(), backend=peer)
        return ours
    if peer == "sdpa flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_flash(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, scale=spec.scale)
        return sdpa_flash
    if peer == "sdpa masked":
        mask = allowed(setup.q_ids[:, None], setup.k_ids[None, :])

        def sdpa(q, k, v):
            kx, vx = extra_keys(k, v, spec)
            return F.scaled_dot_product_attention(q, kx, vx, attn_mask=mask, scale=spec.scale)
        return sdpa
    if peer == "flex (compiled)":
        return flex_fn(setup, device, smoke)
    if peer.startswith("natten"):
        return natten_fn(setup, device)
    raise ValueError(peer)


def natten_kernel_size(case: AttnCase) -> tuple[int, int]:
    """NATTEN's neighbourhood (odd sides) with about the window's keys per query."""
    wh, ww = case.window
    return (wh | 1, ww | 1)


def natten_fn(setup: AttnSetup, device):
    """NATTEN's fused 2-D neighbourhood attention, the nearest rival kernel: each query attends a
    sliding k x k neighbourhood instead of its window cell, so it does comparable work (k*k keys
    per query, no pooling, no shift) but not the same op: timed, with no error column."""
    case = setup.case
    if case.window is None or case.pool or case.num_global:
        raise NotImplementedError("NATTEN is compared on plain window cases (no pooling, no global tokens)")
    try:
        import natten  # noqa: F401
        from natten.functional import na2d
    except ImportError as e:
        raise NotImplementedError(f"NATTEN not installed ({e}); pip install natten for this peer") from None
    if device.type != "cuda":
        raise NotImplementedError("NATTEN is timed on a GPU only")
    (hg, wg), ks = case.grid, natten_kernel_size(case)

    def neighbourhood(q, k, v):  # (B, H, N, D) -> NATTEN's (B, Hg, Wg, H, D) layout, as views
        def grid(t):
            return t.transpose(1, 2).unflatten(1, (hg, wg))
        return na2d(grid(q), grid(k), grid(v), kernel_size=ks).flatten(1, 2).transpose(1, 2)

    return neighbourhood


def flex_fn(setup: AttnSetup, device, smoke: bool):
    if smoke or device.type != "cuda":
        raise NotImplementedError("FlexAttention is timed compiled on a GPU only")
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        raise NotImplementedError(f"torch.nn.attention.flex_attention unavailable: {e}") from None
    q_ids, k_ids, spec = setup.q_ids, setup.k_ids, setup.spec

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(q_ids[q_idx], k_ids[kv_idx])

    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=setup.case.N, KV_LEN=len(k_ids), device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def flex(q, k, v):
        kx, vx = extra_keys(k, v, spec)
        return compiled(q, kx, vx, block_mask=block_mask, scale=spec.scale)

    return flex


def attention_peers(case: AttnCase) -> list[str]:
    # Full attention with global tokens is still dense (every query sees every token): plain
    # SDPA, so that its flash backend can run (a mask rules flash out).
    plain_full = case.window is None and not case.pool
    natten = [f"natten na2d {natten_kernel_size(case)[0]}x{natten_kernel_size(case)[1]}"] if (
        case.window is not None and not case.pool and not case.num_global) else []
    return ["reference", "sdpa flash" if plain_full else "sdpa masked", "flex (compiled)", *natten, *OURS]


def run_attention(setup: AttnSetup, peer: str, dtype, device, args) -> dict:
    case = setup.case
    fn = attention_fn(setup, peer, device, args.smoke)
    _, q, k, v = make_qkv(case, dtype, device)
    out = fn(q, k, v)
    res = {}
    want = setup.reference_out(dtype, device)
    if want is not None:
        res["max_abs_err_vs_reference"] = (out.float() - want.float()).abs().max().item()
    res["fwd"] = common.bench(lambda: fn(q, k, v), device=device, rep=args.rep, max_seconds=args.max_seconds)
    if args.no_backward:
        return res
    del out
    qkv, q, k, v = make_qkv(case, dtype, device, requires_grad=True)
    grad = torch.randn(case.B, case.H, case.N, case.D, device=device, dtype=dtype)

    def step():
        qkv.grad = None
        fn(q, k, v).backward(grad)

    res["fwdbwd"] = common.bench(step, device=device, rep=args.rep, max_seconds=args.max_seconds)
    qkv.grad = None
    mem = common.peak_memory(step, device)
    if mem is not None:
        inputs = qkv.numel() * qkv.element_size() + grad.numel() * grad.element_size()
        res["fwdbwd_memory"] = {**mem, "inputs_bytes": inputs,
                                "ratio_to_qkv_out_grads": (inputs + mem["peak_above_before_bytes"])
                                / setup.floor["qkv_out_and_grads_bytes"]}
    return res


# ----------------------------------------------------------------------------- simple_decoder

def decoder_job(args, device, dtype, peaks):
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
    floor = {"fwd_gflop": fwd_flops / 1e9, "fwd_mbytes": fwd_bytes / 1e6,
             "reference_conv_gflop": 2 * out_numel * C * 9 / 1e9}
    floor.update(common.floors(fwd_flops, fwd_bytes, peaks, "fwd"))
    # backward: dx and dweight (2 more contractions), reading dout and x again, writing dx
    floor.update(common.floors(3 * fwd_flops, 2 * fwd_bytes + (x.numel() + out_numel) * item, peaks, "fwdbwd"))
    case = f"B{B} C{C} {h}x{w} -> K{K} {h * s}x{w * s}"
    state = {}

    def run(peer):
        fn = lambda x_, w_, b_: vitpose_kernels.simple_decoder(x_, w_, b_, scale_factor=s, backend=peer)  # noqa: E731
        if "want" not in state:
            state["want"] = vitpose_kernels.simple_decoder(x, weight, bias, scale_factor=s, backend="reference")
        want = state["want"]
        res = {"max_abs_err_vs_reference": (fn(x, weight, bias).float() - want.float()).abs().max().item(),
               "fwd": common.bench(lambda: fn(x, weight, bias), device=device, rep=args.rep,
                                   max_seconds=args.max_seconds)}
        if not args.no_backward:
            xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
            grad = torch.randn_like(want)

            def step():
                xg.grad = wg.grad = bg.grad = None
                fn(xg, wg, bg).backward(grad)

            res["fwdbwd"] = common.bench(step, device=device, rep=args.rep, max_seconds=args.max_seconds)
        return res

    ref_name = "reference (interpolate + cuDNN conv)" if device.type == "cuda" else "reference (interpolate + conv)"
    return case, floor, [(ref_name, lambda: run("reference"))] + [(n, lambda _n=n: run(_n)) for n in OURS]


# ----------------------------------------------------------------------------- decode_heatmaps

def hf_post_processor():
    try:
        import transformers
        from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput
        proc_cls = getattr(transformers, "VitPoseImageProcessorPil", None) or transformers.VitPoseImageProcessor
        return proc_cls(), VitPoseEstimatorOutput, ""
    except Exception as e:
        return None, None, f"transformers VitPose unavailable: {type(e).__name__}: {e}"


def decode_jobs(args, device, dtype, peaks):
    """(case, peer, device, run, floor) for: ours on the GPU with and without flip, the reference
    (on the GPU; on the CPU where there is no GPU) and transformers' post-processing on the CPU."""
    B = args.decode_batch or (4 if args.smoke else 1024 if device.type == "cuda" else 64)
    K, Hh, Wh = 17, 64, 48
    torch.manual_seed(0)
    heat_cpu = torch.rand(B, K, Hh, Wh)
    flip_cpu = torch.rand(B, K, Hh, Wh)
    centers = torch.rand(B, 2) * 400 + 100
    scales = torch.rand(B, 2) * 200 + 100
    flip_indices = list(range(K))
    try:
        flip_indices = list(common.import_vitpose("COCO_FLIP_INDICES").COCO_FLIP_INDICES)
    except ImportError:
        pass
    hdt = dtype if device.type == "cuda" else torch.float32
    h, fh, c, s = heat_cpu.to(device, hdt), flip_cpu.to(device, hdt), centers.to(device), scales.to(device)
    base = f"B{B} K{K} {Hh}x{Wh}"
    jobs = []
    for flip in (True, False):
        case = base + (" + flip" if flip else "")
        nbytes = h.numel() * h.element_size() * (2 if flip else 1) + B * K * 3 * 4
        floor = common.floors(0, nbytes, peaks, "fwd")
        kw = dict(flip_heatmaps=fh, flip_indices=flip_indices) if flip else {}
        for name in OURS + ("reference",):
            if device.type == "cpu" and name != "reference":
                continue
            jobs.append((case, f"{name} [{device.type}]", device, floor, lambda _n=name, _kw=kw: (
                lambda: vitpose_kernels.decode_heatmaps(h, **_kw, bbox_centers=c, bbox_scales=s, backend=_n))))
    proc, out_cls, why = hf_post_processor()
    boxes = [[[float(cx - sx / 2), float(cy - sy / 2), float(sx), float(sy)]]
             for (cx, cy), (sx, sy) in zip(centers.tolist(), scales.tolist())]

    def hf():
        if proc is None:
            raise NotImplementedError(why)
        return lambda: proc.post_process_pose_estimation(out_cls(heatmaps=heat_cpu), boxes)

    jobs.append((base + " (no flip: it has none)", "transformers post_process_pose_estimation [cpu]",
                 torch.device("cpu"), None, hf))
    return B, jobs


# ----------------------------------------------------------------------------- masked_attention

@dataclass(frozen=True)
class MaskedCase:
    """JTA (joints over frames x grid tokens, with the heatmap mask) or GRA (grid over joints)."""
    name: str
    kind: str  # "jta" or "gra"
    B: int
    H: int
    D: int
    joints: int
    frames: int
    grid: tuple
    heatmap: tuple

    @property
    def lq(self) -> int:
        return self.joints if self.kind == "jta" else self.grid[0] * self.grid[1]

    @property
    def lk(self) -> int:
        return self.frames * self.grid[0] * self.grid[1] if self.kind == "jta" else self.joints


def masked_cases(smoke: bool) -> list[MaskedCase]:
    if smoke:
        return [MaskedCase("smoke JTA 5x3 frames 4x3", "jta", 2, 2, 16, 5, 3, (4, 3), (16, 12)),
                MaskedCase("smoke GRA 4x3 over 5", "gra", 2, 2, 16, 5, 3, (4, 3), (16, 12))]
    b384 = dict(B=64, H=4, D=192, joints=17, frames=5, grid=(24, 18), heatmap=(96, 72))  # the official config
    return [MaskedCase("TAR-B JTA 17 x 5x24x18, 4x192", "jta", **b384),
            MaskedCase("TAR-B GRA 24x18 x 17, 4x192", "gra", **b384),
            MaskedCase("TAR-B JTA 17 x 5x16x12, 12x64", "jta", 64, 12, 64, 17, 5, (16, 12), (64, 48))]


def clip_heatmaps(case: MaskedCase, device) -> torch.Tensor:
    """(B, T, J, H, W) Gaussian peaks (sigma 3, as TAR-ViTPose's targets) wandering over the clip."""
    g = torch.Generator().manual_seed(0)
    B, T, J, (Hh, Wh) = case.B, case.frames, case.joints, case.heatmap
    centre = torch.rand(B, 1, J, 2, generator=g) * torch.tensor([Wh - 1.0, Hh - 1.0])
    centre = centre + torch.randn(B, T, J, 2, generator=g).cumsum(1) * 1.5
    ys, xs = torch.arange(Hh).float(), torch.arange(Wh).float()
    d2 = (xs - centre[..., 0, None, None]) ** 2 + (ys[:, None] - centre[..., 1, None, None]) ** 2
    return (torch.exp(-d2 / 18.0) + 0.02 * torch.rand(B, T, J, Hh, Wh, generator=g)).to(device)


@dataclass
class MaskedSetup:
    case: MaskedCase
    allowed: torch.Tensor | None  # (B, Lq, Lk) bool, True = may attend
    floor: dict
    want: torch.Tensor | None = None


def masked_setup(case: MaskedCase, dtype, device, peaks) -> MaskedSetup:
    allowed = None
    if case.kind == "jta":
        allowed = vitpose_kernels.heatmap_key_mask(clip_heatmaps(case, device), case.grid, packed=False,
                                                   backend="reference")[:, 0]
    item = torch.empty(0, dtype=dtype).element_size()
    B, H, D, lq, lk = case.B, case.H, case.D, case.lq, case.lk
    pairs = float(allowed.sum()) * H if allowed is not None else float(B * H * lq * lk)
    seen = float(allowed.any(1).sum()) if allowed is not None else float(B * lk)  # keys any query needs
    rows_q, rows_k, need_k = B * H * lq * D * item, B * H * lk * D * item, seen * H * D * item
    mask = B * lq * -(-lk // 32) * 4 if allowed is not None else 0
    fwd_bytes = 2 * rows_q + 2 * need_k + mask  # q read, out written, the k and v rows seen, the mask
    bwd_bytes = 4 * rows_q + 2 * need_k + 2 * rows_k + mask + 2 * B * H * lq * 4  # + dq, dk, dv, lse, delta
    floor = {"fwd_gflop": 4 * D * pairs / 1e9, "fwd_mbytes": fwd_bytes / 1e6, "allowed_fraction":
             pairs / (B * H * lq * lk)}
    floor.update(common.floors(4 * D * pairs, fwd_bytes, peaks, "fwd"))
    floor.update(common.floors(14 * D * pairs, fwd_bytes + bwd_bytes, peaks, "fwdbwd"))
    return MaskedSetup(case, allowed, floor)


def masked_qkv(case: MaskedCase, dtype, device, requires_grad=False):
    torch.manual_seed(0)
    q, k, v = (torch.randn(case.B, case.H, n, case.D, device=device, dtype=dtype) for n in (case.lq, case.lk, case.lk))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def masked_fn(setup: MaskedSetup, peer: str):
    allowed = setup.allowed
    if peer in ("reference",) + OURS:
        words = None if allowed is None else vitpose_kernels.pack_key_mask(allowed[:, None])  # once, as TAR does
        return lambda q, k, v: vitpose_kernels.masked_attention(q, k, v, words, backend=peer)
    if peer == "sdpa bool":
        m = None if allowed is None else allowed[:, None]
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    raise ValueError(peer)


def run_masked(setup: MaskedSetup, peer: str, dtype, device, args) -> dict:
    fn = masked_fn(setup, peer)
    q, k, v = masked_qkv(setup.case, dtype, device)
    out = fn(q, k, v)
    if setup.want is None:
        setup.want = vitpose_kernels.masked_attention(q, k, v, None if setup.allowed is None else setup.allowed[:, None],
                                                      backend="reference")
    res = {"max_abs_err_vs_reference": (out.float() - setup.want.float()).nan_to_num(0.0).abs().max().item(),
           "fwd": common.bench(lambda: fn(q, k, v), device=device, rep=args.rep, max_seconds=args.max_seconds)}
    if not args.no_backward:
        q, k, v = masked_qkv(setup.case, dtype, device, requires_grad=True)
        grad = torch.randn_like(out)

        def step():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(grad)

        res["fwdbwd"] = common.bench(step, device=device, rep=args.rep, max_seconds=args.max_seconds)
    return res


def run_masked_layer(setup: MaskedSetup, peer: str, dtype, device, args) -> dict:
    """The official layer (nn.MultiheadAttention, attn_mask repeated per head, True = masked) against
    the same weights with the projections done by F.linear and the attention by our op."""
    case = setup.case
    C = case.H * case.D
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(C, case.H, batch_first=True).to(device, dtype)
    query = torch.randn(case.B, case.lq, C, device=device, dtype=dtype)
    ctx = torch.randn(case.B, case.lk, C, device=device, dtype=dtype)
    if peer == "mha layer":
        attn_mask = None if setup.allowed is None else (~setup.allowed)[:, None].expand(-1, case.H, -1, -1).flatten(0, 1)
        fn = lambda x, c: mha(x, c, c, attn_mask=attn_mask)[0]  # noqa: E731
    else:
        backend = peer.split()[-1]
        words = None if setup.allowed is None else vitpose_kernels.pack_key_mask(setup.allowed[:, None])
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        bq, bk, bv = mha.in_proj_bias.chunk(3)
        heads = lambda t: t.unflatten(-1, (case.H, case.D)).transpose(1, 2)  # noqa: E731

        def fn(x, c):
            o = vitpose_kernels.masked_attention(heads(F.linear(x, wq, bq)), heads(F.linear(c, wk, bk)),
                                                 heads(F.linear(c, wv, bv)), words, backend=backend)
            return mha.out_proj(o.transpose(1, 2).flatten(2))
    res = {"fwd": common.bench(lambda: fn(query, ctx), device=device, rep=args.rep, max_seconds=args.max_seconds)}
    if not args.no_backward:
        x, c = query.clone().requires_grad_(True), ctx.clone().requires_grad_(True)
        grad = torch.randn_like(query)

        def step():
            x.grad = c.grad = None
            mha.zero_grad(set_to_none=True)
            fn(x, c).backward(grad)

        res["fwdbwd"] = common.bench(step, device=device, rep=args.rep, max_seconds=args.max_seconds)
    return res


def run_mask_generation(case: MaskedCase, peer: str, device, args, peaks) -> dict:
    """The bit-packed JTA mask from a clip's heatmaps; floor: read the heatmaps, write the words."""
    hm = clip_heatmaps(case, device)
    fn = lambda: vitpose_kernels.heatmap_key_mask(hm, case.grid, backend=peer)  # noqa: E731
    nbytes = hm.numel() * hm.element_size() + case.B * case.joints * -(-case.lk // 32) * 4
    return {"floor": common.floors(0, nbytes, peaks, "fwd"),
            "fwd": common.bench(fn, device=device, rep=args.rep, max_seconds=args.max_seconds)}


def masked_jobs(args, device, dtype, peaks) -> list:
    """(case, peer, run, display order) of the masked_attention section."""
    jobs = []
    for ci, case in enumerate(masked_cases(args.smoke)):
        cache = {}

        def setup(_case=case, _cache=cache):
            if "s" not in _cache:
                _cache["s"] = masked_setup(_case, dtype, device, peaks)
            return _cache["s"]

        shape = f"B{case.B} H{case.H} Lq{case.lq} Lk{case.lk} D{case.D}"
        for peer in ("reference", "sdpa bool") + OURS:
            jobs.append((case.name, peer, lambda _s=setup, _p=peer: {
                "floor": _s().floor, "shape": shape, **run_masked(_s(), _p, dtype, device, args)}, (ci, 0)))
        for peer in ("mha layer",) + tuple(f"layer {b}" for b in OURS):
            jobs.append((case.name + " layer", peer, lambda _s=setup, _p=peer: {
                "shape": shape, **run_masked_layer(_s(), _p, dtype, device, args)}, (ci, 1)))
        if case.kind == "jta":
            for peer in ("reference", "triton"):
                jobs.append((f"heatmap_key_mask B{case.B} T{case.frames} J{case.joints} {case.heatmap} -> {case.grid}",
                             peer, lambda _c=case, _p=peer: run_mask_generation(_c, _p, device, args, peaks), (ci, 2)))
    return jobs


# ----------------------------------------------------------------------------- the run

@dataclass
class Job:
    op: str
    case: str
    peer: str
    run: Callable[[], dict]
    priority: int
    order: tuple
    need_s: float = 0.0
    extra: dict = field(default_factory=dict)


def plan(args, ops, device, dtype, peaks) -> list[Job]:
    """Every measurement, with its priority: 0 the window case of issues 4/6, 1 the SDPA
    comparisons, 2 the decoder, 3 decoding, 4 masked attention (issue 16), 5 FlexAttention on the target case, 6 the rest, 7
    FlexAttention elsewhere. Within a priority, the display order."""
    jobs = []
    gpu = device.type == "cuda"
    if "attention" in ops:
        for ci, case in enumerate(attention_cases(args.smoke)):
            setup_cache = {}

            def setup(_case=case, _cache=setup_cache):
                if "s" not in _cache:
                    _cache["s"] = attention_setup(_case, dtype, device, peaks)
                return _cache["s"]

            for pi, peer in enumerate(attention_peers(case)):
                flex = peer.startswith("flex")
                if case.role == "target":
                    prio = 5 if flex else 6 if peer.startswith("sdpa") else 0
                elif case.role in ("full192", "full768"):
                    prio = 7 if flex else 6 if peer == "reference" else 1
                else:
                    prio = 7 if flex else 6
                run = (lambda _s=setup, _p=peer: {"floor": _s().floor, "shape":
                       f"B{_s().case.B} H{_s().case.H} N{_s().case.N} D{_s().case.D}",
                       **run_attention(_s(), _p, dtype, device, args)})
                jobs.append(Job("window_attention", case.name, peer, run, prio, (0, ci, pi),
                                need_s=40.0 if flex and gpu else 0.0, extra={"role": case.role}))
    if "decoder" in ops:
        case, floor, peers = decoder_job(args, device, dtype, peaks)
        for pi, (peer, run) in enumerate(peers):
            jobs.append(Job("simple_decoder", case, peer, lambda _r=run, _f=floor: {"floor": _f, **_r()}, 2,
                            (1, 0, pi)))
    if "masked" in ops:
        for pi, (case, peer, run, order) in enumerate(masked_jobs(args, device, dtype, peaks)):
            jobs.append(Job("masked_attention", case, peer, run, 4, (3,) + order + (pi,)))
    if "decode" in ops:
        B, djobs = decode_jobs(args, device, dtype, peaks)
        for pi, (case, peer, dev, floor, factory) in enumerate(djobs):
            prio = 6 if peer.startswith("reference") and gpu else 3

            def run(_dev=dev, _f=floor, _factory=factory):
                fn = _factory()
                fn()
                reps = args.rep if _dev.type == "cuda" else min(args.rep, 5)
                return {"floor": _f, "device": _dev.type,
                        "fwd": common.bench(fn, device=_dev, warmup=1 if _dev.type == "cpu" else 3, rep=reps,
                                            max_seconds=args.max_seconds)}
            jobs.append(Job("decode_heatmaps", case, peer, run, prio, (2, 0, pi), extra={"instances": B}))
    return sorted(jobs, key=lambda j: j.priority)  # stable: display order within a priority


def run_jobs(jobs: list[Job], rows: list, budget: common.Budget, device) -> None:
    for job in jobs:
        row = {"op": job.op, "case": job.case, "peer": job.peer, **job.extra, "_order": job.order}
        if not budget.allows(job.need_s):
            row["skipped"] = budget.skip_reason(job.need_s)
        else:
            try:
                row.update(job.run())
            except common.Interrupted:
                raise
            except Exception as e:  # a peer that breaks must not hide the others' numbers
                row["skipped"] = common.skip_reason(e)
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
        _progress(row)


# ----------------------------------------------------------------------------- targets

def find(rows, op, peer, *, role=None, case=None):
    for r in rows:
        if r["op"] == op and r["peer"] == peer and (role is None or r.get("role") == role) \
                and (case is None or r["case"] == case) and "skipped" not in r:
            return r
    return None


def _t(r, phase="fwd"):
    return r[phase]["median_ms"] if r and phase in r else None


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def targets(rows, smoke: bool) -> list[dict]:
    """Issues 4-7's performance goals, from the rows of this run."""
    out = []
    names = {c.role: c.name for c in attention_cases(smoke) if c.role}
    wa = "window_attention"
    ref = find(rows, wa, "reference", role="target")
    flex = find(rows, wa, "flex (compiled)", role="target")
    tri = find(rows, wa, "triton", role="target")
    cud = find(rows, wa, "cuda", role="target")
    name = names.get("target", "target")
    for backend, r, issue, vs_flex, floor_x in (("triton", tri, 4, 1.5, 2.0), ("cuda", cud, 6, 1.5, 1.5)):
        for ph in ("fwd", "fwdbwd"):
            if backend == "triton":
                out.append(common.check(4, f"{name} {ph}: triton vs reference", _ratio(_t(ref, ph), _t(r, ph)), 4))
            else:
                out.append(common.check(6, f"{name} {ph}: cuda vs triton", _ratio(_t(tri, ph), _t(r, ph)), 1.2))
            out.append(common.check(issue, f"{name} {ph}: {backend} vs flex", _ratio(_t(flex, ph), _t(r, ph)), vs_flex))
            bw = (r or {}).get("floor", {}).get(f"{ph}_bw_floor_ms")
            out.append(common.check(issue, f"{name} {ph}: {backend} time / bandwidth floor",
                                    _ratio(_t(r, ph), bw), floor_x, at_most=True))
    for role in ("full192", "full768"):
        sdpa = find(rows, wa, "sdpa flash", role=role)
        for backend, issue, goal in (("triton", 4, 0.9), ("cuda", 6, 1.0)):
            r = find(rows, wa, backend, role=role)
            case = names.get(role, role)
            for ph in ("fwd", "fwdbwd"):
                out.append(common.check(issue, f"{case} {ph}: {backend} vs sdpa flash",
                                        _ratio(_t(sdpa, ph), _t(r, ph)), goal))
    for role in ("target", "full192", "full768"):
        for backend, issue in (("triton", 4), ("cuda", 6)):
            r = find(rows, wa, backend, role=role)
            mem = (r or {}).get("fwdbwd_memory")
            out.append(common.check(issue, f"{names.get(role, role)}: {backend} fwd+bwd peak / bytes of "
                                    "q,k,v,out + grads", mem and mem["ratio_to_qkv_out_grads"], 1.10, at_most=True,
                                    why_missing="not measured (GPU only)"))
    dref = next((r for r in rows if r["op"] == "simple_decoder" and r["peer"].startswith("reference")
                 and "skipped" not in r), None)
    dtri, dcud = find(rows, "simple_decoder", "triton"), find(rows, "simple_decoder", "cuda")
    for ph, goal in (("fwd", 5), ("fwdbwd", 3)):
        out.append(common.check(5, f"simple_decoder {ph}: triton vs reference", _ratio(_t(dref, ph), _t(dtri, ph)), goal))
        out.append(common.check(7, f"simple_decoder {ph}: cuda vs triton", _ratio(_t(dtri, ph), _t(dcud, ph)), 1.0))
    hf = next((r for r in rows if r["op"] == "decode_heatmaps" and r["peer"].startswith("transformers")
               and "skipped" not in r), None)
    for backend, issue, ms in (("triton", 5, 1.0), ("cuda", 7, 0.5)):
        r = next((r for r in rows if r["op"] == "decode_heatmaps" and r["peer"] == f"{backend} [cuda]"
                  and r["case"].endswith("+ flip") and "skipped" not in r), None)
        out.append(common.check(issue, f"decode {(r or {}).get('instances', 1024)}x17 + flip: {backend} ms",
                                _t(r), ms, at_most=True, unit=" ms"))
        out.append(common.check(issue, f"decode + flip: {backend} [cuda] instances/s vs transformers [cpu]",
                                _ratio(_t(hf), _t(r)), 300))  # same instance count: a ratio of times
    tri_dec = next((r for r in rows if r["op"] == "decode_heatmaps" and r["peer"] == "triton [cuda]"
                    and r["case"].endswith("+ flip") and "skipped" not in r), None)
    cud_dec = next((r for r in rows if r["op"] == "decode_heatmaps" and r["peer"] == "cuda [cuda]"
                    and r["case"].endswith("+ flip") and "skipped" not in r), None)
    out.append(common.check(7, "decode + flip: cuda vs triton", _ratio(_t(tri_dec), _t(cud_dec)), 1.0))
    # Issue 16 names the peers, not a number: the fused op should at least match them.
    for case in masked_cases(smoke)[:2]:
        ma = "masked_attention"
        sdpa, mha = find(rows, ma, "sdpa bool", case=case.name), find(rows, ma, "mha layer", case=case.name + " layer")
        for backend in OURS:
            r, layer = find(rows, ma, backend, case=case.name), find(rows, ma, f"layer {backend}", case=case.name + " layer")
            out.append(common.check(16, f"{case.name} fwd+bwd: {backend} vs sdpa bool",
                                    _ratio(_t(sdpa, "fwdbwd"), _t(r, "fwdbwd")), 1.0))
            out.append(common.check(16, f"{case.name} layer fwd+bwd: {backend} vs nn.MultiheadAttention",
                                    _ratio(_t(mha, "fwdbwd"), _t(layer, "fwdbwd")), 1.0))
    return out


# ----------------------------------------------------------------------------- report

def _progress(row):
    t = row.get("fwd", {}).get("median_ms")
    print(f"  .. {row['op']:<16} {row['case'][:34]:<34} {row['peer'][:40]:<40} "
          + (f"{t:.3f} ms" if t is not None else f"skipped: {row.get('skipped', '')[:80]}"), file=sys.stderr,
          flush=True)


def render(results: dict) -> str:
    env, peaks = results["environment"], results["peaks"]
    lines = [f"# kernels: {results['dtype']}, {'SMOKE (tiny shapes; timings mean nothing)' if results['smoke'] else 'full shapes'}"
             + (" -- INTERRUPTED, partial" if results.get("interrupted") else ""),
             f"# {common.environment_line(env)}",
             f"# measured peaks: {common.peaks_line(peaks)}",
             "# bw = bytes that must move / measured bandwidth; flop = useful FLOPs / measured matmul peak; "
             "'x bw' = time / bw floor (1 = at the floor); err = max |out - reference|; "
             "mem = fwd+bwd peak / bytes of q,k,v,out + grads"]
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
            mem = r.get("fwdbwd_memory")
            body.append([r["case"], r["peer"], common.fmt(f_ms, ".3f"), common.fmt(fl.get("fwd_bw_floor_ms"), ".3f"),
                         common.fmt(fl.get("fwd_flop_floor_ms"), ".3f"),
                         common.fmt(_ratio(f_ms, fl.get("fwd_bw_floor_ms")), ".1f"),
                         common.fmt(b_ms, ".3f"), common.fmt(fl.get("fwdbwd_bw_floor_ms"), ".3f"),
                         common.fmt(fl.get("fwdbwd_flop_floor_ms"), ".3f"),
                         common.fmt(_ratio(b_ms, fl.get("fwdbwd_bw_floor_ms")), ".1f"),
                         common.fmt(mem and mem["ratio_to_qkv_out_grads"], ".2f"),
                         common.fmt(r.get("max_abs_err_vs_reference"), ".1e")])
        lines += ["", op, common.format_table(
            ["case", "peer", "fwd ms", "bw", "flop", "x bw", "fwd+bwd ms", "bw", "flop", "x bw", "mem", "err"], body)]
        lines += skipped
    lines += ["", common.render_checks(results.get("targets", []))]
    if results.get("notes"):
        lines += [""] + [f"# {n}" for n in results["notes"]]
    return "\n".join(lines)


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
    return common.save_figure(plt, fig, path, f"vitpose_kernels ops vs peers, {results['dtype']}",
                              results["environment"])


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--ops", default="attention,decoder,decode,masked", help="subset of attention,decoder,decode,masked")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--max-seconds", type=float, default=2.0, help="of timed reps per measurement")
    p.add_argument("--decode-batch", type=int, default=None,
                   help="instances to decode (default 1024 on a GPU, 64 on a CPU, 4 with --smoke)")
    common.add_run_args(p, rep=20)
    args = p.parse_args(argv)
    common.stop_on_sigterm()
    budget = common.Budget(args.budget_s)
    ops = {o.strip() for o in args.ops.split(",") if o.strip()}
    bad = ops - {"attention", "decoder", "decode", "masked"}
    if bad:
        p.error(f"--ops: unknown {sorted(bad)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    notes = []
    if device.type == "cpu":
        if not args.smoke:
            kept = ops & {"decode"}
            if ops - kept:
                notes.append("no GPU: window_attention, simple_decoder and masked_attention are GPU benchmarks; "
                             "run them here with --smoke (tiny shapes, harness check only). Decoding ran on CPU.")
            ops = kept
        if args.dtype != "fp32":
            dtype = torch.float32
            notes.append(f"CPU: {args.dtype} replaced by fp32")
        if not ops:
            print("\n".join(f"# {n}" for n in notes))
            return 0
    t0 = time.perf_counter()
    print("measuring peaks ...", file=sys.stderr, flush=True)
    peaks = common.measure_peaks(device, dtype if device.type == "cuda" else torch.float32)
    results = {"environment": common.environment(device), "dtype": str(dtype).replace("torch.", ""),
               "smoke": args.smoke, "peaks": peaks, "rows": [], "notes": notes,
               "budget_s": args.budget_s}
    try:
        run_jobs(plan(args, ops, device, dtype, peaks), results["rows"], budget, device)
    except common.Interrupted as e:
        results["interrupted"] = str(e)
        notes.append(f"interrupted ({e}): rows not run are missing")
    results["rows"].sort(key=lambda r: r["_order"])
    for r in results["rows"]:
        r.pop("_order", None)
    results["targets"] = targets(results["rows"], args.smoke)
    if args.smoke or device.type != "cuda":
        common.not_judged(results["targets"], "smoke run" if args.smoke else "no GPU")
    stem = f"kernels_{'gpu' if device.type == 'cuda' else 'cpu'}{'_smoke' if args.smoke else ''}_{results['dtype']}"
    common.finish(results, args.out, stem, render, plot, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
