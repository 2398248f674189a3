"""Executed work of the window_attention and masked_attention kernels, measured on the CPU, against
what the geometry (for masked_attention: the mask) needs; plus a roofline prediction for H100 and H200.

    python benchmarks/cost_model.py --json out.json                      # every case, both backends
    python benchmarks/cost_model.py --case t5-window8x8-shift-pool --backend triton --json out.json

How each number is obtained (benchmarks/cost/ holds one module per instrument):
  executed FLOPs, bytes  Triton: the interpreter instrumented (every executed tl.dot adds
                         2*M*N*K, every tl.load / tl.store the bytes of its active lanes, masked
                         lanes apart); CUDA: the emulator built with -DVPEMU_COUNT (every
                         executed mma.sync, every global load/store and cp.async of the real
                         csrc kernels). The kernels run at the target geometry with reduced batch
                         and heads (--run-batch / --run-heads); each launch is scaled by the ratio
                         of its program count at the full size (a dry run at the full size records
                         the grids without running the programs) to its count in the run. The
                         PyTorch ops the op runs around or inside its kernels (pooling copies,
                         stacking gradients, ...) are counted at the full size by a dispatch mode.
  HBM bytes              the same executed accesses, per program (CTA): the distinct 32-byte
                         sectors it reads before touching them itself, plus the distinct sectors
                         it writes, summed over programs (a re-read inside one program is an L2
                         hit; nothing is shared between programs or launches); plus the PyTorch
                         ops' bytes. The model's assumption, that what a program re-reads is
                         still in L2, is shown beside it: the mean LRU reuse distance of those
                         re-reads (distinct bytes the program touched in between) times the
                         programs resident at once (SMs x CTAs/SM), over the 50 MB L2.
  useful FLOPs, floor    from the geometry alone (benchmarks/cost/geometry.py)
  peak extra memory      the full-size dry run's live tensor bytes through forward + backward with
                         q, k, v views of one packed (B, N, 3, H, D) tensor, as the model calls it:
                         (qkv + dout + peak allocated during the step) / bytes of q, k, v, out
                         and their gradients (what benchmarks/kernels.py measures on a GPU)
  registers, spills, ... the sm_90a machine code of exactly the launched specializations
                         (benchmarks/cost/cubin.py)
  predictions            max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) at the peak figures in
                         PEAKS: a roofline bound, labelled as a prediction; no GPU has run this.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

# The counters instrument the Triton interpreter: it must be on before any kernel is defined.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from cost import cubin, geometry, masked  # noqa: E402
from cost.launches import Counts, scaled_launches  # noqa: E402
from cost.torch_counter import TorchCounter  # noqa: E402

import vitpose_kernels as vk  # noqa: E402
from vitpose_kernels._attention_ops import forced_plan  # noqa: E402

TARGET = "t5-window8x8-shift-pool"
DIRECTIONS = ("fwd", "fwd+bwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Peak figures the predictions assume (NVIDIA data sheets, SXM parts): dense bf16 tensor-core
# FLOP/s (no sparsity) and HBM bandwidth.
PEAKS = {
    "H100": dict(bf16_dense_tflops=989.4, hbm_tb_per_s=3.35, sms=132, l2_mb=50, note="H100 SXM5 80 GB, HBM3"),
    "H200": dict(bf16_dense_tflops=989.4, hbm_tb_per_s=4.8, sms=132, l2_mb=50, note="H200 SXM 141 GB, HBM3e"),
}


# ============================================================================ cases
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    geom: geometry.Geometry | masked.MaskedGeometry
    about: str
    dtype: str = "bf16"

    @property
    def op(self) -> str:
        return "masked_attention" if isinstance(self.geom, masked.MaskedGeometry) else "window_attention"


def layer_case(plan: dict) -> str:
    """The case name of one layer's attention (a ViTPoseConfig.layer_attention plan)."""
    win = plan["window"]
    if win is None:
        return "t5-full"
    return f"t5-window{win[0]}x{win[1]}" + ("-shift" if any(plan["shift"]) else "") + ("-pool" if plan["pool"] else "")


