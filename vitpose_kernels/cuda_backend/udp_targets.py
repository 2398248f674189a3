"""CUDA backend of udp_targets: mmpose 1.x UDPHeatmap.encode for a whole batch in one launch
(csrc/udp_targets.cu). The kernel reads float32 keypoints and visibilities; other dtypes are
converted first (a (B, K) sized copy)."""
from __future__ import annotations

import torch

from .. import _alloc, dispatch
from .._head_ops import define_udp_targets
from . import _launch


def _targets(keypoints, visible, heatmap_size, input_size, sigma):
    B, K, _ = keypoints.shape
    kp = keypoints if keypoints.dtype == torch.float32 else keypoints.float()
    vis = visible if visible.dtype == torch.float32 else visible.float()
    (heatmap_w, heatmap_h), (input_w, input_h) = heatmap_size, input_size
    heatmaps = _alloc.empty(B, K, heatmap_h, heatmap_w, dtype=torch.float32, device=kp.device)
    weights = _alloc.empty(B, K, dtype=torch.float32, device=kp.device)
    with torch.cuda.device(kp.device):
        _launch.ext().udp_targets(
            _launch.ptr(kp), _launch.strides(kp), _launch.ptr(vis), _launch.strides(vis), B, K, heatmap_w,
            heatmap_h, input_w, input_h, sigma, _launch.ptr(heatmaps), _launch.ptr(weights), _launch.stream(kp))
    return heatmaps, weights


udp_targets_op = define_udp_targets("cuda", _targets)


def reasons(keypoints, visible, heatmap_size, input_size, sigma) -> list[str]:
    # float64 keypoints (numpy-born annotations) are converted, so only device and GPU matter here.
    return _launch.common_reasons(*(t.new_empty(0, dtype=torch.float32) if t.dtype == torch.float64 else t
                                    for t in (keypoints, visible)))


@dispatch.register("udp_targets", "cuda", reasons=reasons)
def udp_targets(keypoints, visible, heatmap_size, input_size, sigma):
    return udp_targets_op(keypoints, visible, list(heatmap_size), list(input_size), sigma)
