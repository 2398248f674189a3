"""decode_heatmaps(method="dark"): the official TokenPose test-time post-processing (lib/core/
inference.py get_final_preds with POST_PROCESS, flip_back, transform_preds of the HRNet+DARK code),
re-implemented here in NumPy/OpenCV step by step, against the reference spec."""
import numpy as np
import pytest
import torch

import vitpose_kernels as vk
from vitpose.data.keypoints import COCO_FLIP_INDICES

cv2 = pytest.importorskip("cv2")


def official_final_preds(hm, center, scale_px, blur=11):
    """hm (B, K, H, W) float32 numpy, center (B, 2), scale_px (B, 2) = scale * 200 -> preds, maxvals."""
    B, K, H, W = hm.shape
    flat = hm.reshape(B, K, -1)
    idx, maxvals = np.argmax(flat, 2), np.amax(flat, 2)
    coords = np.stack([idx % W, np.floor(idx / W)], -1).astype(np.float32)
    coords *= (maxvals > 0)[..., None]
    # gaussian_blur: zero border, cv2 blur (sigma from the kernel size), back to the original maximum
    hm = hm.copy()
    r = (blur - 1) // 2
    for b in range(B):
        for k in range(K):
            top = np.max(hm[b, k])
            dr = np.zeros((H + 2 * r, W + 2 * r))
            dr[r:-r, r:-r] = hm[b, k]
            dr = cv2.GaussianBlur(dr, (blur, blur), 0)
            hm[b, k] = dr[r:-r, r:-r]
            hm[b, k] *= top / np.max(hm[b, k])
    hm = np.log(np.maximum(hm, 1e-10))
    for b in range(B):
        for k in range(K):  # taylor()
            L, (px, py) = hm[b, k], (int(coords[b, k, 0]), int(coords[b, k, 1]))
            if 1 < px < W - 2 and 1 < py < H - 2:
                d = np.array([0.5 * (L[py, px + 1] - L[py, px - 1]), 0.5 * (L[py + 1, px] - L[py - 1, px])])
                dxx = 0.25 * (L[py, px + 2] - 2 * L[py, px] + L[py, px - 2])
                dxy = 0.25 * (L[py + 1, px + 1] - L[py - 1, px + 1] - L[py + 1, px - 1] + L[py - 1, px - 1])
                dyy = 0.25 * (L[py + 2, px] - 2 * L[py, px] + L[py - 2, px])
                hess = np.array([[dxx, dxy], [dxy, dyy]], dtype=np.float64)
                if dxx * dyy - dxy ** 2 != 0:
                    coords[b, k] += -np.linalg.inv(hess) @ d
    preds = np.zeros_like(coords, dtype=np.float64)
    for b in range(B):  # transform_preds: the inverse affine of get_affine_transform (rotation 0)
        src_w, dst = scale_px[b, 0], np.array([W, H], np.float64)
        c = center[b]
        src = np.float32([c, c + [0, (src_w - 1) * -0.5], c + [(src_w - 1) * -0.5, (src_w - 1) * -0.5]])
        mid = (dst - 1) * 0.5
        dpts = np.float32([mid, mid + [0, (W - 1) * -0.5], mid + [(W - 1) * -0.5, (W - 1) * -0.5]])
        trans = cv2.getAffineTransform(dpts, src)
        preds[b] = np.concatenate([coords[b], np.ones((K, 1))], 1) @ trans.T
    return preds, maxvals


def gaussian_maps(B, K, H, W, seed, sigma=2.0, noise=0.02):
    """Peaked maps (as a trained model gives) with noise; centers anywhere, edges included."""
    g = np.random.default_rng(seed)
    mu = g.uniform(-1, [W, H], size=(B, K, 2))
    y, x = np.mgrid[0:H, 0:W]
    hm = np.exp(-((x - mu[..., :1, None]) ** 2 + (y - mu[..., 1:, None]) ** 2) / (2 * sigma ** 2))
    return (hm + noise * g.standard_normal(hm.shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 17, 64, 48), (2, 5, 23, 17)])
def test_reference_matches_the_official_post_processing(shape):
    B, K, H, W = shape
    hm = gaussian_maps(B, K, H, W, seed=H)
    hm[0, 0] -= hm[0, 0].max() + 0.05  # a peak, but max <= 0: (0, 0) in the heatmap
    hm[0, 1, 5:, :] = 0
    hm[0, 1, 0, 0] = 1.0  # a corner maximum: no Taylor step
    g = np.random.default_rng(1)
    center = g.uniform(50, 400, (B, 2)).astype(np.float32)
    scale = g.uniform(60, 300, (B, 1)) * np.array([[1.0, 4 / 3]])
    want, want_s = official_final_preds(hm, center, scale)
    kp, s = vk.decode_heatmaps(torch.from_numpy(hm), input_size=(192, 256), bbox_centers=torch.from_numpy(center),
                               bbox_scales=torch.from_numpy(scale).float(), method="dark", backend="reference")
    assert np.allclose(s.numpy(), want_s)
    err = np.abs(kp.numpy() - want).max(-1) / (scale[:, :1] / W)  # in heatmap pixels
    assert err.max() < 2e-3, err.max()
    origin = center[0] + (np.zeros(2) - [(W - 1) / 2, (H - 1) / 2]) * (scale[0, 0] - 1) / (W - 1)
    assert np.allclose(kp[0, 0].numpy(), origin, atol=1e-3)


