"""masked_attention (TAR-ViTPose's mask-aware cross-attention, JTA, and its GRA) and
heatmap_key_mask (its masks from the initial heatmaps).

The reference against formulations written here (a dense masked softmax, nn.MultiheadAttention
with the equivalent attn_mask, the official generate_attn_mask), float64 gradcheck; every
kernel backend against the reference through the parity harness (tests/parity.py): Triton through
the CPU interpreter, CUDA through the CPU emulator (tests/cuda_emulator) and, on a GPU, for real;
bad input, torch.library.opcheck, torch.compile(fullgraph=True).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cuda_emulator
import parity
import sanitizer
import vitpose_kernels as vk
from vitpose_kernels import _alloc
from vitpose_kernels.reference.heatmap_key_mask import heatmap_mask_values
from vitpose_kernels.reference.masked_attention import unpack_key_mask

DEV = parity.device()
CPU = torch.device("cpu")
ON_GPU = torch.cuda.is_available()
SCALE = "gpu" if ON_GPU else "ci"
LOW = (torch.float16, torch.bfloat16)
gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (GPU-owed on machines without one)")


def _skip_unless(op, backend):
    why = parity.skip_reason(op, backend)
    if why:
        pytest.skip(f"{backend} backend of {op} unavailable here: {why}")


def dense_masked_attention(q, k, v, allowed, scale):
    """An independent formulation: explicit per-row softmax over the allowed keys only."""
    B, H, Lq, _ = q.shape
    out = torch.zeros_like(q)
    for b, h, i in ((b, h, i) for b in range(B) for h in range(H) for i in range(Lq)):
        keys = allowed[b, h, i].nonzero().flatten()
        if keys.numel():
            w = torch.exp(scale * k[b, h, keys] @ q[b, h, i] - (scale * k[b, h, keys] @ q[b, h, i]).max())
            out[b, h, i] = (w / w.sum()) @ v[b, h, keys]
    return out


# ----------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("form", ["bool4", "bool3", "bool2", "mha", "keypad", "packed"])
def test_reference_matches_a_dense_formulation(form):
    case = parity.MaskedCase(B=2, H=3, Lq=7, Lk=37, D=5, mask="random", form=form, dtype=torch.float64)
    q, k, v, key_mask, full, _ = parity.masked_inputs(case, torch.device("cpu"))
    out = vk.masked_attention(q, k, v, key_mask, backend="reference")
    torch.testing.assert_close(out, dense_masked_attention(q, k, v, full, 5 ** -0.5), rtol=1e-12, atol=1e-12)


def test_pack_key_mask_bit_order():
    """Bit i of word w is key 32*w + i; bit 31 is int32's sign bit; bits past Lk are ignored."""
    m = torch.zeros(1, 70, dtype=torch.bool)
    m[0, [0, 31, 33, 69]] = True
    words = vk.pack_key_mask(m)
    assert words.dtype == torch.int32 and words.shape == (1, 3)
    assert words.tolist() == [[1 - 2 ** 31, 2, 32]]
    assert torch.equal(unpack_key_mask(words, 70), m)
    junk = words.clone()
    junk[0, 2] |= 0x7FFFFF00  # keys 72.. do not exist
    q = torch.randn(1, 1, 1, 4, dtype=torch.float64)
    k = torch.randn(1, 1, 70, 4, dtype=torch.float64)
    assert torch.equal(vk.masked_attention(q, k, k, words), vk.masked_attention(q, k, k, junk))


