"""Reference decode_heatmaps: mmpose 1.x ``UDPHeatmap.decode`` for a whole batch, then the box
back-transform (methods "udp", "argmax"); or the official TokenPose / HRNet+DARK test-time
post-processing, get_final_preds with POST_PROCESS (method "dark"). Float32 math throughout,
whatever the input dtype.

One deliberate difference: mmpose's get_heatmap_maximum marks a map whose maximum is <= 0 with
location -1, and its refinement then reads outside that map (numpy wraps the negative index into
the previous keypoint's map). The spec keeps the argmax and refines there; the score (<= 0) is
what tells the caller the keypoint was not found.

An all-zero map, as in mmpose: its blur renormalises by 0 / 0, so with method="udp" the keypoint
is NaN (score 0); with method="argmax" it is the first pixel, (0, 0) before scaling. Every backend
does the same (the clip to [1e-3, 50] propagates NaN).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# OpenCV's fixed kernels for small sizes when sigma <= 0 (cv2.getGaussianKernel).
_SMALL_GAUSSIAN = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}


def gaussian_kernel_1d(size: int) -> list[float]:
    """The 1-D kernel cv2.GaussianBlur(ksize=(size, size), sigmaX=0) applies (sigma 2.0 for 11)."""
    if size in _SMALL_GAUSSIAN:
        return list(_SMALL_GAUSSIAN[size])
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    w = [math.exp(-((i - (size - 1) / 2) ** 2) / (2 * sigma * sigma)) for i in range(size)]
    total = sum(w)
    return [x / total for x in w]


def flip_back(flip_heatmaps: torch.Tensor, flip_indices: torch.Tensor) -> torch.Tensor:
    """Heatmaps of mirrored crops back into the original frame: swap left/right channels, mirror x."""
    return flip_heatmaps.index_select(1, flip_indices).flip(-1)


def heatmap_argmax(heatmaps: torch.Tensor):
    """Max value and (x, y) of the first maximum of each (B, K, H, W) map."""
    B, K, H, W = heatmaps.shape
    flat = heatmaps.reshape(B, K, H * W)
    scores, idx = flat.max(dim=-1)
    # torch.max does not promise the first index on ties; take the smallest index explicitly.
    idx = torch.where(flat == scores[..., None], torch.arange(H * W, device=flat.device), H * W).amin(-1)
    return torch.stack([idx % W, idx // W], dim=-1), scores


def blur_renormalized(heatmaps: torch.Tensor, blur_kernel_size: int) -> torch.Tensor:
    """DARK's gaussian_blur: each map blurred over a zero border (cv2.GaussianBlur of the padded
    map), then rescaled so that its maximum is the original map's. (B, K, H, W) float32."""
    B, K, H, W = heatmaps.shape
    g = torch.tensor(gaussian_kernel_1d(blur_kernel_size), dtype=torch.float32, device=heatmaps.device)
    r = blur_kernel_size // 2
    maps = heatmaps.reshape(B * K, 1, H, W)
    blurred = F.conv2d(F.pad(maps, (r, r, r, r)), g.view(1, 1, 1, -1))
    blurred = F.conv2d(blurred, g.view(1, 1, -1, 1))
    scale = maps.amax(dim=(2, 3), keepdim=True) / blurred.amax(dim=(2, 3), keepdim=True)
    return (blurred * scale).reshape(B, K, H, W)


def dark_udp_refine(heatmaps: torch.Tensor, locs: torch.Tensor, blur_kernel_size: int) -> torch.Tensor:
    """One Newton step on the log of the blurred heatmap at the integer maximum (mmpose's
    refine_keypoints_dark_udp). heatmaps (B, K, H, W) float32, locs (B, K, 2) integer -> float32."""
    B, K, H, W = heatmaps.shape
    logm = torch.log(torch.clamp(blur_renormalized(heatmaps, blur_kernel_size), 1e-3, 50.0))
    logm = F.pad(logm.reshape(B * K, 1, H, W), (1, 1, 1, 1), mode="replicate").reshape(B, K, H + 2, W + 2)

    x = locs[..., 0].long() + 1
    y = locs[..., 1].long() + 1

    def at(dy, dx):
        return logm.reshape(B, K, -1).gather(2, ((y + dy) * (W + 2) + (x + dx))[..., None])[..., 0]

    i_ = at(0, 0)
    ix1, ix1_ = at(0, 1), at(0, -1)
    iy1, iy1_ = at(1, 0), at(-1, 0)
    ix1y1, ix1_y1_ = at(1, 1), at(-1, -1)
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    eps = torch.finfo(torch.float32).eps
    a, b, d = dxx + eps, dxy, dyy + eps  # Hessian + eps * I, symmetric
    det = a * d - b * b
    step_x = (d * dx - b * dy) / det
    step_y = (a * dy - b * dx) / det
    return locs.float() - torch.stack([step_x, step_y], dim=-1)