def _t5_cases() -> list[Case]:
    """The distinct attention layers of the Table 5 presets (ViTPose-B at 1/8 features, 32x24
    tokens, batch 64): each preset alternates unshifted and shifted windows, full+window mixes
    full and window layers."""
    import vitpose

    out = {}
    for preset, cfg in vitpose.TABLE5.items():
        for i in range(cfg.depth):
            plan = cfg.layer_attention(i)
            g = geometry.Geometry(B=64, H=cfg.num_heads, D=cfg.head_dim, grid=tuple(cfg.grid), window=plan["window"],
                                  shift=tuple(plan["shift"]), pool=plan["pool"], rel_pos=plan["rel_pos"])
            about = "full attention, 768 tokens" if plan["window"] is None else f"layers of Table 5 '{preset}'"
            out.setdefault(layer_case(plan), Case(layer_case(plan), g, about))
    return list(out.values())


def all_cases() -> list[Case]:
    G = geometry.Geometry
    return _t5_cases() + [
        Case("full-192", G(B=64, H=12, D=64, grid=(16, 12)), "full attention, 192 tokens (ViTPose-B, 1/16 features)"),
        Case("sam-window14x14-relpos", G(B=1, H=12, D=64, grid=(64, 64), window=(14, 14), rel_pos=True),
             "SAM / VitDet-B window layers: 14x14 windows, decomposed rel-pos, 64x64 grid, one image"),
        Case("tokenpose-17global", G(B=64, H=8, D=24, grid=(16, 16), num_global=17),
             "TokenPose-B-like: 17 keypoint tokens + 16x16 visual tokens, full attention, 8 heads of 24"),
    ] + masked_cases()


def masked_cases() -> list[Case]:
    """TAR-ViTPose-B's masked_attention calls, 64 clips of 5 frames."""
    M = masked.MaskedGeometry
    official = dict(B=64, H=4, D=192, grid=(24, 18), heatmap=(96, 72))  # 384x288 input, 4 heads (official code)
    return [
        Case("tar-b-jta-16x12-12x64", M(B=64, H=12, D=64, kind="jta"),
             "TAR-ViTPose-B JTA at 256x192: 17 joint queries over 5 frames of 16x12 tokens, heatmap mask, 12 heads of 64"),
        Case("tar-b-jta-24x18-4x192", M(kind="jta", **official),
             "TAR-ViTPose-B JTA as the official code: 384x288 input (5 frames of 24x18 tokens), 4 heads of 192"),
        Case("tar-b-gra-24x18-4x192", M(kind="gra", **official),
             "TAR-ViTPose-B GRA as the official code: the centre frame's 432 tokens over 17 joint tokens, no mask"),
    ]


def find_cases(names: list[str] | None) -> list[Case]:
    cases = all_cases()
    if not names:
        return cases
    known = {c.name: c for c in cases}
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"unknown case(s) {bad}; known: {sorted(known)}")
    return [known[n] for n in names]


# ============================================================================ backends
class TritonBackend:
    name = "triton"

    def reason(self):
        if not vk.dispatch.interpreting():
            return "the Triton interpreter is off (TRITON_INTERPRET=1 must be set before triton loads)"
        return None

    @contextlib.contextmanager
    def context(self, dry: bool):
        """The dry (full-size, record-only) run takes the host code's GPU decisions: with
        TRITON_INTERPRET=0 at call time the launchers pick what they would on a GPU (e.g. tf32
        dots for bf16, where the interpreter needs an fp32 upcast), and the support checks that
        would send CPU tensors away are bypassed. The kernels stay interpreted objects (they were
        defined with the interpreter on), so the counter still only records their launches."""
        if not dry:
            yield
            return
        vk.dispatch.probe()  # every backend imported while the interpreter is on
        env, reasons = os.environ.get("TRITON_INTERPRET"), vk.dispatch.reasons
        os.environ["TRITON_INTERPRET"] = "0"
        vk.dispatch.reasons = lambda op, name, *a, **k: [] if name == self.name else reasons(op, name, *a, **k)
        try:
            yield
        finally:
            os.environ["TRITON_INTERPRET"] = env
            vk.dispatch.reasons = reasons

    def plan_kind(self, case: Case) -> str:
        """The launch plan the full-size call gets (the counted run at reduced batch and heads
        is forced to it: the Triton host picks per-head programs only when B*H fills the GPU)."""
        from vitpose_kernels.triton_backend.window_attention import host

        g = case.geom
        if isinstance(g, masked.MaskedGeometry):  # masked_attention: one launch plan
            return None
        geom = [*g.grid, *g.win, *(g.shift if g.window is not None else (0, 0)), g.num_global]
        return host.plan_of(g.B, g.H, g.N, g.D, DTYPES[case.dtype], geom, g.pool, g.rel_pos, g.rel_pos).kind

    def counter(self, dry: bool):
        from cost.triton_counter import TritonCounter

        return TritonCounter(dry=dry)

    def machine_code(self, launches, jobs: int) -> list[dict]:
        return cubin.compile_triton([cubin.launch_spec(lnch) for lnch in launches], jobs=jobs)