def test_reference_equals_multihead_attention_with_the_official_mask():
    """TAR's JTA cross-attention as the official code runs it (nn.MultiheadAttention, batch_first,
    4 heads, bool attn_mask repeated per head, True = masked), rebuilt from masked_attention with
    the same weights, drawn large so that attention is far from uniform."""
    torch.manual_seed(0)
    B, J, Lk, C, heads = 2, 17, 5 * 7 * 9, 32, 4
    mha = torch.nn.MultiheadAttention(C, heads, batch_first=True).double()
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.6)
    query, context = torch.randn(B, J, C).double(), torch.randn(B, Lk, C).double()
    excluded = torch.rand(B, J, Lk) < 0.8  # every row keeps some keys (MHA gives NaN otherwise)
    attn_mask = excluded[:, None].repeat(1, heads, 1, 1).flatten(0, 1)
    expected, _ = mha(query, context, context, attn_mask=attn_mask)

    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    split = lambda x: x.unflatten(-1, (heads, C // heads)).transpose(1, 2)  # noqa: E731
    q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(context, w_k, b_k)), split(F.linear(context, w_v, b_v))
    for key_mask in (~excluded, ~attn_mask, vk.pack_key_mask(~excluded)[:, None]):
        out = vk.masked_attention(q, k, v, key_mask, backend="reference")
        got = mha.out_proj(out.transpose(1, 2).flatten(2))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    logits = (q @ k.transpose(-1, -2)).detach() * (C // heads) ** -0.5
    probs = torch.softmax(logits.masked_fill(excluded[:, None], -torch.inf), -1)
    assert float(probs.max(-1).values.mean()) > 0.5, "attention too uniform to test anything"


def test_rows_without_keys_are_zero_where_multihead_attention_gives_nan():
    q, k = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 6, 8)
    allowed = torch.ones(1, 3, 6, dtype=torch.bool)
    allowed[0, 1] = False
    out = vk.masked_attention(q, k, k, allowed)
    mha_math = torch.softmax((q @ k.transpose(-1, -2)).masked_fill(~allowed[:, None], -torch.inf), -1)
    assert torch.isnan(mha_math[0, 0, 1]).all() and bool((out[0, 0, 1] == 0).all())


def test_reference_gradcheck_float64():
    """Including a row without keys (every 5th row of a random mask), whose gradients are 0."""
    case = parity.MaskedCase(B=1, H=1, Lq=6, Lk=9, D=3, mask="random", form="bool3", dtype=torch.float64, seed=3)
    q, k, v, key_mask, _, _ = parity.masked_inputs(case, torch.device("cpu"))
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *t: vk.masked_attention(*t, key_mask, scale=0.7), leaves)


def test_mask_forms_agree():
    base = parity.MaskedCase(B=2, H=3, Lq=6, Lk=40, D=4, mask="random", form="bool4", dtype=torch.float64)
    q, k, v, m4, full, _ = parity.masked_inputs(base, torch.device("cpu"))
    expected = vk.masked_attention(q, k, v, m4)
    for mask in (m4[:, 0], vk.pack_key_mask(m4), vk.pack_key_mask(m4[:, 0]), full, full.flatten(0, 1)):
        assert torch.equal(vk.masked_attention(q, k, v, mask), expected)


# ----------------------------------------------------------------------------- kernels vs reference
@pytest.mark.parametrize("case", parity.masked_sweep(SCALE), ids=str)
def test_triton_parity(case):
    _skip_unless("masked_attention", "triton")
    parity.check_masked_attention("triton", case)


@pytest.mark.parametrize("case", parity.random_masked_cases(6, seed=5, small=not ON_GPU), ids=str)
def test_triton_parity_random(case):
    _skip_unless("masked_attention", "triton")
    parity.check_masked_attention("triton", case)


def test_triton_two_runs_bit_identical():
    _skip_unless("masked_attention", "triton")
    case = parity.MaskedCase(Lq=19, Lk=70, D=16, mask="blobs", B=1, H=2)
    q, k, v, key_mask, _, grad = parity.masked_inputs(case, DEV)

    def run():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = vk.masked_attention(*leaves, key_mask, backend="triton")
        return [out.detach(), *torch.autograd.grad(out, leaves, grad)]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_triton_opcheck():
    _skip_unless("masked_attention", "triton")
    from vitpose_kernels.triton_backend import masked_attention as tma

    case = parity.MaskedCase(B=1, H=2, Lq=5, Lk=37, D=8, mask="random", form="packed")
    q, k, v, key_mask, _, _ = parity.masked_inputs(case, DEV)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    torch.library.opcheck(tma.masked_attention_op, (*leaves, key_mask[:, None], 0.4))


