"""Reference simple_decoder, decode_heatmaps and udp_targets against independent formulations."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import parity
import vitpose_kernels as vk


# ----------------------------------------------------------------------------- simple_decoder
def bilinear_matrix(n_in: int, scale: int) -> torch.Tensor:
    """(n_in*scale, n_in) interpolation weights, align_corners=False, written from the formula."""
    m = torch.zeros(n_in * scale, n_in, dtype=torch.float64)
    for o in range(n_in * scale):
        src = max((o + 0.5) / scale - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        t = src - i0
        m[o, i0] += 1 - t
        m[o, i1] += t
    return m


@pytest.mark.parametrize("hw,k,scale", [((7, 5), 3, 4), ((4, 3), 1, 4), ((3, 6), 3, 2), ((5, 5), 3, 1)])
def test_simple_decoder_against_matrices(hw, k, scale):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, *hw, generator=g, dtype=torch.float64)
    w = torch.randn(5, 6, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    up = torch.einsum("Yy,bcyx,Xx->bcYX", bilinear_matrix(hw[0], scale), x.clamp(min=0),
                      bilinear_matrix(hw[1], scale))
    cols = F.unfold(up, k, padding=k // 2)  # (B, C*k*k, HW)
    expected = (w.reshape(5, -1) @ cols).reshape(2, 5, hw[0] * scale, hw[1] * scale) + b[:, None, None]
    out = vk.simple_decoder(x, w, b, scale_factor=scale, backend="reference")
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_simple_decoder_gradcheck():
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in ((1, 3, 3, 2), (2, 3, 3, 3), (2,))]
    assert torch.autograd.gradcheck(lambda x, w, b: vk.simple_decoder(x, w, b, scale_factor=2), args)


# ----------------------------------------------------------------------------- decode_heatmaps
def mmpose_decode(heatmaps: np.ndarray, input_size, kernel=11):
    """Per instance, with OpenCV and numpy, following mmpose 1.x UDPHeatmap.decode step by step."""
    K, H, W = heatmaps.shape
    flat = heatmaps.reshape(K, -1)
    idx = np.argmax(flat, axis=1)
    scores = flat[np.arange(K), idx]
    locs = np.stack([idx % W, idx // W], axis=-1).astype(np.float32)
    border = (kernel - 1) // 2
    hm = heatmaps.copy()
    for k in range(K):
        origin_max = hm[k].max()
        dr = np.zeros((H + 2 * border, W + 2 * border), dtype=np.float32)
        dr[border:-border, border:-border] = hm[k]
        dr = cv2.GaussianBlur(dr, (kernel, kernel), 0)
        hm[k] = dr[border:-border, border:-border]
        hm[k] *= origin_max / hm[k].max()
    np.clip(hm, 1e-3, 50.0, hm)
    np.log(hm, hm)
    pad = np.pad(hm, ((0, 0), (1, 1), (1, 1)), mode="edge")
    for k in range(K):
        x, y = int(locs[k, 0]) + 1, int(locs[k, 1]) + 1
        p = pad[k]
        dx = 0.5 * (p[y, x + 1] - p[y, x - 1])
        dy = 0.5 * (p[y + 1, x] - p[y - 1, x])
        dxx = p[y, x + 1] - 2 * p[y, x] + p[y, x - 1]
        dyy = p[y + 1, x] - 2 * p[y, x] + p[y - 1, x]
        dxy = 0.5 * (p[y + 1, x + 1] - p[y, x + 1] - p[y + 1, x] + 2 * p[y, x] - p[y, x - 1]
                     - p[y - 1, x] + p[y - 1, x - 1])
        hess = np.array([[dxx, dxy], [dxy, dyy]]) + np.finfo(np.float32).eps * np.eye(2)
        locs[k] -= np.linalg.inv(hess) @ np.array([dx, dy])
    return locs / np.array([W - 1, H - 1]) * np.array(input_size), scores


@pytest.mark.parametrize("size,border,kernel", [((16, 12), False, 11), ((8, 6), True, 11), ((16, 12), False, 7),
                                                ((64, 48), True, 11)])
def test_decode_against_opencv_numpy(size, border, kernel):
    H, W = size
    hm = parity.realistic_heatmaps(3, 17, H, W, seed=3, border=border)
    kp, sc = vk.decode_heatmaps(hm, input_size=(4 * W, 4 * H), blur_kernel_size=kernel, backend="reference")
    for b in range(3):
        ekp, esc = mmpose_decode(hm[b].numpy(), (4 * W, 4 * H), kernel)
        np.testing.assert_allclose(sc[b].numpy(), esc, rtol=0, atol=0)
        np.testing.assert_allclose(kp[b].numpy(), ekp, rtol=0, atol=1e-3)


def test_decode_flip_and_boxes():
    hm = parity.realistic_heatmaps(2, 17, 16, 12, seed=4)
    fl = parity.realistic_heatmaps(2, 17, 16, 12, seed=5)
    idx = parity.COCO_FLIP_INDICES
    merged = (hm + fl[:, idx].flip(-1)) / 2
    centers, scales = torch.tensor([[100.0, 80.0], [30.0, 40.0]]), torch.tensor([[60.0, 80.0], [90.0, 120.0]])
    kp, sc = vk.decode_heatmaps(hm, flip_heatmaps=fl, flip_indices=idx, input_size=(48, 64),
                                bbox_centers=centers, bbox_scales=scales)
    for b in range(2):
        ekp, esc = mmpose_decode(merged[b].numpy(), (48, 64))
        ekp = ekp / np.array([48, 64]) * scales[b].numpy() + centers[b].numpy() - scales[b].numpy() / 2
        np.testing.assert_allclose(kp[b].numpy(), ekp, atol=1e-3 * 2)
        np.testing.assert_allclose(sc[b].numpy(), esc, atol=1e-6)


def test_decode_argmax_first_index_on_ties():
    hm = torch.zeros(1, 2, 4, 5)
    hm[0, 0, 1, 3] = hm[0, 0, 2, 0] = 1.0  # tie: row-major first is (x=3, y=1)
    kp, sc = vk.decode_heatmaps(hm, method="argmax", input_size=(4, 3))
    assert kp[0, 0].tolist() == [3.0, 1.0] and kp[0, 1].tolist() == [0.0, 0.0]
    assert sc[0].tolist() == [1.0, 0.0]


def test_decode_empty_batch():
    kp, sc = vk.decode_heatmaps(torch.zeros(0, 17, 16, 12))
    assert kp.shape == (0, 17, 2) and sc.shape == (0, 17)


# ----------------------------------------------------------------------------- udp_targets
def mmpose_udp_targets(kp, vis, heatmap_size, input_size, sigma):
    """numpy loop over instances and keypoints, after mmpose's generate_udp_gaussian_heatmaps."""
    W, H = heatmap_size
    factor = ((np.array(heatmap_size) - 1) / (np.array(input_size) - 1)).astype(np.float32)
    B, K, _ = kp.shape
    heat = np.zeros((B, K, H, W), np.float32)
    weights = vis.astype(np.float32).copy()
    radius = sigma * 3
    size = 2 * radius + 1
    x = np.arange(0, size, 1, dtype=np.float32)
    y = x[:, None]
    for n in range(B):
        for k in range(K):
            if vis[n, k] < 0.5:  # unlabelled: empty map, the visibility stays the weight
                continue
            c = kp[n, k] * factor
            mu = (c + 0.5).astype(np.int64)
            left, top = (mu - radius).astype(np.int64)
            right, bottom = (mu + radius + 1).astype(np.int64)
            if left >= W or top >= H or right < 0 or bottom < 0:
                weights[n, k] = 0
                continue
            x0 = y0 = size // 2
            x0 += c[0] - mu[0]
            y0 += c[1] - mu[1]
            gauss = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
            gx1, gx2 = max(0, -left), min(W, right) - left
            gy1, gy2 = max(0, -top), min(H, bottom) - top
            hx1, hx2, hy1, hy2 = max(0, left), min(W, right), max(0, top), min(H, bottom)
            heat[n, k, hy1:hy2, hx1:hx2] = np.maximum(heat[n, k, hy1:hy2, hx1:hx2], gauss[gy1:gy2, gx1:gx2])
    return heat, weights


