"""Reference udp_targets: mmpose 1.x ``UDPHeatmap.encode`` (gaussian), one heatmap stack per instance."""
import math

import torch


def udp_targets(keypoints, visible, heatmap_size, input_size, sigma):
    """keypoints (B, K, 2) in crop pixels, visible (B, K) -> heatmaps (B, K, H, W), weights (B, K).

    As mmpose's generate_udp_gaussian_heatmaps: the unbiased Gaussian is centred at
    kpt * (heatmap - 1) / (input - 1) and drawn inside the box [mu - 3 sigma, mu + 3 sigma + 1)
    around mu = int(centre + 0.5) (C-style truncation); a keypoint that is not visible (< 0.5) or
    whose box misses the map gets weight 0 and an empty map; other weights equal `visible`.
    """
    W, H = heatmap_size
    device = keypoints.device
    factor = torch.tensor([(W - 1) / (input_size[0] - 1), (H - 1) / (input_size[1] - 1)],
                          dtype=torch.float32, device=device)
    mu_ac = keypoints.float() * factor
    radius = 3 * sigma
    mu = torch.trunc(mu_ac + 0.5)
    lo = torch.trunc(mu - radius)          # left, top
    hi = torch.trunc(mu + radius + 1)      # right, bottom (exclusive)
    size = math.ceil(2 * radius + 1)       # len(np.arange(0, 2 * radius + 1))
    centre = float((2 * radius + 1) // 2) + (mu_ac - mu)  # x0, y0 inside the Gaussian patch
    vis = visible.float()
    inside = (lo[..., 0] < W) & (lo[..., 1] < H) & (hi[..., 0] >= 0) & (hi[..., 1] >= 0)
    weights = torch.where((vis >= 0.5) & inside, vis, torch.zeros_like(vis))

    def axis(n, c):  # 1-D Gaussian along one axis, zero outside the patch: (B, K, n)
        pos = torch.arange(n, dtype=torch.float32, device=device) - lo[..., c, None]  # patch coordinate
        keep = (pos >= 0) & (pos < size) & (pos < hi[..., c, None] - lo[..., c, None])
        return torch.exp(-((pos - centre[..., c, None]) ** 2) / (2 * sigma ** 2)) * keep

    heatmaps = axis(H, 1)[..., :, None] * axis(W, 0)[..., None, :] * (weights > 0)[..., None, None]
    return heatmaps, weights
