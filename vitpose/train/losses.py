"""Heatmap losses: mmpose 0.x JointsMSELoss(use_target_weight=True), per dataset for ViTPose+.

JointsMSELoss = (1/K) sum_k mean_{b, pixels} (w_bk (pred - target))^2. ViTPose+ (TopDownMoE.
forward_train) computes it for every head over the whole batch with the other datasets' samples
zero-weighted, so each dataset's loss is divided by the full batch size B and its own K_d:

    L_d = sum_{b in d} sum_{k < K_d} sum_pixels (w_bk (pred - target))^2 / (B K_d HW),  L = sum_d L_d

With one dataset that is JointsMSELoss itself.
"""
from __future__ import annotations

import torch


def joints_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, dataset_index: torch.Tensor,
               num_keypoints) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """pred, target (B, K, H, W), weight (B, K), dataset_index (B,), num_keypoints: K_d per
    dataset -> (total, [L_d per dataset]). Computed in float32."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    B, K, H, W = pred.shape
    err = ((pred.float() - target.float()) * weight.float()[..., None, None]) ** 2
    per_sample_kp = err.sum((2, 3))                                          # (B, K)
    losses = []
    for d, kd in enumerate(num_keypoints):
        sel = (dataset_index == d).float()[:, None]
        losses.append((per_sample_kp[:, :kd] * sel).sum() / (B * kd * H * W))
    return torch.stack(losses).sum(), losses