class CudaBackend:
    name = "cuda"

    def reason(self):
        from cost import cuda_counter

        return cuda_counter.unavailable_reason()

    def plan_kind(self, case: Case) -> None:
        return None  # one launch plan per shape, whatever the batch

    def context(self, dry: bool):
        from cost import cuda_counter

        return cuda_counter.emulated()

    def counter(self, dry: bool):
        from cost import cuda_counter

        return cuda_counter.CudaCounter(dry=dry)

    def machine_code(self, launches, jobs: int) -> list[dict]:
        from cost import cuda_counter

        return cuda_counter.machine_code(launches)


BACKENDS = {"triton": TritonBackend(), "cuda": CudaBackend()}


# ============================================================================ running the op
def _inputs(case: Case, B: int, H: int, grad: bool, dry: bool):
    """q, k, v made exactly as the model makes them (vitpose/models/vitpose.py, Attention.forward):
    views of the (B, N, 3*H*D) output of the qkv projection, rel_pos tables and dout. The dry
    run's values are never read by a kernel: zeros are cheaper than randn."""
    g, dtype = case.geom, DTYPES[case.dtype]
    make = torch.zeros if dry else torch.randn
    torch.manual_seed(0)
    qkv = make(B, g.N, 3 * H * g.D, dtype=dtype).requires_grad_(grad)
    q, k, v = qkv.view(B, g.N, 3, H, g.D).permute(2, 0, 3, 1, 4).unbind(0)
    rel = [None, None]
    if g.rel_pos:
        rel = [(make(2 * w - 1, g.D, dtype=dtype) * 0.1).requires_grad_(grad) for w in g.win]
    dout = make(B, H, g.N, g.D, dtype=dtype)
    return qkv, (q, k, v), rel, dout


def run_op(case: Case, backend, direction: str, B: int, H: int, dry: bool):
    """Runs the op once under the backend's counter; -> (launches, TorchCounter, input bytes)."""
    if case.op == "masked_attention":
        return _run_masked(case, backend, direction, B, H, dry)
    g = case.geom
    qkv, (q, k, v), (rh, rw), dout = _inputs(case, B, H, direction == "fwd+bwd", dry)
    counter = backend.counter(dry)
    with backend.context(dry), counter:
        counter.watch(qkv, dout, rh, rw)
        with TorchCounter(skip=counter.in_launch, on_alloc=counter.on_alloc, on_free=counter.on_free) as tcount:
            with torch.set_grad_enabled(direction == "fwd+bwd"):
                # As the model calls it: the packed entry (vitpose/models/vitpose.py, Attention.forward).
                out = vk.window_attention_qkvpacked(qkv.view(B, g.N, 3, H, g.D), grid=g.grid, window=g.window,
                                                    shift=g.shift, pool=g.pool, num_global=g.num_global,
                                                    rel_pos_h=rh, rel_pos_w=rw, backend=backend.name)
                if direction == "fwd+bwd":
                    out.backward(dout)
            del out
    inputs = qkv.numel() * qkv.element_size() + (dout.numel() * dout.element_size() if direction == "fwd+bwd" else 0)
    return counter.launches, tcount, inputs


def _run_masked(case: Case, backend, direction: str, B: int, H: int, dry: bool):
    g = case.geom
    leaves, (q, k, v), words, dout = masked.inputs(g, B, H, DTYPES[case.dtype], direction == "fwd+bwd", dry)
    counter = backend.counter(dry)
    with backend.context(dry), counter:
        counter.watch(*leaves, words, dout)
        with TorchCounter(skip=counter.in_launch, on_alloc=counter.on_alloc, on_free=counter.on_free) as tcount:
            with torch.set_grad_enabled(direction == "fwd+bwd"):
                out = vk.masked_attention(q, k, v, words, backend=backend.name)
                if direction == "fwd+bwd":
                    out.backward(dout)
            del out
    inputs = sum(t.numel() * t.element_size() for t in leaves)
    inputs += dout.numel() * dout.element_size() if direction == "fwd+bwd" else 0
    return counter.launches, tcount, inputs