def test_torch_compile_fullgraph():
    """A JTA-like block (projections, masked cross-attention, output projection) compiles as one
    graph with the Triton op inside, and gives the eager result."""
    _skip_unless("masked_attention", "triton")
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")  # traces fake + autograd; no C++ compile
    proj = torch.nn.Linear(16, 48).to(DEV)

    def block(x, ctx, allowed):
        q = proj(x)[..., :16].unflatten(-1, (2, 8)).transpose(1, 2)
        kv = proj(ctx)[..., 16:].unflatten(-1, (2, 2, 8))
        k, v = kv[..., 0, :].transpose(1, 2), kv[..., 1, :].transpose(1, 2)
        return vk.masked_attention(q, k, v, allowed, backend="triton").transpose(1, 2).flatten(2)

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=counter)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 5, 16, generator=g).to(DEV).requires_grad_(True)
        ctx = torch.randn(2, 23, 16, generator=g).to(DEV)
        allowed = (torch.rand(2, 5, 23, generator=g) < 0.4).to(DEV)
        out = compiled(x, ctx, allowed)
        out.sum().backward()
        parity.assert_close("compiled", out, block(x.detach(), ctx, allowed), 1e-5)
    assert counter.frame_count == 1


# ----------------------------------------------------------------------------- CUDA (emulated here)
def _low(case: parity.MaskedCase, i: int) -> parity.MaskedCase:
    """The CUDA kernel declines fp32 (Triton serves it): run such cases in fp16 / bf16."""
    return case if case.dtype in LOW else dataclasses.replace(case, dtype=LOW[i % 2])


# The CI sweep in fp16/bf16, plus what it does not reach: the wide-head tiles (192, 256, 320: dq
# with 32- and 16-key tiles, dk and dv in two passes), 4 warp columns (Lq <= 16), one warp column
# with several query blocks (Lq 70), TAR-like 17 x 5*7*9 at ViT-S's head dim 96, head dim 120 (the
# padded-128 class, whose dq kernel had spilled).
EMULATED = [_low(c, i) for i, c in enumerate(parity.masked_sweep("ci"))] + [
    parity.MaskedCase(B=1, H=1, Lq=17, Lk=150, D=192, mask="blobs", dtype=torch.float16),
    parity.MaskedCase(B=1, H=1, Lq=40, Lk=100, D=256, mask="random", form="packed", dtype=torch.bfloat16),
    parity.MaskedCase(B=1, H=1, Lq=17, Lk=90, D=320, mask="blobs", form="bool3", dtype=torch.float16),
    parity.MaskedCase(B=1, H=2, Lq=9, Lk=150, D=64, mask="random", form="mha", dtype=torch.float16),
    parity.MaskedCase(B=1, H=1, Lq=70, Lk=200, D=32, mask="random", dtype=torch.bfloat16),
    parity.MaskedCase(B=1, H=1, Lq=17, Lk=5 * 7 * 9, D=96, mask="blobs", form="packed", dtype=torch.bfloat16),
    parity.MaskedCase(B=1, H=1, Lq=24, Lk=96, D=120, mask="random", dtype=torch.bfloat16),  # the 128-class tiles
]
needs_emulator = pytest.mark.skipif(cuda_emulator.skip_reason() is not None,
                                    reason=f"CUDA emulator unavailable: {cuda_emulator.skip_reason()}")


@pytest.fixture
def emu():
    with cuda_emulator.emulated() as mod:
        yield mod


@needs_emulator
@pytest.mark.parametrize("case", EMULATED, ids=str)
def test_cuda_emulated(emu, case):
    before = cuda_emulator.launch_count()
    parity.check_masked_attention("cuda", case, CPU)
    assert cuda_emulator.launch_count() >= before + 4  # forward, delta, dq, dk/dv all ran emulated


