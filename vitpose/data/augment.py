"""The training augmentation of the official ViTPose configs, batched on the device.

mmpose 0.x train pipeline (configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/ViTPose_*_coco_256x192.py):
TopDownRandomFlip(0.5) -> TopDownHalfBodyTransform(8 joints, p 0.3) ->
TopDownGetRandomScaleRotation(rot 40, scale 0.5, rot p 0.6) -> TopDownAffine(use_udp) ->
NormalizeTensor(ImageNet) -> TopDownGenerateTarget(UDP, sigma 2).

Here the random numbers of every sample are drawn in the DataLoader worker from a generator
seeded by (seed, epoch, sample index), so a sample is augmented the same way whatever the number
of workers, processes or restarts; everything else runs on the device for the whole batch: the
half-body box, scale and rotation, the flip with swapped keypoint labels, ONE grid_sample for all
crops (the inference warp, ``vitpose.infer.pipeline.crop_batch``, with per-sample rotation and
flip), ImageNet normalization and the UDP targets (``vitpose_kernels.udp_targets``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import vitpose_kernels

from ..infer.pipeline import box_to_center_scale, crop_batch, image_to_crop, normalize

# What draw() returns per sample, in this order.
DRAWS = ("flip", "half_body", "half_body_upper", "scale", "rotation", "rotate")


@dataclass(frozen=True)
class AugmentConfig:
    """The official numbers (mmpose 0.x top_down_transform.py defaults as the configs set them)."""
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8     # needs MORE than this many labelled joints
    half_body_padding: float = 1.5
    scale_factor: float = 0.5         # scale x clip(N(1, sf), 1 - sf, 1 + sf)
    rot_factor: float = 40.0          # degrees: clip(N(0, rf), -2 rf, 2 rf)
    rot_prob: float = 0.6
    center_jitter_prob: float = 0.3   # at load time, see vitpose.data.coco (mmpose 0.x _xywh2cs)
    sigma: float = 2.0                # UDP Gaussian of the targets

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation: the plain UDP crop of the box (validation-style samples)."""
        return cls(flip_prob=0.0, half_body_prob=0.0, scale_factor=0.0, rot_prob=0.0, center_jitter_prob=0.0)


def draw(rng: np.random.Generator) -> np.ndarray:
    """One sample's random numbers (DRAWS): uniforms for the gates, normals for the amounts."""
    u = rng.random(4)
    n = rng.standard_normal(3)
    return np.array([u[0], u[1], n[0], n[1], n[2], u[2]], dtype=np.float32)


@dataclass
class KeypointTables:
    """Per dataset (rows), padded to the largest K: flip order and the upper-body mask."""
    flip_index: torch.Tensor   # (D, K) long
    upper: torch.Tensor        # (D, K) bool
    has_half_body: torch.Tensor  # (D,) bool: the dataset defines an upper body
    num_keypoints: torch.Tensor  # (D,) long

    @classmethod
    def build(cls, keypoint_sets, device=None) -> "KeypointTables":
        K = max(ks.num_keypoints for ks in keypoint_sets)
        flip = torch.arange(K).repeat(len(keypoint_sets), 1)
        upper = torch.zeros(len(keypoint_sets), K, dtype=torch.bool)
        for d, ks in enumerate(keypoint_sets):
            if ks.flip_indices is not None:
                flip[d, : ks.num_keypoints] = torch.tensor(ks.flip_indices)
            if ks.upper_body_ids:
                upper[d, list(ks.upper_body_ids)] = True
        has = torch.tensor([bool(ks.upper_body_ids) for ks in keypoint_sets])
        counts = torch.tensor([ks.num_keypoints for ks in keypoint_sets])
        return cls(flip.to(device), upper.to(device), has.to(device), counts.to(device))


def half_body(keypoints, labelled, upper, use, choose_upper, aspect: float, padding: float):
    """mmpose's half_body_transform, batched: the centre and size of the upper (or lower) body's
    labelled joints, grown to the crop aspect ratio, x padding. Returns (centers, scales, applied):
    applied is False where the chosen half has fewer than 2 joints."""
    lower = ~upper & labelled
    upper = upper & labelled
    n_up, n_low = upper.sum(1), lower.sum(1)
    # mmpose: `if randn < 0.5 and len(upper) > 2: upper elif len(lower) > 2: lower else: upper`
    take_upper = (choose_upper & (n_up > 2)) | ~(n_low > 2)
    sel = torch.where(take_upper[:, None], upper, lower)
    n = sel.sum(1)
    applied = use & (n >= 2)
    w = sel.to(keypoints.dtype)[..., None]
    center = (keypoints * w).sum(1) / n.clamp(min=1)[:, None]
    big = torch.finfo(keypoints.dtype).max
    lo = torch.where(sel[..., None], keypoints, big).amin(1)
    hi = torch.where(sel[..., None], keypoints, -big).amax(1)
    bw, bh = (hi - lo).unbind(-1)
    bw, bh = torch.where(bw > aspect * bh, bw, bh * aspect), torch.where(bw > aspect * bh, bw / aspect, bh)
    scale = torch.stack([bw, bh], -1) * padding
    return center, scale, applied