def _work(case: Case, direction: str) -> tuple[int, int, int, dict]:
    """Useful FLOPs, floor bytes, bytes of the inputs, output and gradients, the geometry record."""
    g = case.geom
    if case.op == "masked_attention":
        return (masked.useful_flops(g, direction), masked.floor_bytes(g, direction), masked.tensor_bytes(g),
                dataclasses.asdict(g) | {"Lq": g.lq, "Lk": g.lk, "allowed_pairs_per_head": masked.allowed_pairs(g),
                                         "keys_seen_per_head": masked.keys_seen(g), "dtype": case.dtype})
    return (geometry.useful_flops(g, direction), geometry.floor_bytes(g, direction), 8 * geometry.tensor_bytes(g),
            dataclasses.asdict(g) | {"N": g.N, "num_pooled": g.num_pooled, "dtype": case.dtype})


def measure(case: Case, backend, direction: str, run_b: int, run_h: int, jobs: int, machine_code: bool) -> dict:
    g = case.geom
    t0 = time.time()
    kind = backend.plan_kind(case)
    with forced_plan(kind):  # the full size's launch plan for the reduced run too
        small, _, _ = run_op(case, backend, direction, run_b, run_h, dry=False)
    try:
        with forced_plan(kind):
            full, tcount, inputs = run_op(case, backend, direction, g.B, g.H, dry=True)
    except Exception as e:
        raise RuntimeError(
            f"cost model: the full-size dry run of {case.name} / {backend.name} / {direction} failed "
            f"({type(e).__name__}: {e}). It records the launches the host code makes on its GPU path without "
            "running them (Triton: TRITON_INTERPRET=0 at call time, CPU tensors); the launchers must still "
            "reach kernel[grid](...) there.") from e
    seconds = time.time() - t0
    pairs = scaled_launches(small, full)
    mc = backend.machine_code(full, jobs) if machine_code else [None] * len(full)

    kernels: dict[str, dict] = {}
    total = Counts()
    for (launch, factor), big, code in zip(pairs, full, mc):
        total.add(launch.counts, factor)
        k = kernels.setdefault(launch.kernel, dict(kernel=launch.kernel, launches=0, counts=Counts(),
                                                   config=_config(big), machine_code=code))
        k["launches"] += 1
        k["counts"].add(launch.counts, factor)
    torch_ops = tcount.totals()
    useful, floor, qkvo_grads, geom_record = _work(case, direction)
    executed = total.flops + torch_ops.flops
    nbytes = total.bytes + torch_ops.bytes
    hbm = total.hbm_bytes + torch_ops.bytes
    codes = [k["machine_code"] for k in kernels.values() if k["machine_code"] is not None]
    entry = dict(
        name=case.name, backend=backend.name, direction=direction, plan=kind,
        executed_flops=int(executed), useful_flops=int(useful), bytes=int(nbytes), floor_bytes=int(floor),
        spill_bytes=sum(c["spill_bytes"] for c in codes) if machine_code else None,
        serialized_wgmma=sum(c["serialized_wgmma"] for c in codes) if machine_code else None,
        hbm_bytes=int(hbm) if _has_hbm(total) else None,
        flops_ratio=executed / useful, bytes_ratio=nbytes / floor,
        hbm_ratio=hbm / floor if _has_hbm(total) else None,
        kernel_flops=int(total.flops), kernel_bytes=int(total.bytes), masked_bytes=int(total.masked_bytes),
        kernel_hbm_bytes=int(total.hbm_bytes), max_program_bytes=int(total.max_program_bytes),
        sector_bytes=int(total.sector_bytes) if total.sector_bytes else None,
        torch_ops=dict(flops=int(torch_ops.flops), bytes=int(torch_ops.bytes),
                       by_op={n: dataclasses.asdict(c) | {"bytes": c.bytes}
                              for n, c in tcount.ops.items() if c.bytes or c.flops}),
        kernels=[_kernel_row(k) for k in kernels.values()],
        geometry=geom_record,
        about=case.about, run=dict(B=run_b, H=run_h, seconds=round(seconds, 1)),
    )
    if direction == "fwd+bwd":
        entry["peak_extra_memory_ratio"] = (inputs + tcount.peak_bytes) / qkvo_grads
        entry["peak_memory"] = dict(inputs_bytes=inputs, peak_above_inputs_bytes=tcount.peak_bytes,
                                    qkv_out_and_grads_bytes=qkvo_grads)
    entry["l2_reuse_ratio"] = l2_reuse_ratio(entry["kernels"]) if machine_code else None
    entry["predictions"] = predict(entry)
    return entry