def _run(case, dev, backend="cuda"):
    q, k, v, key_mask, _, grad = parity.masked_inputs(case, dev)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = vk.masked_attention(*leaves, key_mask, backend=backend)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad)]


# Thread orders and cp.async timings under which a race-free kernel gives the same bits (see
# tests/cuda_emulator/README.md): a barrier missing between warps changes them.
SCHEDULES = [("reverse", "late"), ("serial", "early"), ("serial-reverse", "late"), ("serial-reverse", "early")]


@needs_emulator
@pytest.mark.parametrize("case", [
    parity.MaskedCase(B=1, H=1, Lq=17, Lk=150, D=32, mask="blobs", dtype=torch.bfloat16),  # 2 warp columns
    parity.MaskedCase(B=1, H=1, Lq=20, Lk=70, D=192, mask="random", dtype=torch.float16),  # wide, 2 passes
], ids=str)
def test_cuda_emulated_schedule_independent(emu, monkeypatch, case):
    first = _run(case, CPU)
    for schedule, copies in SCHEDULES:
        monkeypatch.setenv("VPEMU_SCHEDULE", schedule)
        monkeypatch.setenv("VPEMU_CP_ASYNC", copies)
        for i, (a, b) in enumerate(zip(first, _run(case, CPU))):
            assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), \
                f"result {i} changes with the thread order ({schedule}, cp.async {copies})"


@needs_emulator
def test_cuda_emulated_strided_misaligned_and_odd_head_dim(emu):
    """Rows not 16-byte aligned and a strided head dim are copied, a (B, L, H, D) layout is read in
    place, a head dim of 20 is zero-padded to 24, a strided output gradient is read as it is."""
    B, H, Lq, Lk = 2, 2, 17, 40
    for D in (24, 20):
        base = torch.randn(B * H * Lq * D + 1, dtype=torch.float16)
        q = base[1:].view(B, H, Lq, D)
        k = torch.randn(B, H, D, Lk, dtype=torch.float16).transpose(2, 3)
        v = torch.randn(B, Lk, H, D, dtype=torch.float16).transpose(1, 2)
        allowed = torch.rand(B, Lq, Lk) < 0.4
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        ref_leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
        out = vk.masked_attention(*leaves, allowed, backend="cuda")
        ref = vk.masked_attention(*ref_leaves, allowed, backend="reference")
        parity.assert_close(f"D{D} out", out, ref, parity.TOL[torch.float16]["fwd"])
        grad = torch.randn(B, Lq, H, D, dtype=torch.float16).transpose(1, 2)
        out.backward(grad)
        ref.backward(grad.double())
        for name, a, e in zip(("dq", "dk", "dv"), leaves, ref_leaves):
            parity.assert_close(f"D{D} {name}", a.grad, e.grad, parity.TOL[torch.float16]["bwd"])


