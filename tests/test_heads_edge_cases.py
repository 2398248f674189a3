"""Edge cases of the heads' ops where every backend must agree with each other and with mmpose
(or differ by a documented decision, tested here on every backend): non-finite and off-map
keypoints, mmpose's visibility semantics, all-zero heatmaps. Each test runs on the reference,
the Triton kernels (GPU or CPU interpreter) and the CUDA kernels (GPU or tests/cuda_emulator).
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

import cuda_emulator
import parity
import vitpose_kernels as vk


@contextlib.contextmanager
def _serving(backend):
    """The device `backend` runs on here (skipping where it cannot run at all)."""
    if backend == "reference":
        yield torch.device("cpu")
    elif backend == "triton":
        why = parity.skip_reason("udp_targets", "triton")
        if why:
            pytest.skip(f"triton unavailable: {why}")
        yield parity.device()
    elif torch.cuda.is_available():
        yield torch.device("cuda")
    else:
        why = cuda_emulator.skip_reason()
        if why:
            pytest.skip(f"no GPU and no CUDA emulator: {why}")
        with cuda_emulator.emulated():
            yield torch.device("cpu")


BACKENDS = ["reference", "triton", "cuda"]
NAN, INF = float("nan"), float("inf")
KW = dict(heatmap_size=(12, 16), input_size=(48, 64), sigma=2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_udp_targets_nonfinite_keypoints_give_empty_maps_and_zero_weight(backend):
    """mmpose casts the centre to int64, which sends NaN/inf off the map: weight 0, empty map. A
    NaN anywhere in the targets would make a weighted MSE loss NaN."""
    kp = torch.tensor([[[NAN, 20.0], [10.0, INF], [-INF, -INF], [NAN, NAN], [20.0, 30.0]]])
    vis = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0]])
    with _serving(backend) as dev:
        hm, w = vk.udp_targets(kp.to(dev), vis.to(dev), backend=backend, **KW)
    hm, w = hm.cpu(), w.cpu()
    assert torch.isfinite(hm).all()
    assert torch.equal(w, torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]))
    assert (hm[0, :4] == 0).all() and hm[0, 4].max() > 0.9
    loss = (w[..., None, None] * (hm - torch.rand_like(hm)) ** 2).mean()
    assert math.isfinite(float(loss))


@pytest.mark.parametrize("backend", BACKENDS)
def test_udp_targets_keep_mmpose_visibility_as_weight(backend):
    """mmpose's generate_udp_gaussian_heatmaps: weights start as the visibility; an unlabelled
    keypoint (visibility < 0.5, negative included) keeps it and gets an empty map; a labelled one
    whose patch misses the map gets 0."""
    kp = torch.tensor([[[20.0, 30.0], [20.0, 30.0], [20.0, 30.0], [400.0, 30.0], [20.0, 30.0], [20.0, 30.0]]])
    vis = torch.tensor([[0.3, -1.0, 0.7, 0.7, 0.0, 2.0]])
    with _serving(backend) as dev:
        hm, w = vk.udp_targets(kp.to(dev), vis.to(dev), backend=backend, **KW)
    hm, w = hm.cpu(), w.cpu()
    assert torch.equal(w, torch.tensor([[0.3, -1.0, 0.7, 0.0, 0.0, 2.0]]))
    drawn = hm.flatten(2).amax(-1)[0] > 0
    assert drawn.tolist() == [False, False, True, False, False, True]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("boxes", [False, True])
def test_decode_all_zero_heatmaps(backend, boxes):
    """The documented decision (mmpose's behaviour): an all-zero map decodes, with DARK-UDP, to a
    NaN keypoint (its blur renormalises by 0 / 0) with score 0; with method="argmax" to the first
    pixel. Other maps of the batch are unaffected."""
    hm = parity.realistic_heatmaps(2, 3, 8, 6, seed=3)
    hm[0, 1] = 0.0
    hm[1, 2] = 0.0
    kw = dict(input_size=(24, 32))
    if boxes:
        kw.update(bbox_centers=torch.tensor([[50.0, 60.0], [70.0, 80.0]]),
                  bbox_scales=torch.tensor([[100.0, 120.0], [90.0, 110.0]]))
    with _serving(backend) as dev:
        moved = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        kp, sc = vk.decode_heatmaps(hm.to(dev), backend=backend, **moved)
        akp, _ = vk.decode_heatmaps(hm.to(dev), method="argmax", backend=backend, **moved)
    kp, sc, akp = kp.cpu(), sc.cpu(), akp.cpu()
    zero = torch.zeros(2, 3, dtype=torch.bool)
    zero[0, 1] = zero[1, 2] = True
    assert torch.isnan(kp[zero]).all() and torch.isfinite(kp[~zero]).all()
    assert (sc[zero] == 0).all()
    first = torch.zeros(2) if not boxes else None
    for b, k in zero.nonzero().tolist():
        want = torch.zeros(2) if first is not None else \
            kw["bbox_centers"][b] - kw["bbox_scales"][b] * 0.5  # pixel (0, 0) of the crop, in the image
        torch.testing.assert_close(akp[b, k], want)
    rkp, rsc = vk.decode_heatmaps(hm, backend="reference", **kw)
    torch.testing.assert_close(kp[~zero], rkp[~zero], atol=1e-3, rtol=0)
