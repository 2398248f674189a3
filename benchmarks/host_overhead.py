"""CPU time of one window_attention call outside its kernels (issue 13 item 5: forward <= 40 us,
backward <= 80 us), measured on the CPU with the kernel launches stubbed.

    python benchmarks/host_overhead.py                 # the target case, packed qkv as the model calls it
    python benchmarks/host_overhead.py --iters 200 --json out.json

Everything a call does on the host is timed: the front door's validation and dispatch, the custom
op and autograd machinery, the launch plan (cached per shape), allocations and argument packing;
only the Triton launch itself (triton's own binder and the driver call) is replaced by a no-op
(vitpose_kernels.triton_backend.window_attention.host._launch), so the figures are the same with
or without a GPU. Runs with TRITON_INTERPRET=1 so that CPU tensors are accepted; the interpreter
never runs a kernel here. Each phase: --repeats timings of --iters calls each; the minimum is the
figure (the closest a shared, loaded machine gets to an idle core), the median beside it, with
the load average. Both launch plans: "head" (what the target batch, 64 x 12 heads, gets; timed
at batch 2 with the plan forced, so that the CPU allocations stay small) and "split" (batch-1
inference).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import vitpose_kernels as vk  # noqa: E402
from vitpose_kernels._attention_ops import forced_plan  # noqa: E402
from vitpose_kernels.triton_backend.window_attention import host  # noqa: E402

TARGETS_US = {"forward": 40.0, "backward": 80.0}
IDLE_CALIBRATION_US = 2.5  # the calibration loop below on an idle x86-64 core (Python 3.11), for scale


def _case(B, H, grid, window, shift, pool, num_global, D):
    N = num_global + grid[0] * grid[1]
    qkv = torch.zeros(B, N, 3, H, D, dtype=torch.bfloat16, requires_grad=True)
    kw = dict(grid=grid, window=window, shift=shift, pool=pool, num_global=num_global, backend="triton")
    return qkv, kw, torch.zeros(B, H, N, D, dtype=torch.bfloat16)


def measure(iters: int = 100, repeats: int = 5, B: int = 2, H: int = 12, grid=(32, 24), window=(8, 8),
            shift=(4, 4), pool=True, num_global=0, D=64, plan=None) -> dict:
    """Microseconds per call (minimum over the repeats; medians under "median"): forward (no
    grad), forward with autograd recording, and the backward (torch.autograd.grad of a recorded
    forward's output). plan: the launch plan forced (None: the host's choice at this B, H)."""
    launches = []
    real = host._launch
    host._launch = lambda kernel, grid, *a, **k: launches.append(kernel)
    try:
        with forced_plan(plan):
            return _measure(launches, iters, repeats, B, H, grid, window, shift, pool, num_global, D)
    finally:
        host._launch = real


def _measure(launches, iters, repeats, B, H, grid, window, shift, pool, num_global, D) -> dict:
    qkv, kw, dout = _case(B, H, grid, window, shift, pool, num_global, D)
    for _ in range(5):  # warm: plan cached, dispatch probed, custom op traced once
        torch.autograd.grad(vk.window_attention_qkvpacked(qkv, **kw), qkv, dout)
    n_fwd = len(launches)

    def timed(fn):
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            out.append((time.perf_counter() - t0) / iters * 1e6)
        return out

    with torch.no_grad():
        fwd = timed(lambda: vk.window_attention_qkvpacked(qkv, **kw))
    fwd_grad = timed(lambda: vk.window_attention_qkvpacked(qkv, **kw))
    outs = []

    def record():
        outs.append(vk.window_attention_qkvpacked(qkv, **kw))

    def backward():
        torch.autograd.grad(outs.pop(), qkv, dout)  # no accumulation into qkv.grad (a CPU add)

    bwd = []
    for _ in range(repeats):
        for _ in range(iters):
            record()
        t0 = time.perf_counter()
        for _ in range(iters):
            backward()
        bwd.append((time.perf_counter() - t0) / iters * 1e6)
    launches_per_step = n_fwd // 5
    kind = host.plan_of(B, H, num_global + grid[0] * grid[1], D, torch.bfloat16,
                        [*grid, *(window or grid), *shift, num_global], pool).kind
    calib = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            sum(i for i in range(100))
        calib.append((time.perf_counter() - t0) / iters * 1e6)
    return dict(case=dict(B=B, H=H, grid=list(grid), window=list(window) if window else None, shift=list(shift),
                          pool=pool, num_global=num_global, D=D, dtype="bfloat16", packed=True),
                plan=kind, forward_us=min(fwd), forward_recording_us=min(fwd_grad), backward_us=min(bwd),
                median=dict(forward_us=statistics.median(fwd), forward_recording_us=statistics.median(fwd_grad),
                            backward_us=statistics.median(bwd)),
                launches_per_step=launches_per_step, targets_us=TARGETS_US,
                calibration_us=min(calib), load_average=list(os.getloadavg()), cpus=os.cpu_count(),
                iters=iters, repeats=repeats, torch=torch.__version__,
                note="CPU time outside the kernels (launches stubbed); measured, minimum over the repeats")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = [measure(args.iters, args.repeats, plan=plan) for plan in ("head", "split")]
    for r in results:
        print(f"window_attention host time per call, launches stubbed, target case packed bf16, {r['plan']} plan "
              f"({r['launches_per_step']} launches per forward+backward); minimum of {r['repeats']} x {r['iters']} "
              "calls (median):")
        for phase, key in (("forward", "forward_us"), ("forward (recording autograd)", "forward_recording_us"),
                           ("backward", "backward_us")):
            target = TARGETS_US.get(phase)
            verdict = "" if target is None else f"  target <= {target:.0f} us: {'PASS' if r[key] <= target else 'MISS'}"
            print(f"  {phase:30} {r[key]:8.1f} us ({r['median'][key]:6.1f}){verdict}")
    r = results[-1]
    print(f"  (this machine now: load average {', '.join(f'{x:.1f}' for x in r['load_average'])} on {r['cpus']} "
          f"CPUs; a 100-step Python generator sum takes {r['calibration_us']:.1f} us, about "
          f"{IDLE_CALIBRATION_US:.0f} us on an idle modern core)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
