"""Executed work of the window_attention kernels, measured on the CPU, against what the geometry
needs; plus a roofline prediction for H100 and H200.

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
from cost import cubin, geometry  # noqa: E402
from cost.launches import Counts, scaled_launches  # noqa: E402
from cost.torch_counter import TorchCounter  # noqa: E402

import vitpose_kernels as vk  # noqa: E402

TARGET = "t5-window8x8-shift-pool"
DIRECTIONS = ("fwd", "fwd+bwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Peak figures the predictions assume (NVIDIA data sheets, SXM parts): dense bf16 tensor-core
# FLOP/s (no sparsity) and HBM bandwidth.
PEAKS = {
    "H100": dict(bf16_dense_tflops=989.4, hbm_tb_per_s=3.35, note="H100 SXM5 80 GB, HBM3"),
    "H200": dict(bf16_dense_tflops=989.4, hbm_tb_per_s=4.8, note="H200 SXM 141 GB, HBM3e"),
}


# ============================================================================ cases
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    geom: geometry.Geometry
    about: str
    dtype: str = "bf16"


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
    g = case.geom
    qkv, (q, k, v), (rh, rw), dout = _inputs(case, B, H, direction == "fwd+bwd", dry)
    counter = backend.counter(dry)
    with backend.context(dry), counter:
        counter.watch(qkv, dout, rh, rw)
        with TorchCounter(skip=counter.in_launch, on_alloc=counter.on_alloc, on_free=counter.on_free) as tcount:
            with torch.set_grad_enabled(direction == "fwd+bwd"):
                out = vk.window_attention(q, k, v, grid=g.grid, window=g.window, shift=g.shift, pool=g.pool,
                                          num_global=g.num_global, rel_pos_h=rh, rel_pos_w=rw, backend=backend.name)
                if direction == "fwd+bwd":
                    out.backward(dout)
            del out
    inputs = qkv.numel() * qkv.element_size() + (dout.numel() * dout.element_size() if direction == "fwd+bwd" else 0)
    return counter.launches, tcount, inputs


def measure(case: Case, backend, direction: str, run_b: int, run_h: int, jobs: int, machine_code: bool) -> dict:
    g = case.geom
    t0 = time.time()
    small, _, _ = run_op(case, backend, direction, run_b, run_h, dry=False)
    try:
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
    useful, floor = geometry.useful_flops(g, direction), geometry.floor_bytes(g, direction)
    executed = total.flops + torch_ops.flops
    nbytes = total.bytes + torch_ops.bytes
    codes = [k["machine_code"] for k in kernels.values() if k["machine_code"] is not None]
    entry = dict(
        name=case.name, backend=backend.name, direction=direction,
        executed_flops=int(executed), useful_flops=int(useful), bytes=int(nbytes), floor_bytes=int(floor),
        spill_bytes=sum(c["spill_bytes"] for c in codes) if machine_code else None,
        serialized_wgmma=sum(c["serialized_wgmma"] for c in codes) if machine_code else None,
        flops_ratio=executed / useful, bytes_ratio=nbytes / floor,
        kernel_flops=int(total.flops), kernel_bytes=int(total.bytes), masked_bytes=int(total.masked_bytes),
        sector_bytes=int(total.sector_bytes) if total.sector_bytes else None,
        torch_ops=dict(flops=int(torch_ops.flops), bytes=int(torch_ops.bytes),
                       by_op={n: dataclasses.asdict(c) | {"bytes": c.bytes}
                              for n, c in tcount.ops.items() if c.bytes or c.flops}),
        kernels=[_kernel_row(k) for k in kernels.values()],
        geometry=dataclasses.asdict(g) | {"N": g.N, "num_pooled": g.num_pooled, "dtype": case.dtype},
        about=case.about, run=dict(B=run_b, H=run_h, seconds=round(seconds, 1)),
    )
    if direction == "fwd+bwd":
        qkvo_grads = 8 * geometry.tensor_bytes(g)
        entry["peak_extra_memory_ratio"] = (inputs + tcount.peak_bytes) / qkvo_grads
        entry["peak_memory"] = dict(inputs_bytes=inputs, peak_above_inputs_bytes=tcount.peak_bytes,
                                    qkv_out_and_grads_bytes=qkvo_grads)
    entry["predictions"] = predict(entry)
    return entry


def _config(launch) -> dict:
    cfg = {k: v for k, v in launch.constexprs.items() if k.startswith("BLOCK")}
    cfg.update({k: v for k, v in launch.options.items() if k in ("num_warps", "num_stages", "block", "smem")})
    return cfg


def _kernel_row(k: dict) -> dict:
    c = k["counts"]
    row = dict(kernel=k["kernel"], launches=k["launches"], programs=int(c.programs), flops=int(c.flops),
               bytes=int(c.bytes), masked_bytes=int(c.masked_bytes), sector_bytes=int(c.sector_bytes) or None,
               dots=int(c.dots), config=k["config"])
    if k["machine_code"] is not None:
        row["machine_code"] = k["machine_code"]
    return row


# ============================================================================ predictions
def predict(entry: dict) -> dict:
    """Roofline bounds at the PEAKS figures (predictions, not measurements): executed work with
    no cache reuse (every executed load from HBM), with perfect reuse in L2 within a launch
    (distinct 32-byte sectors), and the floor (useful FLOPs, floor bytes)."""
    out = {}
    for gpu, p in PEAKS.items():
        f, bw = p["bf16_dense_tflops"] * 1e12, p["hbm_tb_per_s"] * 1e12

        def t(flops, nbytes):
            return max(flops / f, nbytes / bw) * 1e6 if nbytes is not None else None

        floor = t(entry["useful_flops"], entry["floor_bytes"])
        exec_us = t(entry["executed_flops"], entry["bytes"])
        sectors = entry["sector_bytes"]
        l2 = t(entry["executed_flops"], sectors + entry["torch_ops"]["bytes"]) if sectors else None
        out[gpu] = dict(predicted_us=exec_us, predicted_us_l2_reuse=l2, floor_us=floor,
                        predicted_over_floor=exec_us / floor)
    return out


# ============================================================================ report
def table(entries: list[dict]) -> str:
    hdr = (f"{'case':28} {'backend':7} {'dir':8} {'exec GF':>9} {'useful':>9} {'x':>5} {'MB':>9} {'floor':>8} "
           f"{'x':>5} {'spill':>5} {'serWG':>5} {'mem x':>6} {'H100 us':>8} {'H200 us':>8}")
    lines = [hdr, "-" * len(hdr)]
    for e in entries:
        mem = e.get("peak_extra_memory_ratio")
        p = e["predictions"]
        lines.append(
            f"{e['name']:28} {e['backend']:7} {e['direction']:8} {e['executed_flops'] / 1e9:9.2f} "
            f"{e['useful_flops'] / 1e9:9.2f} {e['flops_ratio']:5.2f} {e['bytes'] / 1e6:9.1f} "
            f"{e['floor_bytes'] / 1e6:8.1f} "
            f"{e['bytes_ratio']:5.2f} {_opt(e['spill_bytes']):>5} {_opt(e['serialized_wgmma']):>5} "
            f"{'' if mem is None else f'{mem:.3f}':>6} {p['H100']['predicted_us']:8.1f} "
            f"{p['H200']['predicted_us']:8.1f}")
    return "\n".join(lines)


def kernel_table(e: dict) -> str:
    lines = [f"  {e['name']} / {e['backend']} / {e['direction']}: per kernel (scaled to B={e['geometry']['B']}, "
             f"H={e['geometry']['H']})"]
    for k in e["kernels"]:
        mc = k.get("machine_code") or {}
        code = (f" regs {mc['regs']} spill {mc['spill_bytes']} smem {mc['smem_bytes']} CTAs/SM {mc['ctas_per_sm']} "
                f"HGMMA {mc['hgmma']} HMMA {mc['hmma']} waits {mc['wgmma_waits']}"
                f"{' C7515' if mc['c7515'] else ''}") if mc else ""
        lines.append(f"    {k['kernel']:24} x{k['launches']} progs {k['programs']:>8} {k['flops'] / 1e9:8.2f} GF "
                     f"{k['bytes'] / 1e6:9.1f} MB (masked {k['masked_bytes'] / 1e6:7.1f}) {k['config']}{code}")
    t = e["torch_ops"]
    if t["bytes"] or t["flops"]:
        by_bytes = sorted(t["by_op"].items(), key=lambda x: -x[1]["bytes"])
        ops = ", ".join(f"{n} {c['bytes'] / 1e6:.1f} MB" for n, c in by_bytes)
        lines.append(f"    {'torch ops':24} {t['flops'] / 1e9:30.2f} GF {t['bytes'] / 1e6:9.1f} MB: {ops}")
    return "\n".join(lines)


def table5_table(rows: list[dict]) -> str:
    lines = ["Table 5 rows (12 layers of ViTPose-B at 1/8 features, batch 64), fwd+bwd:",
             f"  {'preset':26} {'backend':7} {'FLOPs x':>7} {'bytes x':>7} {'H100 us':>9} {'H200 us':>9}"]
    for r in rows:
        if r["direction"] == "fwd+bwd":
            lines.append(f"  {r['preset']:26} {r['backend']:7} {r['flops_ratio']:7.2f} {r['bytes_ratio']:7.2f} "
                         f"{r['predicted_us']['H100']:9.0f} {r['predicted_us']['H200']:9.0f}")
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
                rows.append(dict(preset=preset, backend=backend, direction=d, layers=len(layers), **s,
                                 flops_ratio=s["executed_flops"] / s["useful_flops"],
                                 bytes_ratio=s["bytes"] / s["floor_bytes"],
                                 predicted_us={gpu: sum(x["predictions"][gpu]["predicted_us"] for x in layers)
                                               for gpu in PEAKS}))
    return rows


def versions() -> dict:
    import triton

    return dict(torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0])


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
        date=datetime.date.today().isoformat(), versions=versions(), target=TARGET,
        peaks=PEAKS, cases=entries, skipped=skipped, table5_rows=table5_rows(entries))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(table(entries))
    print("# x = executed / useful FLOPs, bytes / floor; spill = spilled bytes; serWG = serialized wgmma; "
          "mem x = fwd+bwd peak / bytes of q,k,v,out + grads")
    print("# H100/H200 us: PREDICTIONS (roofline at " + "; ".join(
        f"{g} {p['bf16_dense_tflops']} bf16 dense TFLOP/s, {p['hbm_tb_per_s']} TB/s" for g, p in PEAKS.items())
          + "), executed FLOPs and bytes with no cache reuse; no GPU has run this")
    if result["table5_rows"]:
        print(table5_table(result["table5_rows"]))
    if args.kernels:
        for e in entries:
            print(kernel_table(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
