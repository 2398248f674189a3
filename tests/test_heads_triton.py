"""Triton-specific tests of simple_decoder, decode_heatmaps and udp_targets (the shared parity
sweep is in test_parity.py): custom-op registration (opcheck), decoder gradients with the GPU
tiling, empty batches, flip with COCO flip indices, the exact blur shortcut, bit-identical reruns,
support predicates. Small shapes: these run through the CPU interpreter when there is no GPU.
"""
import pytest
import torch

import parity
import triton_compile
import vitpose_kernels as vk
from vitpose_kernels import _alloc, dispatch

pytestmark = pytest.mark.skipif(parity.skip_reason("simple_decoder", "triton") is not None,
                                reason=f"triton unavailable: {parity.skip_reason('simple_decoder', 'triton')}")

DEV = parity.device()
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (full-size shapes)")


def _mods():
    from vitpose_kernels.triton_backend import decode_heatmaps, simple_decoder, udp_targets
    return simple_decoder, decode_heatmaps, udp_targets


def _decoder_inputs(B=1, C=3, h=3, w=2, K=2, k=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, h, w, generator=g).to(DEV, dtype)
    wt = (torch.randn(K, C, k, k, generator=g) / C ** 0.5).to(DEV, dtype)
    b = torch.randn(K, generator=g).to(DEV, dtype)
    return x, wt, b


# ----------------------------------------------------------------------------- custom ops
def test_opcheck_simple_decoder():
    sd, _, _ = _mods()
    x, wt, b = _decoder_inputs()
    torch.library.opcheck(sd.simple_decoder_op, (x.requires_grad_(), wt.requires_grad_(), b, 2))
    torch.library.opcheck(sd.simple_decoder_op, (x, wt, None, 1))
    grad = torch.randn(1, 2, 6, 4, device=DEV)
    torch.library.opcheck(sd.simple_decoder_backward_op, (grad, x.detach(), wt.detach(), 2))


def test_opcheck_decode_and_targets():
    _, dh, ut = _mods()
    hm = parity.realistic_heatmaps(2, 3, 6, 5).to(DEV)
    fl = parity.realistic_heatmaps(2, 3, 6, 5, seed=1).to(DEV)
    fidx = torch.tensor([0, 2, 1], device=DEV)
    boxes = torch.rand(2, 2, device=DEV) * 100
    torch.library.opcheck(dh.decode_heatmaps_op, (hm, fl, fidx, [20, 24], boxes, boxes + 50, "udp", 11))
    torch.library.opcheck(dh.decode_heatmaps_op, (hm, None, None, [20, 24], None, None, "argmax", 11))
    kp = torch.rand(2, 3, 2, device=DEV) * 40
    torch.library.opcheck(ut.udp_targets_op, (kp, torch.ones(2, 3, device=DEV), [6, 8], [24, 32], 2.0))


# ----------------------------------------------------------------------------- simple_decoder
@pytest.mark.parametrize("k,scale,hw", [(3, 4, (7, 5)), (3, 3, (5, 9)), (1, 2, (4, 3))])
def test_decoder_grads_gpu_tiling(monkeypatch, k, scale, hw):
    """One channel per program and several tiles per map (as on the GPU), odd sizes, against the
    float64 reference: forward and all three gradients."""
    sd, _, _ = _mods()
    monkeypatch.setattr(sd, "_WIDE_BLOCKS", False)
    x, wt, b = _decoder_inputs(B=2, C=5, h=hw[0], w=hw[1], K=2, k=k, seed=3)
    xs = [t.clone().requires_grad_() for t in (x, wt, b)]
    with _alloc.poisoned():
        out = vk.simple_decoder(*xs, scale_factor=scale, backend="triton")
    refs = [t.double().requires_grad_() for t in (x, wt, b)]
    ref = vk.simple_decoder(*refs, scale_factor=scale, backend="reference")
    parity.assert_close("out", out, ref, 1e-5)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEV)
    with _alloc.poisoned():
        out.backward(grad)
    ref.backward(grad.double())
    for name, a, e in zip(("dx", "dweight", "dbias"), xs, refs):
        parity.assert_close(name, a.grad, e.grad, 1e-5)


def test_decoder_strided_inputs():
    """channels_last x and a non-contiguous grad give the same values as contiguous ones."""
    x, wt, b = _decoder_inputs(B=2, C=4, h=3, w=4, K=3)
    xc = x.to(memory_format=torch.channels_last).requires_grad_()
    out = vk.simple_decoder(xc, wt, b, scale_factor=2, backend="triton")
    ref = vk.simple_decoder(x.double(), wt.double(), b.double(), scale_factor=2, backend="reference")
    parity.assert_close("out", out, ref, 1e-5)
    grad = torch.randn(2, 3, 8, 6, device=DEV).transpose(2, 3)  # (2, 3, 6, 8), not contiguous
    (dx,) = torch.autograd.grad(out, xc, grad)
    xr = x.double().requires_grad_()
    (rdx,) = torch.autograd.grad(vk.simple_decoder(xr, wt.double(), b.double(), scale_factor=2,
                                                   backend="reference"), xr, grad.double())
    parity.assert_close("dx", dx, rdx, 1e-5)