class TopDownAugment:
    """Batch of decoded samples -> (pixels (B, 3, H, W) normalized, targets (B, K, H/4, W/4),
    weights (B, K), dataset_index (B,)), on ``device``. ``train=False``: no random transform."""

    def __init__(self, keypoint_sets, input_size=(192, 256), heatmap_size=None, config: AugmentConfig | None = None,
                 train: bool = True, canvas_size=None):
        """canvas_size (Hc, Wc): at least the largest image of the data; each sample's crop is then
        independent of the rest of its batch (see crop_batch), so that a batch split over several
        processes computes exactly what one process computes."""
        self.keypoint_sets = list(keypoint_sets)
        self.canvas_size = tuple(canvas_size) if canvas_size is not None else None
        self.input_size = tuple(input_size)  # (W, H)
        self.heatmap_size = tuple(heatmap_size or (input_size[0] // 4, input_size[1] // 4))
        self.config = config or AugmentConfig()
        self.train = train
        self._tables = {}

    def tables(self, device) -> KeypointTables:
        key = str(device)
        if key not in self._tables:
            self._tables[key] = KeypointTables.build(self.keypoint_sets, device)
        return self._tables[key]

    def geometry(self, batch: dict, device):
        """centers, scales, rotation (degrees), flip (bool) per sample, on the device."""
        cfg = self.config
        kp = batch["keypoints"].to(device, torch.float32)
        labelled = batch["visible"].to(device) > 0
        # The box grown to the crop's aspect ratio and padded 1.25x (the inference code), then the
        # dataset's load-time centre offset (zero in evaluation-style samples).
        centers, scales = box_to_center_scale(batch["box"].to(device, torch.float32), self.input_size)
        if "center_offset" in batch:
            centers = centers + batch["center_offset"].to(device, torch.float32)
        B = kp.shape[0]
        if not self.train:
            return centers, scales, None, None
        r = batch["draws"].to(device, torch.float32)
        flip = r[:, 0] <= cfg.flip_prob if cfg.flip_prob > 0 else torch.zeros(B, dtype=torch.bool, device=device)
        tabs = self.tables(device)
        ds = batch["dataset_index"].to(device)
        if cfg.half_body_prob > 0:
            use = (labelled.sum(1) > cfg.half_body_min_joints) & (r[:, 1] < cfg.half_body_prob) & tabs.has_half_body[ds]
            aspect = self.input_size[0] / self.input_size[1]
            c, s, applied = half_body(kp, labelled, tabs.upper[ds], use, r[:, 2] < 0.5, aspect, cfg.half_body_padding)
            centers = torch.where(applied[:, None], c, centers)
            scales = torch.where(applied[:, None], s, scales)
        sf, rf = cfg.scale_factor, cfg.rot_factor
        scales = scales * (r[:, 3] * sf + 1).clamp(1 - sf, 1 + sf)[:, None]
        rotation = torch.where(r[:, 5] <= cfg.rot_prob, (r[:, 4] * rf).clamp(-2 * rf, 2 * rf), torch.zeros_like(r[:, 4]))
        return centers, scales, rotation, flip

    def __call__(self, batch: dict, device) -> dict:
        device = torch.device(device)
        centers, scales, rotation, flip = self.geometry(batch, device)
        images = [im.to(device, non_blocking=True) for im in batch["images"]]
        image_index = batch["image_index"].to(device)
        pixels = normalize(crop_batch(images, image_index, centers, scales, self.input_size, rotation, flip,
                                      self.canvas_size))
        kp = image_to_crop(batch["keypoints"].to(device, torch.float32), centers, scales, self.input_size,
                           rotation, flip)
        visible = (batch["visible"].to(device) > 0).float()
        ds = batch["dataset_index"].to(device)
        if flip is not None:
            # A mirrored person's left wrist is where the right one was: swap the labels.
            order = self.tables(device).flip_index[ds]                       # (B, K)
            kp = torch.where(flip[:, None, None], kp.gather(1, order[..., None].expand_as(kp)), kp)
            visible = torch.where(flip[:, None], visible.gather(1, order), visible)
        targets, weights = vitpose_kernels.udp_targets(kp, visible, heatmap_size=self.heatmap_size,
                                                       input_size=self.input_size, sigma=self.config.sigma)
        return {"pixels": pixels, "targets": targets, "weights": weights, "dataset_index": ds,
                "keypoints": kp, "centers": centers, "scales": scales, "rotation": rotation, "flip": flip}
