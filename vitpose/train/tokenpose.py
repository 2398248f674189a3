"""The TokenPose family for the trainer: the recipe of the official configs and its data task.

github.com/leeyegy/TokenPose, experiments/coco/tokenpose/*.yaml with tools/train.py and lib/:

| variant | config                                                   | batch/GPU | GPUs | sigma |
| ------- | -------------------------------------------------------- | --------- | ---- | ----- |
| T       | tokenpose_t_256_192_patch1612_dim192_depth12_heads16.yaml | 32        | 4    | 2     |
| S-v1    | tokenpose_s_v1_256_192_patch43_dim192_depth12_heads8.yaml | 32        | 4    | 2     |
| S-v2    | tokenpose_s_v2_256_192_patch22_dim192_depth12_heads8.yaml | 12        | 4    | 2     |
| B       | tokenpose_b_256_192_patch43_dim192_depth12_heads8.yaml    | 32        | 4    | 2     |
| L/D24   | tokenpose_L_D24_256_192_patch43_dim192_depth24_heads12.yaml | 16      | 4    | 2     |
| L/D24   | tokenpose_L_D24_384_288_patch64_dim192_depth24_heads12.yaml | 32      | 8    | 3     |

(L/D6 has an MPII config only; on COCO it takes L/D24's numbers.) Every one: Adam, lr 1e-3, no
weight decay (TRAIN.WD is in the files but get_optimizer does not pass it to Adam), no gradient
clipping, no warmup, MultiStepLR at epochs 200 and 260 (x0.1), 300 epochs, evaluation every
epoch, JointsMSELoss(use_target_weight) with its 0.5 factor, "gaussian" targets: the keypoint
mapped into the heatmap by the same affine as the crop (HRNet/DARK geometry, see
vitpose.infer.pipeline method="dark") and a Gaussian of sigma drawn over the whole map (not cut at
3 sigma), weight 0 when the 3-sigma window misses the map. Augmentation: flip 0.5, half body 0.3
(more than 8 joints, padding 1.5), scale 0.35, rotation 45 degrees with probability 0.6, no box
center jitter. Test: flip test with shifted-free flip_back and get_final_preds with POST_PROCESS
(decode_heatmaps method="dark"), the pipeline's default for a TokenPose.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from ..data import augment as aug
from ..models.tokenpose import TokenPose
from .losses import joints_mse
from .recipe import Recipe, spec_arch
from .topdown import TopDownTask, _model_from_spec

REPO = "github.com/leeyegy/TokenPose experiments/coco/tokenpose/"
# variant -> (config file, batch per GPU)
TOKENPOSE_TABLE = {
    "T": ("tokenpose_t_256_192_patch1612_dim192_depth12_heads16.yaml", 32),
    "S-v1": ("tokenpose_s_v1_256_192_patch43_dim192_depth12_heads8.yaml", 32),
    "S-v2": ("tokenpose_s_v2_256_192_patch22_dim192_depth12_heads8.yaml", 12),
    "B": ("tokenpose_b_256_192_patch43_dim192_depth12_heads8.yaml", 32),
    "L/D6": ("tokenpose_L_D24_256_192_patch43_dim192_depth24_heads12.yaml", 16),
    "L/D24": ("tokenpose_L_D24_256_192_patch43_dim192_depth24_heads12.yaml", 16),
}
L384 = ("tokenpose_L_D24_384_288_patch64_dim192_depth24_heads12.yaml", 32)

AUGMENT = aug.AugmentConfig(flip_prob=0.5, half_body_prob=0.3, half_body_min_joints=8, half_body_padding=1.5,
                            scale_factor=0.35, rot_factor=45.0, rot_prob=0.6, center_jitter_prob=0.0, sigma=2.0)


def target_sigma(model) -> float:
    """3 for heatmaps of 384x288 crops (96x72) and larger, else 2: the official configs (COCO
    256x192 and MPII 256x256 use 2)."""
    return 3.0 if model.config.heatmap_size[1] >= 72 else 2.0


def _variant(model) -> str | None:
    name = model.config.name.replace("TokenPose-", "")
    return name if name in TOKENPOSE_TABLE else None


def tokenpose_recipe(model) -> Recipe:
    variant = _variant(model)
    source, batch = L384 if variant and variant.startswith("L") and model.config.img_size == (384, 288) else \
        TOKENPOSE_TABLE.get(variant, TOKENPOSE_TABLE["T"])
    r = Recipe("tokenpose", REPO + source, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, layer_decay=None,
               grad_clip=None, optimizer="adam", schedule="step", warmup_iters=0, lr_steps=(200, 260), lr_gamma=0.1,
               epochs=300, batch_size=batch, eval_every=1, sigma=target_sigma(model))
    r.notes.append("TRAIN.WD of the configs is not passed to Adam by the official get_optimizer: no weight decay")
    if variant is None:
        r.notes.append(f"custom TokenPose ({model.config.name}): TokenPose-T's batch size")
    elif variant == "L/D6":
        r.notes.append("L/D6 has an MPII config only; COCO numbers of L/D24")
    return r


def tokenpose_targets(keypoints, visible, heatmap_size, input_size, sigma: float):
    """TokenPose's JointsDataset.generate_target ("gaussian"), batched. keypoints (B, K, 2) in crop
    pixels, visible (B, K); heatmap_size and input_size (W, H) -> heatmaps (B, K, H, W), weights (B, K).

    The keypoint is mapped into the heatmap as the crop is (one factor (W_h - 1) / (W_in - 1) about
    the centers); weight = visible > 0, and 0 when the window [int(mu - 3 sigma), int(mu + 3 sigma + 1)]
    misses the map; where the weight is set, exp(-d^2 / (2 sigma^2)) over every pixel."""
    W, H = heatmap_size
    win, hin = input_size
    dev = keypoints.device
    factor = (W - 1) / (win - 1)
    mu = torch.stack([(W - 1) / 2 + (keypoints[..., 0].float() - (win - 1) / 2) * factor,
                      (H - 1) / 2 + (keypoints[..., 1].float() - (hin - 1) / 2) * factor], dim=-1)
    radius = 3 * sigma
    lo, hi = torch.trunc(mu - radius), torch.trunc(mu + radius + 1)  # Python int(): toward zero
    misses = (lo[..., 0] >= W) | (lo[..., 1] >= H) | (hi[..., 0] < 0) | (hi[..., 1] < 0)
    weights = ((visible > 0) & ~misses).float()
    xs = torch.arange(W, dtype=torch.float32, device=dev)
    ys = torch.arange(H, dtype=torch.float32, device=dev)
    gx = torch.exp(-((xs - mu[..., 0, None]) ** 2) / (2 * sigma ** 2))
    gy = torch.exp(-((ys - mu[..., 1, None]) ** 2) / (2 * sigma ** 2))
    heatmaps = gy[..., :, None] * gx[..., None, :] * (weights > 0.5)[..., None, None]
    return heatmaps, weights


class TokenPoseAugment(aug.TopDownAugment):
    """The HRNet/DARK crop geometry and TokenPose's targets; the rest as ViTPose's augmentation."""

    method = "dark"

    def targets(self, keypoints, visible):
        return tokenpose_targets(keypoints, visible, self.heatmap_size, self.input_size, self.config.sigma)


class TokenPoseTask(TopDownTask):
    """One COCO-format dataset (TokenPose has one keypoint head), TokenPose's augmentation, targets
    and loss; evaluation as ViTPose's (the pipeline decodes with the model's own method)."""

    augment_class = TokenPoseAugment

    def default_augment(self) -> aug.AugmentConfig:
        return AUGMENT

    def build_model(self, spec: str):
        if len(self.keypoint_sets) > 1:
            raise ValueError(f"TokenPose trains on one dataset (one keypoint head), got {len(self.keypoint_sets)} "
                             "--data folders")
        overrides = dict(self.config.model_overrides or {})
        overrides.pop("num_keypoints", None)
        overrides["dataset"] = self.keypoint_sets[0].name
        model = _model_from_spec(spec, overrides)
        if not isinstance(model, TokenPose):
            raise ValueError(f"--model {spec!r} did not build a TokenPose (got {type(model).__name__})")
        given = self.config.augment_overrides or {}
        sigma = given.get("sigma", target_sigma(model))  # --aug sigma=... wins over the configs' rule
        self.attach_augment(model, dataclasses.replace(self.augment_config, sigma=sigma))
        return model

    def num_layers(self, model) -> int:
        return 0  # one learning rate for all (no layer decay)

    def train_mode(self, model) -> None:
        model.train()

    def loss(self, model, x: dict):
        """JointsMSELoss of the official code: 0.5 x ViTPose's (its Adam is invariant to the factor)."""
        heatmaps = model(x["pixels"])
        total, _ = joints_mse(heatmaps, x["targets"], x["weights"], x["dataset_index"],
                              [self.keypoint_sets[0].num_keypoints])
        return 0.5 * total, {}


def is_tokenpose_spec(spec) -> bool:
    arch = spec_arch(spec)
    return arch is not None and os.path.basename(arch).startswith("tokenpose")
