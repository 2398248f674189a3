"""CUDA backend of decode_heatmaps: flip merge, argmax, DARK-UDP refinement (or TokenPose's "dark"
post-processing) and the box transform for a whole batch in one launch (csrc/decode_heatmaps.cu).

Each map is staged once in shared memory (two map-sized float buffers: the merged map and its
horizontal blur), so the kernel declines maps whose buffers exceed the GPU's per-block shared
memory (about 190x150 pixels on an H100); those fall back to Triton or the reference.
"""
from __future__ import annotations

import torch

from .. import _alloc, dispatch
from .._head_ops import define_decode_heatmaps
from ..reference.decode_heatmaps import gaussian_kernel_1d
from . import _launch


def _decode(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
            blur_kernel_size):
    B, K, H, W = heatmaps.shape
    if flip_heatmaps is not None and flip_heatmaps.dtype != heatmaps.dtype:
        # The kernel reads one dtype; widening both is exact.
        heatmaps, flip_heatmaps = heatmaps.float(), flip_heatmaps.float()
    keypoints = _alloc.empty(B, K, 2, dtype=torch.float32, device=heatmaps.device)
    scores = _alloc.empty(B, K, dtype=torch.float32, device=heatmaps.device)
    flipped = flip_heatmaps is not None
    boxes = bbox_centers is not None
    with torch.cuda.device(heatmaps.device):
        _launch.ext().decode_heatmaps(
            _launch.ptr(heatmaps), _launch.strides(heatmaps),
            _launch.ptr(flip_heatmaps), _launch.strides(flip_heatmaps) if flipped else [0] * 4,
            _launch.ptr(flip_indices), flip_indices.stride(0) if flipped else 0,
            _launch.dtype_code(heatmaps), B, K, H, W,
            gaussian_kernel_1d(blur_kernel_size) if method != "argmax" else [], _METHODS[method],
            input_size[0], input_size[1],
            _launch.ptr(bbox_centers), _launch.strides(bbox_centers) if boxes else [0, 0],
            _launch.ptr(bbox_scales), _launch.strides(bbox_scales) if boxes else [0, 0],
            _launch.ptr(keypoints), _launch.ptr(scores), _launch.stream(heatmaps))
    return keypoints, scores


_METHODS = {"argmax": 0, "udp": 1, "dark": 2}  # the kernel's method codes

decode_heatmaps_op = define_decode_heatmaps("cuda", _decode)


def reasons(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
            blur_kernel_size) -> list[str]:
    out = _launch.common_reasons(heatmaps, flip_heatmaps, flip_indices, bbox_centers, bbox_scales)
    if out or method == "argmax":
        return out
    ext = _launch.ext()
    if blur_kernel_size > ext.decode_heatmaps_max_taps:
        out.append(f"blur_kernel_size={blur_kernel_size} > {ext.decode_heatmaps_max_taps}")
        return out
    H, W = heatmaps.shape[2:]
    need = ext.decode_heatmaps_smem_bytes(H, W, blur_kernel_size, True)
    props = torch.cuda.get_device_properties(heatmaps.device)
    have = getattr(props, "shared_memory_per_block_optin", 48 * 1024)
    if need > have:
        out.append(f"heatmaps of {H}x{W} need {need} bytes of shared memory per block, this GPU allows {have}")
    return out


@dispatch.register("decode_heatmaps", "cuda", reasons=reasons)
def decode_heatmaps(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
                    blur_kernel_size):
    return decode_heatmaps_op(heatmaps, flip_heatmaps, flip_indices, list(input_size), bbox_centers, bbox_scales,
                              method, blur_kernel_size)
