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

import pytest
import torch
import torch.nn.functional as F

import cuda_emulator
import parity
import vitpose_kernels as vk
from vitpose_kernels.reference.heatmap_key_mask import heatmap_mask_values
from vitpose_kernels.reference.masked_attention import unpack_key_mask

DEV = parity.device()
ON_GPU = torch.cuda.is_available()
LOW = (torch.float16, torch.bfloat16)


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
    probs = torch.softmax((q @ k.transpose(-1, -2) * (C // heads) ** -0.5).masked_fill(excluded[:, None], -torch.inf), -1)
    assert float(probs.max(-1).values.mean()) > 0.5, "attention too uniform to test anything"


def test_rows_without_keys_are_zero_where_multihead_attention_gives_nan():
    q, k = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 6, 8)
    allowed = torch.ones(1, 3, 6, dtype=torch.bool)
    allowed[0, 1] = False
    out = vk.masked_attention(q, k, k, allowed)
    mha_math = torch.softmax((q @ k.transpose(-1, -2)).masked_fill(~allowed[:, None], -torch.inf), -1)
    assert torch.isnan(mha_math[0, 0, 1]).all() and bool((out[0, 0, 1] == 0).all())


def test_reference_gradcheck_float64():
    case = parity.MaskedCase(B=1, H=2, Lq=5, Lk=11, D=3, mask="random", form="bool3", dtype=torch.float64, seed=3)
    q, k, v, key_mask, _, _ = parity.masked_inputs(case, torch.device("cpu"))
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *t: vk.masked_attention(*t, key_mask, scale=0.7), leaves)
    assert torch.autograd.gradcheck(lambda *t: vk.masked_attention(*t), leaves)


def test_mask_forms_agree():
    base = parity.MaskedCase(B=2, H=3, Lq=6, Lk=40, D=4, mask="random", form="bool4", dtype=torch.float64)
    q, k, v, m4, full, _ = parity.masked_inputs(base, torch.device("cpu"))
    expected = vk.masked_attention(q, k, v, m4)
    for mask in (m4[:, 0], vk.pack_key_mask(m4), vk.pack_key_mask(m4[:, 0]), full, full.flatten(0, 1)):
        assert torch.equal(vk.masked_attention(q, k, v, mask), expected)


# ----------------------------------------------------------------------------- kernels vs reference
@pytest.mark.parametrize("case", parity.masked_sweep("ci"), ids=str)
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
    torch.library.opcheck(tma.masked_attention_op, (*leaves, None, 0.4))


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
    assert set(why) == {"reference", "triton", "cuda"} and why["reference"] == []
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
    (torch.float32, (17, 13), (5, 4), "paper"),      # odd ratios: every tap weight in play
    (torch.float16, (16, 12), (4, 3), "official"),
])
def test_heatmap_key_mask_triton(dtype, size, grid, layout):
    _skip_unless("heatmap_key_mask", "triton")
    hm = _clip_heatmaps(size=size, dtype=dtype).to(DEV)
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
