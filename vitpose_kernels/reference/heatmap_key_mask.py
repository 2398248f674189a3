"""Reference heatmap_key_mask: TAR-ViTPose's attention masks from the initial heatmaps.

Exactly the official ``generate_attn_mask`` and the ``.view`` its forward applies (the module
docstring of vitpose_kernels/reference/masked_attention.py describes both), in the heatmaps' own
dtype, with the result turned into masked_attention's key mask (True = may attend): one mask per
clip, (B, 1, J, T*Hf*Wf), shared by the heads, bool or bit-packed int32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .masked_attention import pack_key_mask

EPS = 1e-6  # the official normaliser's epsilon: (h - min) / (max - min + 1e-6)


def heatmap_mask_values(heatmaps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, T, J, Hh, Wh) -> the normalised, resized maps (B, T, J, Hf, Wf) the threshold is applied to."""
    B, T, J, Hh, Wh = heatmaps.shape
    h = heatmaps.reshape(B * T, J, Hh, Wh)
    lo = h.amin(dim=(2, 3), keepdim=True)
    hi = h.amax(dim=(2, 3), keepdim=True)
    h = (h - lo) / (hi - lo + EPS)
    return F.interpolate(h, size=grid, mode="bilinear", align_corners=False).view(B, T, J, *grid)


def heatmap_key_mask(heatmaps, grid, threshold: float, layout: str, packed: bool) -> torch.Tensor:
    """See vitpose_kernels.heatmap_key_mask."""
    B, T, J = heatmaps.shape[:3]
    allowed = ~(heatmap_mask_values(heatmaps, grid) < threshold)  # official: `< threshold` is masked
    allowed = allowed.reshape(B, T, J, -1)
    if layout == "official":
        allowed = allowed.reshape(B, J, T, -1)  # the official forward's .view of (T, J) as (J, T)
    else:
        allowed = allowed.transpose(1, 2)  # row j, chunk t <- frame t, joint j
    allowed = allowed.reshape(B, 1, J, -1)
    return pack_key_mask(allowed) if packed else allowed
