"""Reference udp_targets: mmpose 1.x ``UDPHeatmap.encode`` (gaussian), one heatmap stack per instance."""
import math

import torch


def udp_targets(keypoints, visible, heatmap_size, input_size, sigma):
    """keypoints (B, K, 2) in crop pixels, visible (B, K) -> heatmaps (B, K, H, W), weights (B, K).

    As mmpose's generate_udp_gaussian_heatmaps: the unbiased Gaussian is centred at
    kpt * (heatmap - 1) / (input - 1) and drawn inside the box [mu - 3 sigma, mu + 3 sigma + 1)
    around mu = int(centre + 0.5) (C-style truncation). Weights start as `visible`; a keypoint
    with visibility < 0.5 (unlabelled, including negative values) keeps that visibility as its
    weight and gets an empty map; a labelled one whose box misses the map, or whose coordinates
    are NaN/inf, gets weight 0 and an empty map.
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
    # NaN/inf fail every comparison, so they are never inside (mmpose's int64 cast sends them off the map).
    inside = (lo[..., 0] < W) & (lo[..., 1] < H) & (hi[..., 0] >= 0) & (hi[..., 1] >= 0)
    labelled = vis >= 0.5
    weights = torch.where(labelled & ~inside, torch.zeros_like(vis), vis)

    def axis(n, c):  # 1-D Gaussian along one axis, zero outside the patch: (B, K, n)
        pos = torch.arange(n, dtype=torch.float32, device=device) - lo[..., c, None]  # patch coordinate
        keep = (pos >= 0) & (pos < size) & (pos < hi[..., c, None] - lo[..., c, None])
        return torch.where(keep, torch.exp(-((pos - centre[..., c, None]) ** 2) / (2 * sigma ** 2)), 0.0)

    drawn = (labelled & inside)[..., None, None]
    heatmaps = torch.where(drawn, axis(H, 1)[..., :, None] * axis(W, 0)[..., None, :], 0.0)
    return heatmaps, weights