@needs_emulator
def test_cuda_opcheck_emulated():
    from vitpose_kernels.cuda_backend import masked_attention as cma

    case = parity.MaskedCase(B=1, H=2, Lq=5, Lk=37, D=16, mask="random", form="packed", dtype=torch.bfloat16)
    q, k, v, key_mask, _, _ = parity.masked_inputs(case, CPU)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    with cuda_emulator.emulated(guard_outputs=False):
        torch.library.opcheck(cma.masked_attention_op, (*leaves, key_mask[:, None], 0.4),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@needs_emulator
def test_cuda_reasons(emu):
    """What the kernel declines, each with its reason (and Triton or the reference serves it)."""
    q = torch.zeros(1, 1, 4, 16, dtype=torch.float16)
    assert vk.explain("masked_attention", q, q, q)["cuda"] == []
    assert any("triton" in r for r in vk.explain("masked_attention", q.float(), q.float(), q.float())["cuda"])
    wide = torch.zeros(1, 1, 4, 328, dtype=torch.float16)
    assert any("head dim" in r for r in vk.explain("masked_attention", wide, wide, wide)["cuda"])
    long = torch.zeros(1, 1, 1, 16, dtype=torch.float16).expand(1, 1, (1 << 17) + 1, 16)
    assert any("Lk=131073" in r for r in vk.explain("masked_attention", q, long, long)["cuda"])


def _junk_past_lk_case(backend, dev, dtype):
    """A packed mask whose last word has bits set past Lk = 70 (keys 70..95 do not exist): every
    backend must ignore them, exactly as the reference does."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g).to(dev, dtype) for n in (9, 70, 70))
    words = vk.pack_key_mask((torch.rand(1, 9, 70, generator=g) < 0.4).to(dev))
    junk = words.clone()
    junk[..., -1] |= -64  # bits 6..31 of word 2: keys 70..95
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    out = vk.masked_attention(*leaves, junk, backend=backend)
    ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref = vk.masked_attention(*ref_in, words, backend="reference")
    tol = parity.TOL[dtype]
    parity.assert_close("out", out, ref, tol["fwd"])
    grad = torch.randn(out.shape, generator=g).to(dev, dtype)
    out.backward(grad)
    ref.backward(grad.double())
    for name, a, e in zip(("dq", "dk", "dv"), leaves, ref_in):
        parity.assert_close(name, a.grad, e.grad, tol["bwd"])


def test_triton_ignores_mask_bits_past_lk():
    _skip_unless("masked_attention", "triton")
    _junk_past_lk_case("triton", DEV, torch.float32)


@needs_emulator
def test_cuda_emulated_ignores_mask_bits_past_lk(emu):
    _junk_past_lk_case("cuda", CPU, torch.bfloat16)


def test_cuda_refused_with_reasons_outside_the_emulator():
    q = torch.randn(1, 1, 4, 16, dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="cuda"):
        vk.masked_attention(q, q, q, backend="cuda")


# ----------------------------------------------------------------------------- GPU only (owed here)
_require = _skip_unless


@gpu
@pytest.mark.parametrize("case", [_low(c, i) for i, c in enumerate(parity.masked_sweep("gpu"))], ids=str)
def test_cuda_parity_gpu(case):
    _require("masked_attention", "cuda")
    parity.check_masked_attention("cuda", case)


@gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_tar_vitpose_b_shapes_gpu(backend):
    """The official TAR-ViTPose-B call shapes (4 heads of 192; 288x384 input, 24x18 tokens a frame,
    5 frames): JTA with heatmap masks, GRA without; bit-identical reruns."""
    _require("masked_attention", backend)
    g = torch.Generator().manual_seed(0)
    B, H, J, T, D = 8, 4, 17, 5, 192
    hm = parity.realistic_heatmaps(B * T, J, 96, 72, seed=1).view(B, T, J, 96, 72).cuda()
    words = vk.heatmap_key_mask(hm, (24, 18))
    for lq, lk, mask in ((J, T * 432, words), (432, J, None)):
        q, k, v = (torch.randn(B, H, n, D, generator=g).cuda().bfloat16() for n in (lq, lk, lk))
        leaves = [t.requires_grad_(True) for t in (q, k, v)]
        with _alloc.poisoned():
            out = vk.masked_attention(*leaves, mask, backend=backend)
        ref = vk.masked_attention(*[t.detach().double() for t in leaves], mask, backend="reference")
        parity.assert_close(f"{backend} {lq}x{lk}", out, ref, parity.TOL[torch.bfloat16]["fwd"])
        grad = torch.randn_like(out)
        first = [out.detach(), *torch.autograd.grad(out, leaves, grad)]
        again = vk.masked_attention(*leaves, mask, backend=backend)
        for a, b in zip(first, [again.detach(), *torch.autograd.grad(again, leaves, grad)]):
            assert torch.equal(a, b)


def small_sweep():
    """A few forward + backward launches covering every code path (run under compute-sanitizer)."""
    for case in EMULATED[:3] + EMULATED[-6:]:
        _run(dataclasses.replace(case, B=1), torch.device("cuda"))
    torch.cuda.synchronize()


@gpu
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_sanitizer_small_sweep(tool):
    _require("masked_attention", "cuda")
    sanitizer.run_sweep(tool, "test_masked_attention", extra=["--racecheck-report", "hazard"] if tool == "racecheck" else [])


# ----------------------------------------------------------------------------- bad input
def _qkv(B=2, H=3, Lq=5, Lk=9, D=8):
    return torch.randn(B, H, Lq, D), torch.randn(B, H, Lk, D), torch.randn(B, H, Lk, D)


@pytest.mark.parametrize("mask,exc,match", [
    (torch.zeros(2, 5, 9), TypeError, r"key_mask must be a bool tensor .*pass ~attn_mask.*key_mask.dtype=torch.float32"),
    ([[True]], TypeError, "got list"),
    (torch.zeros(2, 5, 8, dtype=torch.bool), ValueError, r"key_mask.shape\[-1\] must be Lk = 9"),
    (torch.zeros(2, 5, 2, dtype=torch.int32), ValueError, r"ceil\(Lk/32\) = 1 words"),
    (torch.zeros(4, 5, 9, dtype=torch.bool), ValueError, r"first dim must be 1, B=2 or B\*H=6"),
    (torch.zeros(2, 2, 5, 9, dtype=torch.bool), ValueError, r"its H dim is 2"),
    (torch.zeros(2, 3, 4, 9, dtype=torch.bool), ValueError, r"its Lq dim is 4"),
    (torch.zeros(9, dtype=torch.bool), ValueError, "2-, 3- or 4-D"),
    (torch.zeros(1, 2, 3, 5, 9, dtype=torch.bool), ValueError, "2-, 3- or 4-D"),
])
def test_bad_masks(mask, exc, match):
    with pytest.raises(exc, match=match):
        vk.masked_attention(*_qkv(), mask)


def test_bad_tensors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, H, L, D\), got q.shape=\(3, 5, 8\)"):
        vk.masked_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"k and v must have the same shape"):
        vk.masked_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match=r"k must be \(B, H, Lk, D\) = \(2, 3, Lk, 8\)"):
        vk.masked_attention(q, k[..., :4], v[..., :4])
    with pytest.raises(ValueError, match=r"k must be \(B, H, Lk, D\)"):
        vk.masked_attention(q, k[:1], v[:1])
    with pytest.raises(TypeError, match="share a dtype"):
        vk.masked_attention(q, k.half(), v)
    with pytest.raises(TypeError, match="floating dtype"):
        vk.masked_attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="empty input"):
        vk.masked_attention(q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(TypeError, match="scale must be a float"):
        vk.masked_attention(q, k, v, scale="0.1")
    with pytest.raises(ValueError, match="backend must be one of"):
        vk.masked_attention(q, k, v, backend="tpu")
    with pytest.raises(NotImplementedError, match="float64"):
        vk.masked_attention(q.double(), k.double(), v.double(), backend="triton")


def test_explain_names_every_backend():
    q, k, v = _qkv()
    why = vk.explain("masked_attention", q, k, v, torch.ones(2, 5, 9, dtype=torch.bool))
    assert {"reference", "triton", "cuda"} <= set(why) and why["reference"] == []
    assert "masked_attention" in vk.backends() and "heatmap_key_mask" in vk.backends()


# ----------------------------------------------------------------------------- heatmap_key_mask
def official_generate_attn_mask(heatmap, num_frames, num_heads, output_size, threshold):
    """TAR_ViTPose.generate_attn_mask as the official code writes it (True = masked), then the
    view its forward applies; written here independently of the library."""
    BT, J, _, _ = heatmap.shape
    mn, mx = heatmap.amin(dim=(2, 3), keepdim=True), heatmap.amax(dim=(2, 3), keepdim=True)
    heatmap = (heatmap - mn) / (mx - mn + 1e-6)
    down = F.interpolate(heatmap, size=output_size, mode="bilinear", align_corners=False)
    mask = (down < threshold).bool().view(BT // num_frames, num_frames, J, *output_size)
    attn_mask = mask.flatten(3).unsqueeze(1).repeat(1, num_heads, 1, 1, 1).flatten(0, 1)
    return attn_mask.view(-1, J, num_frames, output_size[0] * output_size[1]).flatten(2)


def _clip_heatmaps(B=2, T=5, J=17, size=(24, 20), seed=0, dtype=torch.float32):
    maps = parity.realistic_heatmaps(B * T, J, *size, seed=seed, border=True)
    maps[0, 3] = 0.25  # a constant map: normalised to 0 everywhere, so fully masked
    return maps.view(B, T, J, *size).to(dtype)


def test_heatmap_key_mask_reference_is_the_official_mask():
    hm = _clip_heatmaps()
    B, T, J = hm.shape[:3]
    official = official_generate_attn_mask(hm.flatten(0, 1), T, 4, (6, 5), 0.2)  # (B*4, J, T*30)
    ours = vk.heatmap_key_mask(hm, (6, 5), backend="reference", packed=False)
    assert ours.shape == (B, 1, J, T * 30)
    assert torch.equal(ours.expand(B, 4, J, T * 30).flatten(0, 1), ~official)
    assert torch.equal(vk.heatmap_key_mask(hm, (6, 5), backend="reference"), vk.pack_key_mask(ours))
    paper = vk.heatmap_key_mask(hm, (6, 5), backend="reference", layout="paper", packed=False)
    per_map = ~(heatmap_mask_values(hm, (6, 5)) < 0.2)  # (B, T, J, 6, 5)
    assert torch.equal(paper[:, 0].unflatten(-1, (T, 30)), per_map.flatten(3).transpose(1, 2))
    assert not torch.equal(paper, ours)  # the official view really does regroup the masks


def _near_threshold(hm, grid, layout, eps):
    """Keys whose reference value lies within eps of the threshold (a 1-ulp rounding may flip them)."""
    B, T, J = hm.shape[:3]
    near = ((heatmap_mask_values(hm.float(), grid) - 0.2).abs() <= eps).flatten(3)
    return (near.reshape(B, J, T, -1) if layout == "official" else near.transpose(1, 2)).reshape(B, 1, J, -1)


@pytest.mark.parametrize("dtype,size,grid,layout", [
    (torch.float32, (24, 20), (6, 5), "official"),   # the official 4x ratio
    (torch.float16, (17, 13), (5, 4), "paper"),      # odd ratios: every tap weight in play
])
def test_heatmap_key_mask_triton(dtype, size, grid, layout):
    _skip_unless("heatmap_key_mask", "triton")
    hm = _clip_heatmaps(B=1, T=3, J=7, size=size, dtype=dtype).to(DEV)  # one program per mask row
    ref = vk.heatmap_key_mask(hm, grid, layout=layout, packed=False, backend="reference")
    got = vk.heatmap_key_mask(hm, grid, layout=layout, packed=False, backend="triton")
    assert got.dtype == torch.bool and got.shape == ref.shape
    near = _near_threshold(hm.cpu(), grid, layout, 1e-5 if dtype == torch.float32 else 2e-3)
    diff = (got.cpu() != ref.cpu())
    assert not bool((diff & ~near).any()), f"{int((diff & ~near).sum())} keys differ away from the threshold"
    words = vk.heatmap_key_mask(hm, grid, layout=layout, backend="triton")
    assert torch.equal(unpack_key_mask(words.cpu(), ref.shape[-1]), got.cpu())


def test_heatmap_key_mask_bad_input():
    hm = torch.rand(2, 5, 17, 8, 6)
    with pytest.raises(ValueError, match=r"heatmaps must be 5-D \(B, T, J, Hh, Wh\)"):
        vk.heatmap_key_mask(hm.flatten(0, 1), (2, 2))
    with pytest.raises(ValueError, match="layout must be 'official' or 'paper'"):
        vk.heatmap_key_mask(hm, (2, 2), layout="joint")
    with pytest.raises(ValueError, match="grid must be >= 1"):
        vk.heatmap_key_mask(hm, (0, 2))
    with pytest.raises(TypeError, match="threshold must be a number"):
        vk.heatmap_key_mask(hm, (2, 2), threshold=None)


# ----------------------------------------------------------------------------- compiled (no GPU)
_COMPILE_SCRIPT = r'''
from vitpose_kernels.triton_backend import heatmap_key_mask as hk, masked_attention as ma

f32 = "*fp32"
for dt, prec, D, DP, BM, BN, warps, mask in (("bf16", "tf32", 80, 128, 32, 64, 4, True),
                                             ("fp32", "ieee", 24, 32, 16, 32, 4, False)):
    P = "*" + dt
    qkv = {"Q": P, "K": P, "V": P, "M": "*i32"}
    consts = {"D": D, "D_PAD": DP, "PREC": prec, "BLOCK_M": BM, "BLOCK_N": BN, "HAS_MASK": mask}
    build(ma._fwd_kernel, {**qkv, "O": P, "LSE": f32}, consts, num_warps=warps)
    bwd = {**qkv, "DO": P, "LSE": f32, "DELTA": f32}
    build(ma._bwd_dq_kernel, {**bwd, "DQ": P}, consts, num_warps=warps)
    build(ma._bwd_dkv_kernel, {**bwd, "DK": P, "DV": P}, consts, num_warps=warps)
floats = {"scale_y": "fp32", "scale_x": "fp32", "threshold": "fp32", "eps": "fp32"}
for packed, out in ((True, "*i32"), (False, "*i8")):
    build(hk._heatmap_key_mask_kernel, {"HM": "*bf16", "OUT": out, **floats},
          {"OFFICIAL": packed, "PACKED": packed, "T_PAD": 8, "MAP_BLOCK": 1024, "KEY_BLOCK": 512})
'''


@pytest.mark.skipif(ON_GPU, reason="the GPU tests compile and run the kernels")
def test_triton_kernels_compile_for_sm90():
    """The interpreter misses codegen errors (tests/triton_compile.py): every masked_attention and
    heatmap_key_mask kernel, with and without a mask, bf16 and fp32, compiles to sm_90."""
    import triton_compile

    triton_compile.compile_for_sm90(_COMPILE_SCRIPT, expected=8)


# ----------------------------------------------------------------------------- executed work (cost model)
@pytest.mark.skipif(ON_GPU or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the cost model counts in the Triton interpreter (CPU machines)")
def test_triton_reads_only_what_the_mask_needs():
    """benchmarks/cost_model.py's count of the Triton forward at the brief's TAR-ViTPose-B JTA shape
    (17 joints over 5 frames of 16x12 tokens, 12 heads of 64, a heatmap mask: 3% of the pairs, a
    third of the keys seen by any joint): bytes within 15% of the floor (q, out, the mask and only
    the k, v rows some joint needs: 1.06x measured), and fewer FLOPs than its 16-row blocks over
    every key (the tiles no row of a block sees are skipped: 0.73x measured)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import cost_model

    case = next(c for c in cost_model.masked_cases() if c.name == "tar-b-jta-16x12-12x64")
    e = cost_model.measure(case, cost_model.BACKENDS["triton"], "fwd", 1, 1, jobs=1, machine_code=False)
    g = case.geom
    dense = 4 * g.D * 16 * -(-g.lq // 16) * g.lk * g.B * g.H
    assert e["bytes"] <= 1.15 * e["floor_bytes"], e["kernels"]
    assert e["executed_flops"] <= 0.8 * dense, (e["executed_flops"], dense)