def test_decoder_bit_identical_reruns():
    x, wt, b = _decoder_inputs(B=2, C=4, h=3, w=3, K=3)
    runs = []
    for _ in range(2):
        xs = [t.clone().requires_grad_() for t in (x, wt, b)]
        out = vk.simple_decoder(*xs, scale_factor=2, backend="triton")
        out.backward(torch.ones_like(out))
        runs.append([out] + [t.grad for t in xs])
    for a, e in zip(*runs):
        assert torch.equal(a, e)


def test_decoder_reasons(monkeypatch):
    x, wt, b = _decoder_inputs()
    with pytest.raises(NotImplementedError, match="float64"):
        vk.simple_decoder(x.double(), wt.double(), b.double(), backend="triton")
    with pytest.raises(NotImplementedError, match="share a dtype"):
        vk.simple_decoder(x, wt.half(), b, backend="triton")
    if DEV.type == "cpu":
        sd, _, _ = _mods()
        assert sd.reasons(x, wt, b, 4) == []
        monkeypatch.setattr(dispatch, "interpreting", lambda: False)
        assert any("TRITON_INTERPRET" in r for r in sd.reasons(x, wt, b, 4))


# ----------------------------------------------------------------------------- decode_heatmaps
def test_decode_empty_batch():
    hm = torch.zeros(0, 17, 8, 6, device=DEV)
    kw = dict(flip_heatmaps=hm.clone(), flip_indices=parity.COCO_FLIP_INDICES,
              bbox_centers=torch.zeros(0, 2, device=DEV), bbox_scales=torch.ones(0, 2, device=DEV))
    kp, sc = vk.decode_heatmaps(hm, backend="triton", **kw)
    assert kp.shape == (0, 17, 2) and sc.shape == (0, 17)
    assert kp.dtype == sc.dtype == torch.float32


def test_decode_flip_coco_indices():
    """Against the reference, and semantically: a flipped map that is the exact mirror (with
    left/right channels swapped) of the map leaves the decoded result unchanged."""
    hm = parity.realistic_heatmaps(1, 17, 12, 9, seed=4, border=True).to(DEV)
    fidx = torch.tensor(parity.COCO_FLIP_INDICES, device=DEV)
    mirror = hm.index_select(1, fidx).flip(-1)  # flip_back is an involution with these indices
    kp, sc = vk.decode_heatmaps(hm, flip_heatmaps=mirror, flip_indices=fidx, backend="triton")
    kp0, sc0 = vk.decode_heatmaps(hm, backend="triton")
    torch.testing.assert_close(sc, sc0, rtol=0, atol=0)
    torch.testing.assert_close(kp, kp0, rtol=0, atol=1e-4)
    fl = parity.realistic_heatmaps(1, 17, 12, 9, seed=5).to(DEV)
    kp, sc = vk.decode_heatmaps(hm, flip_heatmaps=fl, flip_indices=fidx, backend="triton")
    rkp, rsc = vk.decode_heatmaps(hm, flip_heatmaps=fl, flip_indices=fidx, backend="reference")
    torch.testing.assert_close(sc, rsc, rtol=0, atol=0)
    assert float((kp - rkp).abs().max()) <= 1e-3


def test_decode_shortcut_equals_full_blur():
    """The 3x3-only blur (taken when the clip cannot bite) against always blurring the whole map,
    on strong maps (shortcut) and weak ones (the full blur decides the clip), and the reference."""
    _, dh, _ = _mods()
    strong = parity.realistic_heatmaps(2, 5, 16, 12, seed=6, border=True)
    weak = 0.003 * parity.realistic_heatmaps(2, 5, 16, 12, seed=7, noise=0.05)
    for hm in (strong.to(DEV), weak.to(DEV)):
        args = (hm, None, None, (48, 64), None, None, "udp", 11)
        fast, _ = dh._decode(*args)
        full, _ = dh._decode(*args, always_full_blur=True)
        ref, _ = vk.decode_heatmaps(hm, input_size=(48, 64), backend="reference")
        assert float((fast - full).abs().max()) <= 1e-4
        assert float((fast - ref).abs().max()) <= 1e-3


def test_decode_strided_and_small_blur():
    hm = parity.realistic_heatmaps(2, 3, 9, 7, seed=8).to(DEV)
    strided = hm.transpose(2, 3).contiguous().transpose(2, 3)
    for size in (3, 5, 11):
        kp, sc = vk.decode_heatmaps(strided, blur_kernel_size=size, backend="triton")
        rkp, rsc = vk.decode_heatmaps(hm, blur_kernel_size=size, backend="reference")
        torch.testing.assert_close(sc, rsc, rtol=0, atol=0)
        assert float((kp - rkp).abs().max()) <= 1e-3


