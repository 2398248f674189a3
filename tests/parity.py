"""The shared parity harness: every backend of every op is checked against the reference here.

A case draws fresh random inputs, runs the backend (outputs NaN-poisoned, see _alloc.poisoned)
and the reference in float64 on the same inputs, and compares forward and every gradient.
Failures name the worst indices.

How close is close enough (tests/README.md has the numbers):
  - float32: |a - e| <= tol * max(max|e|, 1) per tensor, tol declared once per dtype (TOL), and a
    relative RMS error <= TOL[...]["rms"].
  - float16 / bfloat16: against a *yardstick*, the same computation done with the kernels'
    precision model (tests/yardstick.py for window_attention and masked_attention: low-dtype
    operands, float32 logits, softmax and accumulation; PyTorch's own low-precision ops for
    simple_decoder): max |a - e| <= 2 * max |yardstick - e| (the FlashAttention criterion), for
    attention per bucket of rows ranked by their noise scale (separately for window_attention's
    global and grid tokens), in units of each row's noise scale (see element_bounds); and per
    tensor RMS(a - e) <= 2 * RMS(yardstick - e).
Set PARITY_VERBOSE=1 (and pytest -s) to print, per tensor, the effective bound / RMS ratio;
`python tests/parity.py --table ci|gpu` prints it for the sweeps without running any kernel.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
from dataclasses import dataclass, replace

import torch

import vitpose_kernels as vk
from vitpose_kernels import _alloc, dispatch
from vitpose_kernels._attention_ops import forced_plan

import yardstick

# Without a yardstick (float32, and ops checked against exact expectations): max-normalised error
# allowed per dtype, forward and backward, and the relative RMS error (declared once, STYLE.md #4).
TOL = {
    torch.float32: {"fwd": 1e-4, "bwd": 1e-4, "rms": 1e-5},
    torch.float16: {"fwd": 2e-2, "bwd": 2e-2, "rms": 2e-3},
    torch.bfloat16: {"fwd": 2e-2, "bwd": 3e-2, "rms": 1.6e-2},
}
# Unit roundoff: half the spacing of floats in [1, 2).
UNIT = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
# A low-precision kernel may be off from the float64 truth by this many times what the yardstick
# is off (FlashAttention's criterion): element-wise per bucket of like rows, and in RMS per tensor.
YARDSTICK_FACTOR = 2.0
# Differences below this are rounding noise of O(1) data in float32 (e.g. a gradient whose true
# value is 0), whatever the dtype.
ABS_FLOOR = 1e-6
VERBOSE = os.environ.get("PARITY_VERBOSE", "0") not in ("", "0")

COCO_FLIP_INDICES = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def skip_reason(op: str, backend: str) -> str | None:
    """Why a backend cannot run on this machine at all (None: it can)."""
    why = dispatch.backends(op)[backend]  # the machine's reasons, or "no <backend> implementation"
    return "; ".join(why) if why else None


@dataclass(frozen=True)
class Comparison:
    """One tensor's check: the errors, the bounds they were held to, both relative to RMS(e)."""

    name: str
    max_err: float        # max |a - e|
    err_vs_bound: float   # worst row's max |a - e| / its bound (<= 1 passes)
    bound_ratio: float    # RMS over elements of the element bound, / RMS(e): the effective bound
    rms_err: float        # RMS(a - e) / RMS(e)
    rms_bound: float      # its bound, / RMS(e)

    def __str__(self):
        return (f"{self.name}: bound/RMS {self.bound_ratio:.3g} (max err {self.err_vs_bound:.2f} of bound), "
                f"rel RMS err {self.rms_err:.2e} <= {self.rms_bound:.2e}")


# Rows of one group are split into buckets of like rows for the element bound (see element_bounds),
# each of >= BUCKET_ELEMENTS elements (at most 64 buckets): its max over that many elements is a
# stable measure of the yardstick's error.
BUCKET_ELEMENTS = 16384