def _has_hbm(total: Counts) -> bool:
    """Whether the counter measured per-program traffic (every counter of this tree does; an
    emulator library built before it did reports none)."""
    return total.hbm_bytes > 0 or total.bytes == 0


def l2_reuse_ratio(kernels: list[dict]) -> float | None:
    """The HBM model's assumption, checked: per kernel, the mean LRU reuse distance of the loads
    the model calls L2 hits (distinct bytes one program touches between two accesses of a sector)
    times the programs resident at once on an H100/H200 (132 SMs x the cubin's CTAs/SM, at most
    the launch's programs), over the 50 MB L2; the largest over the kernels. With every resident
    program streaming at the same pace, <= 1 means a typical re-read is still in L2; above 1, part
    of what the model counts as hits would come from HBM (the raw bytes bound that part)."""
    p = PEAKS["H100"]
    worst = None
    for k in kernels:
        mc, reuse = k.get("machine_code") or {}, k.get("mean_reuse_bytes")
        if reuse is None:
            continue
        resident = min(k["programs"] / max(k["launches"], 1), p["sms"] * max(mc.get("ctas_per_sm") or 1, 1))
        worst = max(worst or 0.0, reuse * resident / (p["l2_mb"] * 2 ** 20))
    return worst


def _config(launch) -> dict:
    cfg = {k: v for k, v in launch.constexprs.items() if k.startswith("BLOCK")}
    cfg.update({k: v for k, v in launch.options.items() if k in ("num_warps", "num_stages", "block", "smem")})
    return cfg


def _kernel_row(k: dict) -> dict:
    c = k["counts"]
    row = dict(kernel=k["kernel"], launches=k["launches"], programs=int(c.programs), flops=int(c.flops),
               bytes=int(c.bytes), hbm_bytes=int(c.hbm_bytes), masked_bytes=int(c.masked_bytes),
               sector_bytes=int(c.sector_bytes) or None, max_program_bytes=int(c.max_program_bytes),
               mean_reuse_bytes=c.mean_reuse_bytes, max_reuse_bytes=int(c.max_reuse_bytes) or None,
               dots=int(c.dots), config=k["config"])
    if k["machine_code"] is not None:
        row["machine_code"] = k["machine_code"]
    return row


# ============================================================================ predictions
def predict(entry: dict) -> dict:
    """Roofline bounds at the PEAKS figures (predictions, not measurements): executed work with
    no cache reuse (every executed load from HBM), with the HBM model (re-reads inside a program
    hit L2), with perfect reuse in L2 within a launch (distinct 32-byte sectors), and the floor
    (useful FLOPs, floor bytes)."""
    out = {}
    for gpu, p in PEAKS.items():
        f, bw = p["bf16_dense_tflops"] * 1e12, p["hbm_tb_per_s"] * 1e12

        def t(flops, nbytes):
            return max(flops / f, nbytes / bw) * 1e6 if nbytes is not None else None

        floor = t(entry["useful_flops"], entry["floor_bytes"])
        exec_us = t(entry["executed_flops"], entry["bytes"])
        hbm_us = t(entry["executed_flops"], entry["hbm_bytes"])
        sectors = entry["sector_bytes"]
        l2 = t(entry["executed_flops"], sectors + entry["torch_ops"]["bytes"]) if sectors else None
        out[gpu] = dict(predicted_us=exec_us, predicted_us_hbm=hbm_us, predicted_us_l2_reuse=l2, floor_us=floor,
                        predicted_over_floor=exec_us / floor)
    return out


