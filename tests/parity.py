"""The shared parity harness: every backend of every op is checked against the reference here.

A case draws fresh random inputs, runs the backend (outputs NaN-poisoned, see _alloc.poisoned)
and the reference in float64 on the same inputs, and compares forward and every gradient with
per-dtype tolerances. Failures name the worst indices.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

import torch

import vitpose_kernels as vk
from vitpose_kernels import _alloc, dispatch

# Max-normalised error allowed, per dtype, forward and backward (declared once, STYLE.md #4).
TOL = {
    torch.float32: {"fwd": 1e-4, "bwd": 1e-4},
    torch.float16: {"fwd": 2e-2, "bwd": 2e-2},
    torch.bfloat16: {"fwd": 2e-2, "bwd": 3e-2},
}

COCO_FLIP_INDICES = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def skip_reason(op: str, backend: str) -> str | None:
    """Why a backend cannot run on this machine at all (None: it can)."""
    why = dispatch.machine_reasons(backend)
    if not why and backend not in dispatch._REGISTRY[op]:
        why = [f"no {backend} implementation of {op}"]
    return "; ".join(why) if why else None


# A low-precision kernel may be off from the float64 truth by this many times what the reference
# itself is off when run in the same dtype (FlashAttention's criterion). It matters for sums of
# rounding noise, e.g. a rel-pos gradient whose true value is 0 (window side 1).
YARDSTICK_FACTOR = 4.0


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float,
                 yardstick: torch.Tensor | None = None) -> None:
    """max |a - e| <= max(tol * max(|e|, 1), 4 * max |yardstick - e|), NaN-strict.

    yardstick: the reference's own result in the kernel's dtype, if the case is low precision.
    """
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    nan = torch.isnan(a) & ~torch.isnan(e)
    if nan.any():
        idx = nan.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(nan.sum())} NaN element(s) (unwritten?) e.g. at {idx}")
    err = (a - e).abs()
    bound = tol * max(float(e.abs().max()) if e.numel() else 0.0, 1.0)
    if yardstick is not None and e.numel():
        bound = max(bound, YARDSTICK_FACTOR * float((yardstick.detach().double().cpu() - e).abs().max()))
    if err.numel() and float(err.max()) > bound:
        worst = torch.topk(err.flatten(), min(5, err.numel())).indices
        where = [tuple(int(i) for i in torch.unravel_index(w, err.shape)) for w in worst]
        raise AssertionError(
            f"{name}: max error {float(err.max()):.3g} > {bound:.3g} (tol {tol}); worst at {where}: "
            f"got {[float(a[w]) for w in where]}, expected {[float(e[w]) for w in where]}")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


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

    def __str__(self):
        w = "full" if self.window is None else f"w{self.window[0]}x{self.window[1]}"
        return (f"g{self.grid[0]}x{self.grid[1]}-{w}-s{self.shift[0]}{self.shift[1]}"
                f"{'-pool' if self.pool else ''}-G{self.num_global}{'-rel' if self.rel_pos else ''}"
                f"-B{self.B}H{self.H}D{self.D}-{str(self.dtype)[6:]}{'-packed' if self.packed else ''}")


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


def check_window_attention(backend: str, case: AttentionCase, dev=None, *, grads: bool = True):
    dev = dev or device()
    q, k, v, rh, rw, grad = attention_inputs(case, dev)
    kw = dict(grid=case.grid, window=case.window, shift=case.shift, pool=case.pool,
              num_global=case.num_global)
    inputs = [_leaf(t) if t is not None else None for t in (q, k, v, rh, rw)]
    with _alloc.poisoned():
        out = vk.window_attention(*inputs[:3], rel_pos_h=inputs[3], rel_pos_w=inputs[4], backend=backend, **kw)
    assert out.dtype == case.dtype and out.shape == q.shape
    ref_in = [_leaf(t.double()) if t is not None else None for t in (q, k, v, rh, rw)]
    ref = vk.window_attention(*ref_in[:3], rel_pos_h=ref_in[3], rel_pos_w=ref_in[4], backend="reference", **kw)
    low = [None] * 5  # the reference run in the case's own (low) precision: the error yardstick
    low_out = None
    if case.dtype != torch.float32:
        low = [_leaf(t) if t is not None else None for t in (q, k, v, rh, rw)]
        low_out = vk.window_attention(*low[:3], rel_pos_h=low[3], rel_pos_w=low[4], backend="reference", **kw)
    tol = TOL[case.dtype]
    assert_close(f"{case} out", out, ref, tol["fwd"], low_out)
    if not grads:
        return
    with _alloc.poisoned():
        out.backward(grad)
    ref.backward(grad.double())
    if low_out is not None:
        low_out.backward(grad)
    for name, a, e, y in zip(("dq", "dk", "dv", "drel_pos_h", "drel_pos_w"), inputs, ref_in, low):
        if a is not None:
            assert a.grad is not None, f"{case}: no gradient for {name}"
            assert_close(f"{case} {name}", a.grad, e.grad, tol["bwd"], None if y is None else y.grad)


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
        return cases
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
    return cases


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


def check_simple_decoder(backend: str, case: DecoderCase, dev=None):
    dev = dev or device()
    g = torch.Generator().manual_seed(case.seed)
    x = torch.randn(case.B, case.C, *case.hw, generator=g).to(dev, case.dtype)
    w = (torch.randn(case.K, case.C, case.k, case.k, generator=g) / case.C ** 0.5).to(dev, case.dtype)
    b = torch.randn(case.K, generator=g).to(dev, case.dtype) if case.bias else None
    inputs = [_leaf(t) if t is not None else None for t in (x, w, b)]
    with _alloc.poisoned():
        out = vk.simple_decoder(*inputs, scale_factor=case.scale, backend=backend)
    ref_in = [_leaf(t.double()) if t is not None else None for t in (x, w, b)]
    ref = vk.simple_decoder(*ref_in, scale_factor=case.scale, backend="reference")
    tol = TOL[case.dtype]
    assert out.dtype == case.dtype
    assert_close(f"{case} out", out, ref, tol["fwd"])
    grad = torch.randn(ref.shape, generator=g).to(dev, case.dtype)
    with _alloc.poisoned():
        out.backward(grad)
    ref.backward(grad.double())
    for name, a, e in zip(("dx", "dweight", "dbias"), inputs, ref_in):
        if a is not None:
            assert_close(f"{case} {name}", a.grad, e.grad, tol["bwd"])


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


def check_decode_heatmaps(backend: str, case: HeatmapCase, dev=None):
    dev = dev or device()
    hm, kw = heatmap_inputs(case, dev)
    with _alloc.poisoned():
        kp, sc = vk.decode_heatmaps(hm, backend=backend, **kw)
    rkp, rsc = vk.decode_heatmaps(hm, backend="reference", **kw)
    assert kp.dtype == torch.float32 and sc.dtype == torch.float32
    assert kp.shape == (case.B, case.K, 2) and sc.shape == (case.B, case.K)
    assert_close(f"{case} scores", sc, rsc, 1e-6)
    if case.noise_only and case.method == "udp":
        # Ill-conditioned Newton step on noise: the integer argmax must agree exactly, the
        # refined position only loosely.
        akp, _ = vk.decode_heatmaps(hm, backend=backend, **{**kw, "method": "argmax"})
        rakp, _ = vk.decode_heatmaps(hm, backend="reference", **{**kw, "method": "argmax"})
        torch.testing.assert_close(akp.cpu(), rakp.cpu(), rtol=0, atol=1e-4)
        finite = torch.isfinite(rkp)
        assert bool(torch.isfinite(kp)[finite].all())
        return
    # 1e-3 px in image (or crop) pixels.
    err = (kp.cpu().double() - rkp.cpu().double()).abs()
    assert float(err.max()) <= 1e-3, f"{case}: keypoints differ by {float(err.max()):.3g} px"


def heatmap_sweep(scale: str = "ci") -> list[HeatmapCase]:
    if scale == "ci":
        return [HeatmapCase(), HeatmapCase(flip=True, boxes=True), HeatmapCase(method="argmax", flip=True),
                HeatmapCase(border=True, size=(8, 6)), HeatmapCase(noise_only=True, B=2, K=4),
                HeatmapCase(dtype=torch.float16, B=2), HeatmapCase(dtype=torch.bfloat16, B=1, K=5, size=(7, 5))]
    return [HeatmapCase(B=B, K=K, size=size, flip=flip, boxes=True, border=border, dtype=dt, method=m)
            for B, K in [(64, 17), (8, 133)]
            for size in [(64, 48), (96, 72), (128, 96)]
            for flip, border in [(False, False), (True, True)]
            for dt in (torch.float32, torch.float16, torch.bfloat16)
            for m in ("udp", "argmax")] + [HeatmapCase(B=16, noise_only=True, size=(64, 48), flip=True)]


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


def check_udp_targets(backend: str, case: TargetCase, dev=None):
    dev = dev or device()
    g = torch.Generator().manual_seed(case.seed)
    W, H = case.input_size
    kp = torch.rand(case.B, case.K, 2, generator=g) * torch.tensor([W * 1.4, H * 1.4]) - torch.tensor([W * .2, H * .2])
    vis = (torch.rand(case.B, case.K, generator=g) > 0.2).float()
    kw = dict(heatmap_size=case.heatmap_size, input_size=case.input_size, sigma=case.sigma)
    with _alloc.poisoned():
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


def check_masked_attention(backend: str, case: MaskedCase, dev=None, *, grads: bool = True):
    """Forward and dq, dk, dv against the float64 reference (NaN-poisoned outputs, the reference in
    the case's dtype as the yardstick), and exact zeros for query rows without keys."""
    dev = dev or device()
    q, k, v, key_mask, full, grad = masked_inputs(case, dev)
    inputs = [_leaf(t) for t in (q, k, v)]
    with _alloc.poisoned():
        out = vk.masked_attention(*inputs, key_mask, scale=case.scale, backend=backend)
    assert out.dtype == case.dtype and out.shape == q.shape
    ref_in = [_leaf(t.double()) for t in (q, k, v)]
    ref = vk.masked_attention(*ref_in, key_mask, scale=case.scale, backend="reference")
    low, low_out = None, None
    if case.dtype != torch.float32:
        low = [_leaf(t) for t in (q, k, v)]
        low_out = vk.masked_attention(*low, key_mask, scale=case.scale, backend="reference")
    tol = TOL[case.dtype]
    assert_close(f"{case} out", out, ref, tol["fwd"], low_out)
    empty = None if full is None else ~full.any(-1)  # (B, H, Lq) rows without keys
    if empty is not None and empty.any():
        assert bool((out.detach()[empty] == 0).all()), f"{case}: rows without keys must output exactly 0"
    if not grads:
        return
    with _alloc.poisoned():
        out.backward(grad)
    ref.backward(grad.double())
    if low_out is not None:
        low_out.backward(grad)
    for i, (name, a, e) in enumerate(zip(("dq", "dk", "dv"), inputs, ref_in)):
        assert_close(f"{case} {name}", a.grad, e.grad, tol["bwd"], None if low is None else low[i].grad)
    if empty is not None and empty.any():
        assert bool((inputs[0].grad[empty] == 0).all()), f"{case}: rows without keys must get dq == 0"
    if full is not None:
        unseen = ~full.any(-2)  # (B, H, Lk) keys no query attends to
        for name, t in (("dk", inputs[1]), ("dv", inputs[2])):
            assert bool((t.grad[unseen] == 0).all()), f"{case}: keys no query sees must get {name} == 0"


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