def dark_refine(heatmaps: torch.Tensor, locs: torch.Tensor, blur_kernel_size: int) -> torch.Tensor:
    """The DARK repository's Taylor step (taylor() in get_final_preds of TokenPose, HRNet+DARK):
    on log(max(blurred, 1e-10)) at the integer maximum, first derivatives by central differences
    and second ones over +-2 pixels (x 0.25); only at interior maxima (1 < x < W-2, 1 < y < H-2)
    and only when the Hessian's determinant is not 0. (B, K, H, W), (B, K, 2) -> (B, K, 2) float32."""
    B, K, H, W = heatmaps.shape
    logm = torch.log(torch.clamp(blur_renormalized(heatmaps, blur_kernel_size), min=1e-10)).reshape(B, K, H * W)
    x, y = locs[..., 0].long(), locs[..., 1].long()
    interior = (x > 1) & (x < W - 2) & (y > 1) & (y < H - 2)

    def at(dy, dx):  # log-map at (y + dy, x + dx); indices clamped where the step is not taken
        yy = (y + dy).clamp(0, H - 1)
        xx = (x + dx).clamp(0, W - 1)
        return logm.gather(2, (yy * W + xx)[..., None])[..., 0]

    c = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    dyy = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
    det = dxx * dyy - dxy * dxy
    take = interior & (det != 0)
    det = torch.where(take, det, torch.ones_like(det))
    step_x = (dyy * dx - dxy * dy) / det
    step_y = (dxx * dy - dxy * dx) / det
    step = torch.where(take[..., None], torch.stack([step_x, step_y], dim=-1), torch.zeros_like(locs, dtype=torch.float32))
    return locs.float() - step


def dark_to_pixels(kp, heatmap_hw, input_size, bbox_centers, bbox_scales):
    """The HRNet/DARK-code geometry (TokenPose's transform_preds): heatmap and crop are similar
    about their centres, ((W-1)/2, (H-1)/2), with one isotropic factor from the widths, and the
    box of width s maps onto the crop's [0, W_in - 1]: image = c + (kp - centre) * (s_w - 1) / (W - 1).
    Without boxes, crop pixels: centre_in + (kp - centre) * (W_in - 1) / (W - 1)."""
    H, W = heatmap_hw
    dev = kp.device
    mid = torch.tensor([(W - 1) / 2, (H - 1) / 2], dtype=torch.float32, device=dev)
    if bbox_centers is not None:
        factor = (bbox_scales[:, 0] - 1) / (W - 1)
        return bbox_centers[:, None] + (kp - mid) * factor[:, None, None]
    mid_in = torch.tensor([(input_size[0] - 1) / 2, (input_size[1] - 1) / 2], dtype=torch.float32, device=dev)
    return mid_in + (kp - mid) * ((input_size[0] - 1) / (W - 1))


def decode_heatmaps(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales,
                    method, blur_kernel_size):
    """See vitpose_kernels.decode_heatmaps (arguments already validated)."""
    hm = heatmaps.float()
    if flip_heatmaps is not None:
        hm = (hm + flip_back(flip_heatmaps.float(), flip_indices)) * 0.5
    B, K, H, W = hm.shape
    locs, scores = heatmap_argmax(hm)
    if method == "dark":
        # get_max_preds: a map whose maximum is not positive decodes to (0, 0)
        locs = torch.where((scores > 0)[..., None], locs, torch.zeros_like(locs))
        kp = dark_refine(hm, locs, blur_kernel_size) if B > 0 else locs.float()
        return dark_to_pixels(kp, (H, W), input_size, bbox_centers, bbox_scales), scores
    if method == "udp" and B > 0:
        kp = dark_udp_refine(hm, locs, blur_kernel_size)
    else:
        kp = locs.float()
    size = torch.tensor(input_size, dtype=torch.float32, device=hm.device)
    kp = kp / torch.tensor([W - 1, H - 1], dtype=torch.float32, device=hm.device) * size
    if bbox_centers is not None:
        kp = kp / size * bbox_scales[:, None] + bbox_centers[:, None] - bbox_scales[:, None] * 0.5
    return kp, scores