# ============================================================================ report
def table(entries: list[dict]) -> str:
    hdr = (f"{'case':28} {'backend':7} {'dir':8} {'exec GF':>9} {'useful':>9} {'x':>5} {'HBM MB':>9} "
           f"{'floor':>8} {'HBM x':>5} {'raw x':>5} {'L2 x':>5} {'spill':>5} {'serWG':>5} {'mem x':>6} "
           f"{'H100 us':>8} {'H200 us':>8}")
    lines = [hdr, "-" * len(hdr)]
    for e in entries:
        mem, hbm, fp = e.get("peak_extra_memory_ratio"), e.get("hbm_ratio"), e.get("l2_reuse_ratio")
        p = e["predictions"]
        lines.append(
            f"{e['name']:28} {e['backend']:7} {e['direction']:8} {e['executed_flops'] / 1e9:9.2f} "
            f"{e['useful_flops'] / 1e9:9.2f} {e['flops_ratio']:5.2f} {_mb(e.get('hbm_bytes')):>9} "
            f"{e['floor_bytes'] / 1e6:8.1f} {_x(hbm):>5} {e['bytes_ratio']:5.2f} {_x(fp):>5} "
            f"{_opt(e['spill_bytes']):>5} {_opt(e['serialized_wgmma']):>5} "
            f"{'' if mem is None else f'{mem:.3f}':>6} {_us(p['H100'].get('predicted_us_hbm')):>8} "
            f"{_us(p['H200'].get('predicted_us_hbm')):>8}")
    return "\n".join(lines)


def _mb(x):
    return "n/a" if x is None else f"{x / 1e6:.1f}"


def _x(x):
    return "n/a" if x is None else f"{x:.2f}"


def _kb(x):
    return "n/a" if x is None else f"{x / 1e3:.0f}"


def _us(x):
    return "n/a" if x is None else f"{x:.1f}"


def kernel_table(e: dict) -> str:
    lines = [f"  {e['name']} / {e['backend']} / {e['direction']}: per kernel (scaled to B={e['geometry']['B']}, "
             f"H={e['geometry']['H']})"]
    for k in e["kernels"]:
        mc = k.get("machine_code") or {}
        code = (f" regs {mc['regs']} spill {mc['spill_bytes']} smem {mc['smem_bytes']} CTAs/SM {mc['ctas_per_sm']} "
                f"HGMMA {mc['hgmma']} HMMA {mc['hmma']} waits {mc['wgmma_waits']}"
                f"{' C7515' if mc['c7515'] else ''}") if mc else ""
        lines.append(f"    {k['kernel']:24} x{k['launches']} progs {k['programs']:>8} {k['flops'] / 1e9:8.2f} GF "
                     f"{k['bytes'] / 1e6:9.1f} MB executed, {k['hbm_bytes'] / 1e6:9.1f} MB HBM model (masked "
                     f"{k['masked_bytes'] / 1e6:7.1f}; one program touches {k['max_program_bytes'] / 1e3:.0f} KB, "
                     f"re-reads {_kb(k['mean_reuse_bytes'])} KB apart on average) "
                     f"{k['config']}{code}")
    t = e["torch_ops"]
    if t["bytes"] or t["flops"]:
        by_bytes = sorted(t["by_op"].items(), key=lambda x: -x[1]["bytes"])
        ops = ", ".join(f"{n} {c['bytes'] / 1e6:.1f} MB" for n, c in by_bytes)
        lines.append(f"    {'torch ops':24} {t['flops'] / 1e9:30.2f} GF {t['bytes'] / 1e6:9.1f} MB: {ops}")
    return "\n".join(lines)


def table5_table(rows: list[dict]) -> str:
    lines = ["Table 5 rows (12 layers of ViTPose-B at 1/8 features, batch 64), fwd+bwd (us: HBM-model predictions):",
             f"  {'preset':26} {'backend':7} {'FLOPs x':>7} {'HBM x':>7} {'raw x':>7} {'H100 us':>9} {'H200 us':>9}"]
    for r in rows:
        if r["direction"] == "fwd+bwd":
            us = r["predicted_us_hbm"] or {}
            lines.append(f"  {r['preset']:26} {r['backend']:7} {r['flops_ratio']:7.2f} {_x(r['hbm_ratio']):>7} "
                         f"{r['bytes_ratio']:7.2f} {_us(us.get('H100')):>9} {_us(us.get('H200')):>9}")
    return "\n".join(lines)


def _opt(x):
    return "n/a" if x is None else str(x)