def element_bounds(expected: torch.Tensor, tol: float | None, yardstick: torch.Tensor | None = None,
                   groups: torch.Tensor | None = None, row_noise: torch.Tensor | None = None) -> torch.Tensor:
    """The allowed |a - e| per element, as float64 on the CPU.

    Without a yardstick: tol * max(max|e|, 1). With one: FlashAttention's 2 * max |y - e| (and at
    least one ulp of max |e|) over the whole tensor; or, given row_noise (one per index of the
    leading dims: the yardstick's estimate of how large the rounding errors of that row's terms
    are), per row: 2 x the worst |y - e| per unit of noise scale among like rows, times the row's
    own noise scale (and at least one ulp of its own max |e|). Like rows: the same group (groups,
    an id per index of dim -2, e.g. global vs grid tokens; default one group) and the same bucket
    of rows ranked by noise scale. Rows differ by 10-100x in how noisy they are (a global token's
    or a heavily attended key's gradient, a small gradient summed from large terms that cancel),
    and one bound for all, or rows ranked by their size, would be loose for most of them."""
    e = expected.detach().double().cpu()
    if not e.numel():
        return e.clone()
    if yardstick is None:
        return torch.full_like(e, tol * max(float(e.abs().max()), 1.0))
    dy = (yardstick.detach().double().cpu() - e).abs()
    unit = UNIT[yardstick.dtype]
    if row_noise is None or e.dim() < 2:
        return torch.full_like(e, max(YARDSTICK_FACTOR * float(dy.max()), 2 * unit * float(e.abs().max())) + ABS_FLOOR)
    rows_e, rows_dy = e.reshape(-1, e.shape[-1]), dy.reshape(-1, e.shape[-1])
    groups = torch.zeros(e.shape[-2], dtype=torch.long) if groups is None else groups.cpu()
    row_group = groups.repeat(rows_e.shape[0] // e.shape[-2])
    noise = row_noise.detach().double().cpu().reshape(-1)
    worst = rows_dy.amax(-1)
    bound = torch.empty(rows_e.shape[0], dtype=torch.float64)
    for g in row_group.unique():
        members = (row_group == g).nonzero()[:, 0]
        ranked = members[noise[members].argsort()]
        n = min(64, len(ranked) * e.shape[-1] // BUCKET_ELEMENTS, len(ranked) // 8)
        for bucket in torch.tensor_split(ranked, max(1, n)):
            some = bucket[noise[bucket] > 0]  # 0 only where the yardstick sums nothing: the floor holds it
            per_noise = float((worst[some] / noise[some]).max()) if len(some) else 0.0
            bound[bucket] = YARDSTICK_FACTOR * per_noise * noise[bucket]
    bound = torch.maximum(bound, 2 * unit * rows_e.abs().amax(-1)) + ABS_FLOOR
    return bound[:, None].expand(rows_e.shape).reshape(e.shape).clone()


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt()) if t.numel() else 0.0


def compare(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float | None = None,
            yardstick: torch.Tensor | None = None, *, groups: torch.Tensor | None = None,
            row_noise: torch.Tensor | None = None, rms_tol: float | None = None) -> Comparison:
    """Check actual against expected (float64 truth); raise AssertionError naming the worst
    elements, else return the Comparison. Without a yardstick: |a - e| <= tol * max(max|e|, 1)
    and, if rms_tol is given, RMS(a - e) <= rms_tol * RMS(e). With one (the computation at the
    kernel's precision): |a - e| <= element_bounds(...) (2 max |y - e|, per group of rows if
    given), and RMS(a - e) <= 2 RMS(y - e)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    nan = torch.isnan(a) & ~torch.isnan(e)
    if nan.any():
        idx = nan.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(nan.sum())} NaN element(s) (unwritten?) e.g. at {idx}")
    bound = element_bounds(e, tol, yardstick, groups, row_noise)
    err = (a - e).abs()
    excess = torch.where(err <= bound, 0.0, err / bound)  # NaN where both are NaN: equal
    rms_e = _rms(e)
    scale = rms_e if rms_e > 0 else 1.0
    if yardstick is not None:
        rms_bound = YARDSTICK_FACTOR * _rms(yardstick.detach().double().cpu() - e) + ABS_FLOOR
    else:
        rms_bound = (rms_tol * max(rms_e, 1.0) if rms_tol is not None else math.inf) + ABS_FLOOR
    c = Comparison(name, float(err.nan_to_num(0.0).max()) if err.numel() else 0.0,
                   float((err / bound).nan_to_num(0.0).max()) if err.numel() else 0.0,
                   _rms(bound) / scale, _rms((a - e).nan_to_num(0.0)) / scale, rms_bound / scale)
    if VERBOSE:
        print(f"  {c}")
    if excess.numel() and float(excess.nan_to_num(0.0).max()) > 0:
        worst = torch.topk(excess.nan_to_num(0.0).flatten(), min(5, excess.numel())).indices
        where = [tuple(int(i) for i in torch.unravel_index(w, err.shape)) for w in worst]
        raise AssertionError(
            f"{name}: max error {float(err.max()):.3g}, {c.err_vs_bound:.2f} times its bound "
            f"({'yardstick' if yardstick is not None else f'tol {tol}'}); worst at {where}: "
            f"got {[float(a[w]) for w in where]}, expected {[float(e[w]) for w in where]}, "
            f"bound {[float(bound[w]) for w in where]}")
    if c.rms_err > c.rms_bound:
        raise AssertionError(f"{name}: relative RMS error {c.rms_err:.3g} > {c.rms_bound:.3g} "
                             f"({'2 x the yardstick' if yardstick is not None else f'rms tol {rms_tol}'})")
    return c


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float,
                 yardstick: torch.Tensor | None = None) -> None:
    """max |a - e| <= tol * max(max|e|, 1), NaN-strict; with a yardstick (the computation at the
    kernel's precision) the bound is the yardstick's instead (see compare)."""
    compare(name, actual, expected, tol, yardstick)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def serving(op: str, backend: str, implementation=None):
    """Inside: `backend` runs `implementation` (same arguments as its registered function) if
    given; the reference that gives the truth is untouched (tests/test_mutations.py)."""
    if implementation is None:
        return contextlib.nullcontext()
    return dispatch.substituted(op, backend, implementation)


# ----------------------------------------------------------------------------- window_attention
@dataclass(frozen=True)
class AttentionCase:
    grid: tuple = (7, 9)
    window: tuple | None = (4, 3)
    shift: tuple = (0, 0)
    pool: bool = False
    num_global: int = 0
    rel_pos: bool = False
    B: int = 1
    H: int = 2
    D: int = 32
    dtype: torch.dtype = torch.float32
    packed: bool = True  # q, k, v as strided views of one (B, N, 3, H, D) tensor
    seed: int = 0
    # A launch plan forced on the backend (vitpose_kernels._attention_ops.PLANS; None: its own
    # choice, which at these batch sizes is the split plan for the Triton backend).
    plan: str | None = None

    def __str__(self):
        w = "full" if self.window is None else f"w{self.window[0]}x{self.window[1]}"
        return (f"g{self.grid[0]}x{self.grid[1]}-{w}-s{self.shift[0]}{self.shift[1]}"
                f"{'-pool' if self.pool else ''}-G{self.num_global}{'-rel' if self.rel_pos else ''}"
                f"-B{self.B}H{self.H}D{self.D}-{str(self.dtype)[6:]}{'-packed' if self.packed else ''}"
                f"{f'-{self.plan}plan' if self.plan else ''}")


def head_plan_serves(case: AttentionCase) -> bool:
    """Cases the per-head plan can serve (pooled keys, cells of <= 64 tokens, <= 64 extra keys;
    D <= 64 keeps it clear of the head-dim limit): the sweeps alternate the plans over them."""
    wh, ww = case.window or case.grid
    pooled = -(-case.grid[0] // wh) * -(-case.grid[1] // ww)
    return case.pool and wh * ww <= 64 and pooled + case.num_global <= 64 and case.D <= 64


def alternate_plans(cases: list[AttentionCase]) -> list[AttentionCase]:
    """Every other case the per-head plan can serve is forced to it, the rest keep the backend's
    choice (the split plan at these sizes): both plans under the same sweep at no extra cost."""
    out, n = [], 0
    for c in cases:
        if head_plan_serves(c):
            c = replace(c, plan="head") if n % 2 == 0 else c
            n += 1
        out.append(c)
    return out


def attention_inputs(case: AttentionCase, dev):
    g = torch.Generator().manual_seed(case.seed)
    hg, wg = case.grid
    N = case.num_global + hg * wg
    if case.packed:
        qkv = torch.randn(case.B, N, 3, case.H, case.D, generator=g).to(dev, case.dtype)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (torch.randn(case.B, case.H, N, case.D, generator=g).to(dev, case.dtype) for _ in range(3))
    wh, ww = case.window or case.grid
    rel = [torch.randn(2 * s - 1, case.D, generator=g).mul(0.3).to(dev, case.dtype) if case.rel_pos else None
           for s in (wh, ww)]
    grad = torch.randn(case.B, case.H, N, case.D, generator=g).to(dev, case.dtype)
    return q, k, v, rel[0], rel[1], grad


ATTENTION_TENSORS = ("out", "dq", "dk", "dv", "drel_pos_h", "drel_pos_w")


def attention_kwargs(case: AttentionCase) -> dict:
    return dict(grid=case.grid, window=case.window, shift=case.shift, pool=case.pool,
                num_global=case.num_global)


def _run_attention(backend, case, inputs, grad, poisoned=False, implementation=None):
    """[out, dq, dk, dv, drel_pos_h?, drel_pos_w?] of one backend (absent rel-pos: no entry)."""
    leaves = [_leaf(t) if t is not None else None for t in inputs]
    with _alloc.poisoned() if poisoned else contextlib.nullcontext(), \
            serving("window_attention", backend, implementation), forced_plan(case.plan):
        out = vk.window_attention(*leaves[:3], rel_pos_h=leaves[3], rel_pos_w=leaves[4], backend=backend,
                                  **attention_kwargs(case))
        if grad is not None:
            out.backward(grad)
    return [out] + ([t.grad for t in leaves if t is not None] if grad is not None else [])


def attention_truth(case: AttentionCase, inputs, grad, *, per_head: bool = False) -> list[torch.Tensor]:
    """The float64 reference's outputs and gradients; per_head: one (batch, head) at a time (same
    values, bounded memory for the GPU sweep's shapes on a CPU)."""
    wide = [t.double() if t is not None else None for t in inputs]
    if not per_head:
        return [t.detach() for t in _run_attention("reference", case, wide, grad.double())]
    q = wide[0]
    B, H = q.shape[:2]
    parts = [[_run_attention("reference", case, [t[b:b + 1, h:h + 1] for t in wide[:3]] + wide[3:],
                             grad[b:b + 1, h:h + 1].double()) for h in range(H)] for b in range(B)]
    out = [torch.cat([torch.cat([p[i] for p in row], 1) for row in parts], 0).detach() for i in range(4)]
    n_rel = len(parts[0][0]) - 4
    return out + [sum(p[4 + i] for row in parts for p in row) for i in range(n_rel)]


def attention_yardstick(case: AttentionCase, inputs, grad):
    """For a low-precision case (None for float32): the yardstick's [out, dq, ...] and the row
    noise scales of out, dq, dk, dv (tests/yardstick.py)."""
    if case.dtype == torch.float32:
        return None
    q, k, v, rh, rw = inputs
    return yardstick.window_attention(q, k, v, rh, rw, grad, **attention_kwargs(case), row_noise=True)


def token_groups(case: AttentionCase) -> torch.Tensor:
    """Group id per token row: 0 for the global tokens, 1 for the grid (see element_bounds)."""
    return (torch.arange(case.num_global + case.grid[0] * case.grid[1]) >= case.num_global).long()


def check_window_attention(backend: str, case: AttentionCase, dev=None, *, grads: bool = True,
                           implementation=None) -> list[Comparison]:
    """implementation: run it as `backend` (see serving)."""
    dev = dev or device()
    q, k, v, rh, rw, grad = attention_inputs(case, dev)
    inputs = (q, k, v, rh, rw)
    got = _run_attention(backend, case, inputs, grad if grads else None, poisoned=True,
                         implementation=implementation)
    assert got[0].dtype == case.dtype and got[0].shape == q.shape
    want = attention_truth(case, inputs, grad)
    ys = attention_yardstick(case, inputs, grad)
    names = [n for n, t in zip(ATTENTION_TENSORS, (q, q, q, q, rh, rw)) if t is not None]
    tol = TOL[case.dtype]
    if VERBOSE:
        print(f"{backend} {case}")
    results = []
    for i, (name, a) in enumerate(zip(names, got)):
        assert a is not None, f"{case}: no gradient for {name}"
        results.append(compare(f"{case} {name}", a, want[i], tol["fwd" if i == 0 else "bwd"],
                               None if ys is None else ys[0][i], groups=token_groups(case) if i < 4 else None,
                               row_noise=ys[1][i] if ys is not None and i < 4 else None, rms_tol=tol["rms"]))
    return results


def attention_sweep(scale: str = "ci") -> list[AttentionCase]:
    """Covering sweep. 'ci': small shapes for the CPU interpreter. 'gpu': the issue's full sweep."""
    cases = []
    if scale == "ci":
        for grid, window in [((7, 9), None), ((7, 9), (4, 3)), ((6, 8), (3, 4)), ((5, 4), (2, 2)),
                             ((4, 6), (4, 6))]:
            wh, ww = window or grid
            for shift, pool in [((0, 0), False), ((wh // 2, ww // 2), True)]:
                if window is None and shift != (0, 0):
                    continue
                for G, rel in [(0, False), (1, True), (3, False)]:
                    cases.append(AttentionCase(grid=grid, window=window, shift=shift, pool=pool,
                                               num_global=G, rel_pos=rel, D=16))
        cases += [AttentionCase(D=D, dtype=dt, rel_pos=True, pool=True, shift=(2, 1), num_global=1)
                  for D, dt in [(80, torch.float32), (32, torch.float16), (32, torch.bfloat16)]]
        cases.append(AttentionCase(packed=False, B=2, H=3, pool=True))
        return alternate_plans(cases)
    grids = [(16, 12), (32, 24), (7, 9), (64, 48)]
    windows = [None, (8, 8), (16, 12), (7, 7), (4, 3)]
    dims = [32, 64, 80, 96, 128]
    for i, (grid, window) in enumerate(itertools.product(grids, windows)):
        wh, ww = window or grid
        for j, (half, pool) in enumerate(itertools.product((False, True), (False, True))):
            if window is None and half:
                continue
            n = i * 4 + j
            cases.append(AttentionCase(
                grid=grid, window=window, shift=(wh // 2, ww // 2) if half else (0, 0), pool=pool,
                num_global=(0, 1, 17)[n % 3], rel_pos=bool(n % 2), B=2, H=(1, 4, 12, 16)[n % 4],
                D=dims[n % 5], dtype=(torch.bfloat16, torch.float16)[n % 2]))
    for D, dt in itertools.product(dims, (torch.float32, torch.float16, torch.bfloat16)):
        cases.append(AttentionCase(grid=(16, 12), window=(8, 8), shift=(4, 4), pool=True, num_global=1,
                                   rel_pos=True, B=2, H=3, D=D, dtype=dt))
    return alternate_plans(cases)


def random_attention_cases(n: int, seed: int = 0, small: bool = True) -> list[AttentionCase]:
    """Seeded random configs: any grid, window, shift, pool, globals, rel pos, head dim, dtype."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hg, wg = (rng.randint(1, 9), rng.randint(1, 9)) if small else (rng.randint(1, 48), rng.randint(1, 48))
        window = None if rng.random() < 0.2 else (rng.randint(1, hg + 2), rng.randint(1, wg + 2))
        wh, ww = window or (hg, wg)
        shift = (rng.randrange(wh), rng.randrange(ww)) if window and rng.random() < 0.5 else (0, 0)
        out.append(AttentionCase(
            grid=(hg, wg), window=window, shift=shift, pool=rng.random() < 0.5,
            num_global=rng.choice([0, 0, 1, 2, 17]), rel_pos=rng.random() < 0.4,
            B=rng.randint(1, 2), H=rng.randint(1, 3 if small else 8),
            D=rng.choice([16, 32] if small else [32, 64, 80, 96, 128]),
            dtype=rng.choice([torch.float32] if small else [torch.float16, torch.bfloat16, torch.float32]),
            packed=rng.random() < 0.5, seed=seed * 100003 + i))
    return out


# ----------------------------------------------------------------------------- simple_decoder
@dataclass(frozen=True)
class DecoderCase:
    B: int = 2
    C: int = 8
    hw: tuple = (7, 5)
    K: int = 17
    k: int = 3
    scale: int = 4
    bias: bool = True
    dtype: torch.dtype = torch.float32
    seed: int = 0

    def __str__(self):
        return (f"B{self.B}C{self.C}-{self.hw[0]}x{self.hw[1]}-K{self.K}-k{self.k}-x{self.scale}"
                f"{'-bias' if self.bias else ''}-{str(self.dtype)[6:]}")


def check_simple_decoder(backend: str, case: DecoderCase, dev=None, *, implementation=None) -> list[Comparison]:
    """Forward and the three gradients. Low precision: the yardstick is the reference run in the
    case's dtype (PyTorch's interpolate and conv2d accumulate in float32 and round each op's
    output, as the kernels round their tap maps)."""
    dev = dev or device()
    g = torch.Generator().manual_seed(case.seed)
    x = torch.randn(case.B, case.C, *case.hw, generator=g).to(dev, case.dtype)
    w = (torch.randn(case.K, case.C, case.k, case.k, generator=g) / case.C ** 0.5).to(dev, case.dtype)
    b = torch.randn(case.K, generator=g).to(dev, case.dtype) if case.bias else None
    grad = torch.randn(case.B, case.K, case.hw[0] * case.scale, case.hw[1] * case.scale,
                       generator=g).to(dev, case.dtype)

    def run(be, tensors, poisoned=False, implementation=None):
        leaves = [_leaf(t) if t is not None else None for t in tensors]
        with _alloc.poisoned() if poisoned else contextlib.nullcontext(), \
                serving("simple_decoder", be, implementation):
            out = vk.simple_decoder(*leaves, scale_factor=case.scale, backend=be)
            out.backward(grad.to(out.dtype))
        return [out] + [t.grad for t in leaves if t is not None]

    got = run(backend, (x, w, b), poisoned=True, implementation=implementation)
    assert got[0].dtype == case.dtype
    want = run("reference", [t.double() if t is not None else None for t in (x, w, b)])
    ys = run("reference", (x, w, b)) if case.dtype != torch.float32 else [None] * len(got)
    tol = TOL[case.dtype]
    if VERBOSE:
        print(f"{backend} {case}")
    return [compare(f"{case} {name}", a, e, tol["fwd" if name == "out" else "bwd"], y, rms_tol=tol["rms"])
            for name, a, e, y in zip(("out", "dx", "dweight", "dbias"), got, want, ys)]


def decoder_sweep(scale: str = "ci") -> list[DecoderCase]:
    if scale == "ci":
        return [DecoderCase(), DecoderCase(k=1, bias=False), DecoderCase(scale=1), DecoderCase(scale=2, K=5),
                DecoderCase(hw=(4, 3), C=17, K=3, dtype=torch.float16),
                DecoderCase(hw=(3, 4), C=16, K=3, dtype=torch.bfloat16)]
    return [DecoderCase(B=4, C=C, hw=hw, K=K, k=k, scale=s, dtype=dt)
            for C, hw, K in [(64, (16, 12), 17), (96, (7, 5), 133), (256, (8, 6), 17)]
            for k, s in [(3, 4), (1, 4), (3, 2), (3, 1)]
            for dt in (torch.float32, torch.float16, torch.bfloat16)]


# ----------------------------------------------------------------------------- heatmaps
def realistic_heatmaps(B, K, H, W, *, seed=0, noise=0.02, border=False, dtype=torch.float32):
    """A Gaussian peak (sigma 2) per map over uniform noise; with border=True some peaks sit on
    or just past the edge of the map."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([-1.5 if border else 2.0, -1.5 if border else 2.0])
    hi = torch.tensor([W + 0.5 if border else W - 3.0, H + 0.5 if border else H - 3.0])
    centres = lo + (hi - lo) * torch.rand(B, K, 2, generator=g)
    ys, xs = torch.arange(H).float(), torch.arange(W).float()
    d2 = (xs - centres[..., 0, None, None]) ** 2 + (ys[:, None] - centres[..., 1, None, None]) ** 2
    amp = 0.5 + 0.5 * torch.rand(B, K, 1, 1, generator=g)
    maps = amp * torch.exp(-d2 / 8.0) + noise * torch.rand(B, K, H, W, generator=g)
    return maps.to(dtype)


@dataclass(frozen=True)
class HeatmapCase:
    B: int = 3
    K: int = 17
    size: tuple = (16, 12)  # (H, W)
    flip: bool = False
    method: str = "udp"
    boxes: bool = False
    border: bool = False
    noise_only: bool = False
    dtype: torch.dtype = torch.float32
    seed: int = 0

    def __str__(self):
        return (f"B{self.B}K{self.K}-{self.size[0]}x{self.size[1]}-{self.method}{'-flip' if self.flip else ''}"
                f"{'-boxes' if self.boxes else ''}{'-border' if self.border else ''}"
                f"{'-noise' if self.noise_only else ''}-{str(self.dtype)[6:]}")


def heatmap_inputs(case: HeatmapCase, dev):
    H, W = case.size
    if case.noise_only:
        g = torch.Generator().manual_seed(case.seed)
        hm = torch.rand(case.B, case.K, H, W, generator=g).to(case.dtype)
        fl = torch.rand(case.B, case.K, H, W, generator=g).to(case.dtype) if case.flip else None
    else:
        hm = realistic_heatmaps(case.B, case.K, H, W, seed=case.seed, border=case.border, dtype=case.dtype)
        fl = (realistic_heatmaps(case.B, case.K, H, W, seed=case.seed + 1, border=case.border, dtype=case.dtype)
              if case.flip else None)
    kw = dict(input_size=(W * 4, H * 4), method=case.method)
    if case.flip:
        kw["flip_heatmaps"] = fl.to(dev)
        kw["flip_indices"] = COCO_FLIP_INDICES[:case.K] if case.K == 17 else list(range(case.K))[::-1]
    if case.boxes:
        g = torch.Generator().manual_seed(case.seed + 7)
        kw["bbox_centers"] = (torch.rand(case.B, 2, generator=g) * 500).to(dev)
        kw["bbox_scales"] = (50 + torch.rand(case.B, 2, generator=g) * 300).to(dev)
    return hm.to(dev), kw


def check_decode_heatmaps(backend: str, case: HeatmapCase, dev=None, *, implementation=None):
    dev = dev or device()
    hm, kw = heatmap_inputs(case, dev)
    with _alloc.poisoned(), serving("decode_heatmaps", backend, implementation):
        kp, sc = vk.decode_heatmaps(hm, backend=backend, **kw)
    rkp, rsc = vk.decode_heatmaps(hm, backend="reference", **kw)
    assert kp.dtype == torch.float32 and sc.dtype == torch.float32
    assert kp.shape == (case.B, case.K, 2) and sc.shape == (case.B, case.K)
    assert_close(f"{case} scores", sc, rsc, 1e-6)
    if case.noise_only and case.method in ("udp", "dark"):
        # Ill-conditioned Newton step on noise: the integer argmax must agree exactly, the
        # refined position only loosely.
        with serving("decode_heatmaps", backend, implementation):
            akp, _ = vk.decode_heatmaps(hm, backend=backend, **{**kw, "method": "argmax"})
        rakp, _ = vk.decode_heatmaps(hm, backend="reference", **{**kw, "method": "argmax"})
        torch.testing.assert_close(akp.cpu(), rakp.cpu(), rtol=0, atol=1e-4)
        finite = torch.isfinite(rkp)
        assert bool(torch.isfinite(kp)[finite].all())
        return
    # 1e-3 px in image (or crop) pixels.
    err = (kp.cpu().double() - rkp.cpu().double()).abs()
    assert not err.numel() or float(err.max()) <= 1e-3, f"{case}: keypoints differ by {float(err.max()):.3g} px"


def heatmap_sweep(scale: str = "ci") -> list[HeatmapCase]:
    if scale == "ci":
        return [HeatmapCase(), HeatmapCase(flip=True, boxes=True), HeatmapCase(method="argmax", flip=True),
                HeatmapCase(border=True, size=(8, 6)), HeatmapCase(noise_only=True, B=2, K=4),
                HeatmapCase(dtype=torch.float16, B=2), HeatmapCase(dtype=torch.bfloat16, B=1, K=5, size=(7, 5)),
                # method="dark" (TokenPose's post-processing): interior and border maxima, noise, bf16
                HeatmapCase(method="dark"), HeatmapCase(method="dark", flip=True, boxes=True, border=True),
                HeatmapCase(method="dark", noise_only=True, B=2, K=4),
                HeatmapCase(method="dark", dtype=torch.bfloat16, B=1, K=5, size=(9, 7))]
    return [HeatmapCase(B=B, K=K, size=size, flip=flip, boxes=True, border=border, dtype=dt, method=m)
            for B, K in [(64, 17), (8, 133)]
            for size in [(64, 48), (96, 72), (128, 96)]
            for flip, border in [(False, False), (True, True)]
            for dt in (torch.float32, torch.float16, torch.bfloat16)
            for m in ("udp", "argmax", "dark")] + [HeatmapCase(B=16, noise_only=True, size=(64, 48), flip=True)]


@dataclass(frozen=True)
class TargetCase:
    B: int = 3
    K: int = 17
    heatmap_size: tuple = (12, 16)  # (W, H)
    input_size: tuple = (48, 64)
    sigma: float = 2.0
    seed: int = 0

    def __str__(self):
        return f"B{self.B}K{self.K}-{self.heatmap_size}-{self.input_size}-s{self.sigma}"


def check_udp_targets(backend: str, case: TargetCase, dev=None, *, implementation=None):
    dev = dev or device()
    g = torch.Generator().manual_seed(case.seed)
    W, H = case.input_size
    kp = torch.rand(case.B, case.K, 2, generator=g) * torch.tensor([W * 1.4, H * 1.4]) - torch.tensor([W * .2, H * .2])
    vis = (torch.rand(case.B, case.K, generator=g) > 0.2).float()
    kw = dict(heatmap_size=case.heatmap_size, input_size=case.input_size, sigma=case.sigma)
    with _alloc.poisoned(), serving("udp_targets", backend, implementation):
        hm, w = vk.udp_targets(kp.to(dev), vis.to(dev), backend=backend, **kw)
    rhm, rw = vk.udp_targets(kp, vis, backend="reference", **kw)
    assert_close(f"{case} heatmaps", hm, rhm, 1e-5)
    torch.testing.assert_close(w.cpu(), rw, rtol=0, atol=0)


def target_sweep(scale: str = "ci") -> list[TargetCase]:
    cases = [TargetCase(), TargetCase(sigma=1.5, K=5), TargetCase(B=1, K=1, sigma=3.0)]
    if scale == "gpu":
        cases += [TargetCase(B=64, K=17, heatmap_size=(48, 64), input_size=(192, 256)),
                  TargetCase(B=8, K=133, heatmap_size=(72, 96), input_size=(288, 384), sigma=3.0)]
    return cases


def with_dtype(cases, dtype):
    return [replace(c, dtype=dtype) for c in cases]


# ----------------------------------------------------------------------------- masked_attention
@dataclass(frozen=True)
class MaskedCase:
    """One masked_attention call. mask: none, random (30% allowed, some rows empty), blobs
    (TAR-like: each query sees a few short runs of keys, so most key tiles are empty for a whole
    query block), empty (no key at all), full (a mask that allows everything). form: how the mask
    is passed: bool4 (B, 1, Lq, Lk), bool3 (B, Lq, Lk), bool2 (Lq, Lk), mha (B*H, Lq, Lk), per
    head), keypad (B, 1, 1, Lk), packed (int32 words of bool4)."""
    B: int = 2
    H: int = 2
    Lq: int = 17
    Lk: int = 45
    D: int = 24
    mask: str = "random"
    form: str = "bool4"
    dtype: torch.dtype = torch.float32
    strided: bool = False  # q, k, v as views of larger (B, L, H, 3D) buffers
    scale: float | None = None
    seed: int = 0

    def __str__(self):
        return (f"B{self.B}H{self.H}-q{self.Lq}k{self.Lk}D{self.D}-{self.mask}-{self.form}-{str(self.dtype)[6:]}"
                f"{'-strided' if self.strided else ''}{'' if self.scale is None else f'-s{self.scale}'}")


def masked_mask(case: MaskedCase, g: torch.Generator) -> torch.Tensor | None:
    """The case's key mask as a 4-D bool tensor with the sizes its form has (1 where it broadcasts)."""
    batch = 1 if case.form == "bool2" else case.B
    heads = case.H if case.form == "mha" else 1
    rows = 1 if case.form == "keypad" else case.Lq
    shape = (batch, heads, rows, case.Lk)
    if case.mask == "none":
        return None
    if case.mask in ("full", "empty"):
        return torch.full(shape, case.mask == "full", dtype=torch.bool)
    if case.mask == "random":
        m = torch.rand(shape, generator=g) < 0.3
        if rows > 1:
            m[..., ::5, :] = False  # every 5th query row sees nothing
        return m
    if case.mask == "blobs":
        m = torch.zeros(shape, dtype=torch.bool)
        for idx in itertools.product(*(range(s) for s in shape[:3])):
            for _ in range(2):
                start = int(torch.randint(0, case.Lk, (1,), generator=g))
                m[idx + (slice(start, start + int(torch.randint(1, 9, (1,), generator=g))),)] = True
        if rows > 2:
            m[..., 1, :] = False
        return m
    raise ValueError(f"unknown mask kind {case.mask!r}")


def masked_form(case: MaskedCase, m: torch.Tensor | None):
    """The full-shaped mask as the case passes it to the op."""
    if m is None:
        return None
    if case.form == "bool2":
        return m[0, 0]
    if case.form == "bool3":
        return m[:, 0]
    if case.form == "mha":
        return m.flatten(0, 1)
    if case.form == "packed":
        return vk.pack_key_mask(m)
    return m  # bool4, keypad


def masked_inputs(case: MaskedCase, dev):
    """q, k, v, the mask as passed, the mask broadcast to (B, H, Lq, Lk) (or None), grad."""
    g = torch.Generator().manual_seed(case.seed)
    B, H, Lq, Lk, D = case.B, case.H, case.Lq, case.Lk, case.D
    if case.strided:  # views into token-major buffers, as an attention module's projections give
        q = torch.randn(B, Lq, H, 2 * D, generator=g)[..., :D].transpose(1, 2)
        kv = torch.randn(B, Lk, H, 3 * D, generator=g)
        k, v = kv[..., :D].transpose(1, 2), kv[..., D:2 * D].transpose(1, 2)
    else:
        q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (Lq, Lk, Lk))
    q = q * 2.0  # peaked attention: a wrong scale or mask shows
    m = masked_mask(case, g)
    full = None if m is None else m.expand(B, H, Lq, Lk)
    grad = torch.randn(B, H, Lq, D, generator=g)
    as_dev = lambda t: t.to(dev, case.dtype)  # noqa: E731
    passed = masked_form(case, m)
    return (as_dev(q), as_dev(k), as_dev(v), None if passed is None else passed.to(dev),
            None if full is None else full.to(dev), as_dev(grad))


MASKED_TENSORS = ("out", "dq", "dk", "dv")


def _run_masked(backend, case, inputs, key_mask, grad, poisoned=False, implementation=None):
    """[out, dq, dk, dv] of one backend."""
    leaves = [_leaf(t) for t in inputs]
    with _alloc.poisoned() if poisoned else contextlib.nullcontext(), \
            serving("masked_attention", backend, implementation):
        out = vk.masked_attention(*leaves, key_mask, scale=case.scale, backend=backend)
        if grad is not None:
            out.backward(grad)
    return [out] + ([t.grad for t in leaves] if grad is not None else [])


def masked_truth_and_yardstick(case: MaskedCase, inputs, key_mask, full, grad):
    """The float64 reference's [out, dq, dk, dv], and the yardstick's [out, dq, dk, dv] and their row
    noise scales (None for float32)."""
    want = [t.detach() for t in _run_masked("reference", case, [t.double() for t in inputs], key_mask,
                                            grad.double())]
    ys = None if case.dtype == torch.float32 else yardstick.masked_attention(*inputs, full, grad, scale=case.scale,
                                                                             row_noise=True)
    return want, ys


def check_masked_attention(backend: str, case: MaskedCase, dev=None, *, grads: bool = True,
                           implementation=None) -> list[Comparison]:
    """Forward and dq, dk, dv against the float64 reference (outputs NaN-poisoned; low precision
    against the yardstick, tests/yardstick.py), and exact zeros where the spec has them: the rows
    of queries without keys (out and dq) and the keys no query sees (dk, dv)."""
    dev = dev or device()
    q, k, v, key_mask, full, grad = masked_inputs(case, dev)
    got = _run_masked(backend, case, (q, k, v), key_mask, grad if grads else None, poisoned=True,
                      implementation=implementation)
    assert got[0].dtype == case.dtype and got[0].shape == q.shape
    want, ys = masked_truth_and_yardstick(case, (q, k, v), key_mask, full, grad)
    tol = TOL[case.dtype]
    if VERBOSE:
        print(f"{backend} {case}")
    # Element bounds per bucket of rows ranked by the yardstick's noise scale, as for
    # window_attention, not by size: a small dq row's error comes from rounding dS terms that
    # cancel in its sum (a row 50x smaller than the largest carries a third of its error), and
    # its noise scale, the norm of those terms, ranks it with the rows its error is like.
    results = [compare(f"{case} {name}", a, want[i], tol["fwd" if i == 0 else "bwd"],
                       None if ys is None else ys[0][i], row_noise=None if ys is None else ys[1][i],
                       rms_tol=tol["rms"]) for i, (name, a) in enumerate(zip(MASKED_TENSORS, got))]
    if full is not None:
        empty = ~full.any(-1)  # (B, H, Lq) queries without keys
        unseen = ~full.any(-2)  # (B, H, Lk) keys no query sees
        for name, t, where in zip(MASKED_TENSORS, got, (empty, empty, unseen, unseen)):
            assert bool((t.detach()[where] == 0).all()), f"{case}: {name} must be exactly 0 where the mask allows nothing"
    return results


def masked_bound_ratios(case: MaskedCase, dev=None) -> dict[str, float]:
    """Per output and gradient, the effective bound / RMS(truth) (see bound_table)."""
    dev = dev or device()
    q, k, v, key_mask, full, grad = masked_inputs(case, dev)
    want, ys = masked_truth_and_yardstick(case, (q, k, v), key_mask, full, grad)
    tol = TOL[case.dtype]
    return {name: _ratio(e, tol["fwd" if i == 0 else "bwd"], None if ys is None else ys[0][i],
                         row_noise=None if ys is None else ys[1][i])
            for i, (name, e) in enumerate(zip(MASKED_TENSORS, want))}


def masked_sweep(scale: str = "ci") -> list[MaskedCase]:
    """Odd lengths (17 joint queries, Lk 5*7*9 and others), head dims 12, 24, 64, 80, every mask
    kind and form, strided views, fp32/fp16/bf16."""
    if scale == "ci":
        cases = [MaskedCase(mask=m, form=f) for m, f in [
            ("none", "bool4"), ("random", "bool4"), ("random", "bool3"), ("random", "packed"),
            ("random", "mha"), ("random", "keypad"), ("blobs", "bool3"), ("empty", "bool4"),
            ("full", "bool2")]]
        cases += [
            MaskedCase(Lq=17, Lk=5 * 7 * 9, D=12, mask="blobs", form="packed", B=1, H=2),
            MaskedCase(Lq=70, Lk=17, D=80, mask="none", B=1, H=1),  # GRA-like: many queries, few keys
            MaskedCase(Lq=33, Lk=130, D=64, mask="random", form="mha", B=1, H=2, strided=True),
            MaskedCase(Lq=5, Lk=3, D=24, mask="random", B=3, H=1, scale=0.3),
        ]
        cases += [MaskedCase(Lq=17, Lk=77, D=D, mask=m, dtype=dt, B=1, H=2)
                  for D, m, dt in [(24, "blobs", torch.float16), (64, "random", torch.bfloat16),
                                   (80, "none", torch.float16)]]
        return cases
    cases = []
    shapes = [(17, 5 * 16 * 12), (17, 5 * 24 * 18), (16 * 12, 17), (24 * 18, 17), (17, 5 * 7 * 9), (100, 333)]
    for i, ((lq, lk), D) in enumerate(itertools.product(shapes, (12, 24, 64, 80, 96, 192, 256, 320))):
        for j, dt in enumerate((torch.float16, torch.bfloat16, torch.float32)):
            n = i * 3 + j
            mask, form = [("blobs", "packed"), ("random", "bool3"), ("none", "bool4"), ("random", "mha"),
                          ("blobs", "bool4"), ("random", "keypad")][n % 6]
            cases.append(MaskedCase(B=2, H=(1, 4, 12)[n % 3], Lq=lq, Lk=lk, D=D, mask=mask, form=form,
                                    dtype=dt, strided=bool(n % 2), seed=n))
    return cases


def random_masked_cases(n: int, seed: int = 0, small: bool = True) -> list[MaskedCase]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(MaskedCase(
            B=rng.randint(1, 2), H=rng.randint(1, 3), Lq=rng.randint(1, 40 if small else 300),
            Lk=rng.randint(1, 90 if small else 2500), D=rng.choice([8, 12, 16, 24] if small else [12, 24, 64, 80, 192]),
            mask=rng.choice(["none", "random", "blobs", "empty", "full"]),
            form=rng.choice(["bool4", "bool3", "bool2", "mha", "keypad", "packed"]),
            dtype=rng.choice([torch.float32] if small else [torch.float16, torch.bfloat16, torch.float32]),
            strided=rng.random() < 0.3, scale=rng.choice([None, None, 0.1, 1.0]), seed=seed * 100003 + i))
    return out


# ----------------------------------------------------------------------------- effective bounds
BOUND_LIMIT = 0.1  # the effective bound must stay under this fraction of RMS(truth)


def _ratio(expected, tol, yardstick=None, groups=None, row_noise=None) -> float:
    e = expected.detach().double().cpu()
    rms = _rms(e)
    return _rms(element_bounds(e, tol, yardstick, groups, row_noise)) / rms if rms > 0 else math.inf


def attention_bound_ratios(case: AttentionCase, dev=None) -> dict[str, float]:
    """Per output and gradient of one case, the effective bound / RMS(truth) the harness would
    hold a kernel to. Needs no kernel: only the float64 reference and the yardstick."""
    dev = dev or device()
    q, k, v, rh, rw, grad = attention_inputs(case, dev)
    inputs = (q, k, v, rh, rw)
    want = attention_truth(case, inputs, grad, per_head=True)
    ys = attention_yardstick(case, inputs, grad)
    names = [n for n, t in zip(ATTENTION_TENSORS, (q, q, q, q, rh, rw)) if t is not None]
    tol = TOL[case.dtype]
    return {name: _ratio(e, tol["fwd" if i == 0 else "bwd"], None if ys is None else ys[0][i],
                         token_groups(case) if i < 4 else None, ys[1][i] if ys is not None and i < 4 else None)
            for i, (name, e) in enumerate(zip(names, want))}


def decoder_bound_ratios(case: DecoderCase, dev=None) -> dict[str, float]:
    dev = dev or device()
    g = torch.Generator().manual_seed(case.seed)
    x = torch.randn(case.B, case.C, *case.hw, generator=g).to(dev, case.dtype)
    w = (torch.randn(case.K, case.C, case.k, case.k, generator=g) / case.C ** 0.5).to(dev, case.dtype)
    b = torch.randn(case.K, generator=g).to(dev, case.dtype) if case.bias else None
    grad = torch.randn(case.B, case.K, case.hw[0] * case.scale, case.hw[1] * case.scale,
                       generator=g).to(dev, case.dtype)

    def run(tensors):
        leaves = [_leaf(t) if t is not None else None for t in tensors]
        out = vk.simple_decoder(*leaves, scale_factor=case.scale, backend="reference")
        out.backward(grad.to(out.dtype))
        return [out] + [t.grad for t in leaves if t is not None]

    want = run([t.double() if t is not None else None for t in (x, w, b)])
    ys = run((x, w, b)) if case.dtype != torch.float32 else [None] * len(want)
    tol = TOL[case.dtype]
    return {name: _ratio(e, tol["fwd" if name == "out" else "bwd"], y)
            for name, e, y in zip(("out", "dx", "dweight", "dbias"), want, ys)}


def bound_table(scale: str, dev=None, limit: float = BOUND_LIMIT, out=print) -> float:
    """Print the effective bound / RMS of every tensor of every attention, decoder and masked-attention case of a
    sweep; returns the worst."""
    worst = 0.0
    out(f"effective bound / RMS(truth) per tensor, {scale} sweeps (limit {limit}); * marks a breach")
    jobs = [("window_attention", c, attention_bound_ratios) for c in attention_sweep(scale)]
    jobs += [("simple_decoder", c, decoder_bound_ratios) for c in decoder_sweep(scale)]
    # (A mask that allows nothing has an all-zero truth, held to exact zeros by the check itself.)
    jobs += [("masked_attention", c, masked_bound_ratios) for c in masked_sweep(scale) if c.mask != "empty"]
    for op, case, fn in jobs:
        ratios = fn(case, dev)
        worst = max(worst, *ratios.values())
        cells = "  ".join(f"{n} {r:.3g}{'*' if r > limit else ''}" for n, r in ratios.items())
        line = f"{op:16s} {str(case):58s} {cells}"
        out(line)
    out(f"worst {worst:.3g} ({'within' if worst <= limit else 'OVER'} the limit {limit})")
    return worst


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Print the parity harness's effective bound / RMS(truth) per "
                                 "tensor for the CI or GPU sweep (no kernel runs); exit 1 over the limit.")
    ap.add_argument("--table", choices=("ci", "gpu"), default="ci")
    ap.add_argument("--limit", type=float, default=BOUND_LIMIT)
    args = ap.parse_args()
    sys.exit(0 if bound_table(args.table, limit=args.limit, out=lambda s: print(s, flush=True)) <= args.limit else 1)