def test_decode_first_index_on_ties():
    hm = torch.zeros(1, 2, 6, 5, device=DEV)
    hm[0, 0, 2, 3] = hm[0, 0, 4, 1] = 1.0  # same max twice: the first in row-major order wins
    hm[0, 1] = 0.5  # constant map: index 0
    kp, _ = vk.decode_heatmaps(hm, input_size=(4, 5), method="argmax", backend="triton")
    assert kp.tolist() == [[[3.0, 2.0], [0.0, 0.0]]]


def test_decode_bit_identical_reruns():
    hm = parity.realistic_heatmaps(2, 4, 8, 6, seed=9).to(DEV)
    a = vk.decode_heatmaps(hm, backend="triton")
    b = vk.decode_heatmaps(hm, backend="triton")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- udp_targets
def test_targets_empty_batch():
    hm, w = vk.udp_targets(torch.zeros(0, 17, 2, device=DEV), torch.zeros(0, 17, device=DEV),
                           backend="triton")
    assert hm.shape == (0, 17, 64, 48) and w.shape == (0, 17)


def test_targets_edges_and_visibility():
    """Keypoints at the corners, just off the map, far off; bool and fractional visibility."""
    kp = torch.tensor([[[0.0, 0.0], [47.0, 63.0], [-7.0, 10.0], [-5.0, 10.0], [300.0, -200.0],
                        [20.3, 31.7]]], device=DEV)
    for vis in (torch.tensor([[True, True, True, True, True, False]], device=DEV),
                torch.tensor([[1.0, 0.7, 0.4, 1.0, 1.0, 2.0]], device=DEV)):
        with _alloc.poisoned():
            hm, w = vk.udp_targets(kp, vis, heatmap_size=(12, 16), input_size=(48, 64), backend="triton")
        rhm, rw = vk.udp_targets(kp, vis, heatmap_size=(12, 16), input_size=(48, 64), backend="reference")
        torch.testing.assert_close(w, rw, rtol=0, atol=0)
        parity.assert_close("heatmaps", hm, rhm, 1e-6)


def test_targets_bit_identical_reruns():
    kp = torch.rand(2, 5, 2, device=DEV) * 50
    vis = torch.ones(2, 5, device=DEV)
    a = vk.udp_targets(kp, vis, heatmap_size=(12, 16), input_size=(48, 64), backend="triton")
    b = vk.udp_targets(kp, vis, heatmap_size=(12, 16), input_size=(48, 64), backend="triton")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- GPU, full size
@GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_decoder_vitpose_b(dtype):
    parity.check_simple_decoder("triton", parity.DecoderCase(B=8, C=768, hw=(16, 12), K=17, dtype=dtype))


@GPU
@pytest.mark.gpu
@pytest.mark.parametrize("size", [(64, 48), (96, 72), (128, 96)])
def test_gpu_decode_1024_instances_flip(size):
    parity.check_decode_heatmaps("triton", parity.HeatmapCase(B=1024, K=17, size=size, flip=True,
                                                              boxes=True, border=True))


# ----------------------------------------------------------------------------- compiled (no GPU)
_COMPILE_SCRIPT = r'''
from vitpose_kernels.triton_backend import decode_heatmaps as dh, simple_decoder as sd, udp_targets as ut

bf = "*bf16"
build(sd._upsample_taps_fwd, {"y_ptr": bf, "bias_ptr": bf, "out_ptr": bf},
      {"KS": 3, "HAS_BIAS": True, "BLOCK_K": 1, "BLOCK_H": 8, "BLOCK_W": 64})
build(sd._upsample_taps_bwd, {"g_ptr": bf, "dy_ptr": bf},
      {"KS": 3, "TWO_S": 8, "BLOCK_K": 1, "BLOCK_H": 16, "BLOCK_W": 16})
f32 = "*fp32"
for method in (1, 2):  # "udp", "dark"
    build(dh._decode_kernel, {"hm_ptr": bf, "fl_ptr": bf, "fidx_ptr": "*i64", "g_ptr": f32, "ctr_ptr": f32,
                              "scl_ptr": f32, "kp_ptr": f32, "score_ptr": f32},
          {"FLIP": True, "METHOD": method, "HAS_BOX": True, "KS": 11, "BK": 16, "BH": 64, "BW": 64, "CH": 16,
           "CI": 32}, num_stages=1)
build(ut._udp_kernel, {"kp_ptr": f32, "vis_ptr": f32, "hm_ptr": f32, "w_ptr": f32}, {"BLOCK_H": 64, "BLOCK_W": 64})
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests compile and run the kernels")
def test_kernels_compile_for_sm90():
    """Every kernel compiles to a sm_90 cubin (tests/triton_compile.py says why)."""
    triton_compile.compile_for_sm90(_COMPILE_SCRIPT, expected=5)