def table5_rows(entries: list[dict]) -> list[dict]:
    """Per Table 5 preset: its 12 layers summed (executed and useful), per backend and direction."""
    import vitpose

    by = {(e["name"], e["backend"], e["direction"]): e for e in entries}
    rows = []
    for preset, cfg in vitpose.TABLE5.items():
        names = [layer_case(cfg.layer_attention(i)) for i in range(cfg.depth)]
        for backend in BACKENDS:
            for d in DIRECTIONS:
                layers = [by.get((n, backend, d)) for n in names]
                if any(x is None for x in layers):
                    continue
                s = {f: sum(x[f] for x in layers) for f in ("executed_flops", "useful_flops", "bytes", "floor_bytes")}
                hbm = None if any(x.get("hbm_bytes") is None for x in layers) else sum(x["hbm_bytes"] for x in layers)
                rows.append(dict(preset=preset, backend=backend, direction=d, layers=len(layers), **s, hbm_bytes=hbm,
                                 flops_ratio=s["executed_flops"] / s["useful_flops"],
                                 bytes_ratio=s["bytes"] / s["floor_bytes"],
                                 hbm_ratio=None if hbm is None else hbm / s["floor_bytes"],
                                 predicted_us={gpu: sum(x["predictions"][gpu]["predicted_us"] for x in layers)
                                               for gpu in PEAKS},
                                 predicted_us_hbm=None if hbm is None else {
                                     gpu: sum(x["predictions"][gpu]["predicted_us_hbm"] for x in layers)
                                     for gpu in PEAKS}))
    return rows


def versions() -> dict:
    import triton

    return dict(torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0])


def commit() -> dict:
    """The commit the counted kernels come from, and whether the tree had changes on top of it
    (a result is only reproducible from a clean tree)."""
    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return dict(sha=git("rev-parse", "HEAD") or None, dirty=bool(git("status", "--porcelain", "--untracked-files=no")))


# ============================================================================ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help=f"case name (repeatable; default: all). Target: {TARGET}")
    ap.add_argument("--backend", choices=sorted(BACKENDS), action="append",
                    help="default: both (cuda where the emulator builds)")
    ap.add_argument("--direction", choices=DIRECTIONS, action="append", help="default: both")
    ap.add_argument("--json", required=True, type=Path, help="where to write the results")
    ap.add_argument("--run-batch", type=int, default=1, help="batch of the counted run (scaled to the case's)")
    ap.add_argument("--run-heads", type=int, default=1, help="heads of the counted run")
    ap.add_argument("--no-machine-code", action="store_true", help="skip the sm_90a compile (spills, wgmma: null)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel sm_90a compiles")
    ap.add_argument("--kernels", action="store_true", help="also print the per-kernel breakdown")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    if args.list:
        for c in all_cases():
            print(f"{c.name:28} {c.about}")
        return 0
    cases = find_cases(args.case)
    from cost import cuda_counter

    cuda_counter.enable_in_this_process()  # the counting build of the emulator, before its first use
    backends = [BACKENDS[b] for b in (args.backend or sorted(BACKENDS, reverse=True))]
    entries, skipped = [], []
    for backend in backends:
        why = backend.reason()
        if why:
            skipped.append(dict(backend=backend.name, reason=why))
            print(f"# {backend.name}: skipped: {why}", file=sys.stderr)
            continue
        for case in cases:
            for d in args.direction or DIRECTIONS:
                print(f"# {case.name} / {backend.name} / {d} ...", file=sys.stderr, flush=True)
                entries.append(measure(case, backend, d, args.run_batch, args.run_heads, args.jobs,
                                       not args.no_machine_code))
    result = dict(
        tool="benchmarks/cost_model.py",
        kind="cpu-measured executed work (Triton interpreter / CUDA emulator counters, sm_90a cubins); "
             "times are roofline predictions, not measurements",
        date=datetime.date.today().isoformat(), versions=versions(), commit=commit(), target=TARGET,
        peaks=PEAKS, cases=entries, skipped=skipped, table5_rows=table5_rows(entries))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(table(entries))
    print("# x = executed / useful FLOPs; HBM x = HBM-model bytes / floor (re-reads inside one program hit L2); "
          "raw x = every executed load and store / floor; L2 x = mean reuse distance of the model's L2 hits x "
          "resident programs / 50 MB L2 (the HBM model's assumption holds at <= 1); spill = spilled bytes; "
          "serWG = serialized wgmma; mem x = fwd+bwd peak / bytes of q,k,v,out + grads")
    print("# H100/H200 us: PREDICTIONS (roofline at " + "; ".join(
        f"{g} {p['bf16_dense_tflops']} bf16 dense TFLOP/s, {p['hbm_tb_per_s']} TB/s" for g, p in PEAKS.items())
          + "), executed FLOPs and HBM-model bytes (no-reuse figures in the JSON); no GPU has run this")
    if result["table5_rows"]:
        print(table5_table(result["table5_rows"]))
    if args.kernels:
        for e in entries:
            print(kernel_table(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