def test_flip_merge_then_dark_and_crop_pixels():
    """The flip test (flip_back: mirrored columns, swapped left/right channels, averaged), and crop
    pixels when no box is given: one isotropic factor (W_in - 1) / (W - 1) about the centers."""
    hm = gaussian_maps(2, 17, 64, 48, seed=3)
    flipped = gaussian_maps(2, 17, 64, 48, seed=4)
    merged = (hm + flipped[:, COCO_FLIP_INDICES][..., ::-1]) * 0.5
    kp_merged, s_merged = vk.decode_heatmaps(torch.from_numpy(np.ascontiguousarray(merged)), method="dark",
                                             input_size=(192, 256), backend="reference")
    kp, s = vk.decode_heatmaps(torch.from_numpy(hm), flip_heatmaps=torch.from_numpy(flipped),
                               flip_indices=COCO_FLIP_INDICES, method="dark", input_size=(192, 256),
                               backend="reference")
    assert torch.allclose(kp, kp_merged, atol=1e-4) and torch.allclose(s, s_merged)
    # crop pixels = the image pixels of a box whose width is the crop's, centered on the crop
    kp_box, _ = vk.decode_heatmaps(torch.from_numpy(hm), method="dark", input_size=(192, 256),
                                   bbox_centers=torch.full((2, 2), 0.0) + torch.tensor([95.5, 127.5]),
                                   bbox_scales=torch.tensor([[192.0, 256.0]] * 2), backend="reference")
    kp_crop, _ = vk.decode_heatmaps(torch.from_numpy(hm), method="dark", input_size=(192, 256), backend="reference")
    assert torch.allclose(kp_box, kp_crop, atol=1e-4)


def test_dark_is_validated_and_dispatched():
    hm = torch.rand(1, 3, 8, 6)
    with pytest.raises(ValueError, match="method must be 'udp', 'argmax' or 'dark'"):
        vk.decode_heatmaps(hm, method="taylor")
    kp, s = vk.decode_heatmaps(hm, method="dark")  # CPU tensors: the reference
    assert kp.shape == (1, 3, 2) and torch.isfinite(kp).all()


def test_triton_dark_shortcut_equals_full_blur():
    """The Triton kernel blurs only the 5x5 neighbourhood when the clip at 1e-10 cannot bite;
    against always blurring the whole map and the reference, on strong maps and on maps whose
    values straddle the clip (the full blur decides the renormalisation)."""
    import parity
    from vitpose_kernels.triton_backend import decode_heatmaps as dh
    strong = parity.realistic_heatmaps(2, 5, 16, 12, seed=6, border=True)
    weak = 1e-10 * parity.realistic_heatmaps(2, 5, 16, 12, seed=7, noise=0.05)
    for hm in (strong, weak):
        args = (hm, None, None, (48, 64), None, None, "dark", 11)
        fast, _ = dh._decode(*args)
        full, _ = dh._decode(*args, always_full_blur=True)
        ref, _ = vk.decode_heatmaps(hm, input_size=(48, 64), method="dark", backend="reference")
        assert float((fast - full).abs().max()) <= 1e-4
        assert float((fast - ref).abs().max()) <= 1e-3


def test_cuda_dark_emulated_is_schedule_independent(monkeypatch):
    """The CUDA kernel's dark path (5x5 log-neighbourhood staged between barriers) gives the same
    bits under other thread orders, through the CPU emulator; and the reference's keypoints."""
    import cuda_emulator
    import parity
    why = cuda_emulator.skip_reason()
    if why is not None:
        pytest.skip(f"CUDA emulator unavailable: {why}")
    case = parity.HeatmapCase(size=(20, 15), B=2, K=5, flip=True, boxes=True, border=True, method="dark")
    with cuda_emulator.emulated():
        hm, kw = parity.heatmap_inputs(case, torch.device("cpu"))
        first = vk.decode_heatmaps(hm, backend="cuda", **kw)
        ref, _ = vk.decode_heatmaps(hm, backend="reference", **kw)
        assert float((first[0] - ref).abs().max()) <= 1e-3
        for schedule in ("reverse", "serial-reverse"):
            monkeypatch.setenv("VPEMU_SCHEDULE", schedule)
            again = vk.decode_heatmaps(hm, backend="cuda", **kw)
            assert all(torch.equal(a, b) for a, b in zip(first, again)), schedule


def test_cpu_backend_dark_shortcut_equals_full_blur():
    """The CPU backend blurs only the 5x5 neighbourhood of interior maxima; against its full blur and
    the reference, on strong maps and on maps straddling the clip at 1e-10."""
    import parity
    from vitpose_kernels.cpu_backend import decode_heatmaps as cpu
    strong = parity.realistic_heatmaps(3, 17, 64, 48, seed=6, border=True)
    weak = 1e-10 * parity.realistic_heatmaps(2, 5, 16, 12, seed=7, noise=0.05)
    for hm in (strong, weak):
        args = vk.ops._prepare_decode_heatmaps(hm, input_size=(192, 256), method="dark")
        fast, _ = cpu.decode(*args)
        full, _ = cpu.decode(*args, always_full_blur=True)
        ref, _ = vk.decode_heatmaps(hm, input_size=(192, 256), method="dark", backend="reference")
        assert float((fast - full).abs().max()) <= 1e-4
        assert float((fast - ref).abs().max()) <= 1e-3