@pytest.mark.parametrize("sigma", [2.0, 1.5, 3.0])
def test_udp_targets_against_numpy(sigma):
    g = torch.Generator().manual_seed(2)
    kp = torch.rand(4, 17, 2, generator=g) * torch.tensor([260.0, 340.0]) - torch.tensor([30.0, 40.0])
    vis = (torch.rand(4, 17, generator=g) > 0.2).float()
    heat, w = vk.udp_targets(kp, vis, heatmap_size=(48, 64), input_size=(192, 256), sigma=sigma)
    eheat, ew = mmpose_udp_targets(kp.numpy(), vis.numpy(), (48, 64), (192, 256), sigma)
    np.testing.assert_allclose(heat.numpy(), eheat, atol=1e-6)
    np.testing.assert_array_equal(w.numpy(), ew)
    assert (w == 0).any() and (w == 1).any()


@pytest.mark.parametrize("xy", [(95.5, 127.5), (40.3, 200.7), (20.0, 230.2)])  # interior: DARK is biased at the border
def test_udp_targets_then_decode_round_trip(xy):
    """Encode then decode recovers the sub-pixel keypoint. mmpose encodes with (heatmap-1)/(input-1)
    but decodes with input/(heatmap-1), so the round trip scales by input/(input-1)."""
    kp = torch.tensor([[xy]])
    heat, _ = vk.udp_targets(kp, torch.ones(1, 1))
    locs, _ = vk.decode_heatmaps(heat, input_size=(192, 256))
    expected = kp[0, 0] * torch.tensor([192 / 191, 256 / 255])
    assert torch.allclose(locs[0, 0], expected, atol=0.02), (locs, expected)
