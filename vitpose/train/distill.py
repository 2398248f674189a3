"""Knowledge transfer from a larger ViTPose (paper Sec. 3.4, Table 8).

- output distillation (Eq. 4): the student also regresses the frozen teacher's heatmaps,
  L = MSE(S(X), K_gt) + weight * MSE(S(X), T(X)), the teacher seeing the same augmented crops;
- knowledge token, Eq. 5: a token appended to a trained, frozen teacher is the only thing trained
  (``token_training``); Eq. 6: that token, frozen, joins the student's tokens while the student
  trains (``attach_token``). Both together: a token and a teacher (Eq. 6, L^tod).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..models.knowledge import add_knowledge_token, attach_knowledge_token, prepare_token_training


def load_teacher(path, device, student) -> nn.Module:
    """A frozen ViTPose teacher in eval mode that sees the student's crops (same input size and
    heatmap size); its BatchNorm folded (inference only)."""
    from ..models.checkpoints import load_model
    teacher = load_model(path)
    if tuple(teacher.config.img_size) != tuple(student.config.img_size):
        raise ValueError(f"--teacher {path}: its input is {teacher.config.img_size}, the student's "
                         f"{student.config.img_size}; output distillation needs the same crops")
    if teacher.config.head_keypoints[: len(student.config.head_keypoints)] != student.config.head_keypoints:
        raise ValueError(f"--teacher {path}: its heads predict {teacher.config.head_keypoints} keypoints, the "
                         f"student's {student.config.head_keypoints}")
    teacher.fold_batchnorm().eval().requires_grad_(False)
    return teacher.to(device)


def distillation_mse(student: torch.Tensor, teacher: torch.Tensor, dataset_index, num_keypoints) -> torch.Tensor:
    """Eq. 4 as the JointsMSELoss with weight 1 for every keypoint of the sample's dataset."""
    from .losses import joints_mse
    K = student.shape[1]
    counts = torch.as_tensor(list(num_keypoints), device=student.device)[dataset_index]
    weight = (torch.arange(K, device=student.device)[None] < counts[:, None]).float()
    return joints_mse(student, teacher[:, :K].to(student.dtype), weight, dataset_index, num_keypoints)[0]


def token_training(model, num_tokens: int) -> list[nn.Parameter]:
    """Eq. 5: freeze everything, add ``num_tokens`` fresh tokens (if the model has none), train those."""
    return prepare_token_training(model, num_tokens)


def attach_token(model, source, resuming: bool = False) -> None:
    """Eq. 6: the trained token from ``source`` (a token file from save_knowledge_token, or a model
    checkpoint holding one), frozen. When resuming, the checkpoint brings its value: only its
    shape is needed, so the source file may be gone."""
    if resuming and not os.path.exists(source):
        return
    if str(source).endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(str(source), framework="pt") as f:
            if "knowledge_token" in f.keys():
                attach_knowledge_token(model, f.get_tensor("knowledge_token"))
                return
    from ..models.checkpoints import load_model
    attach_knowledge_token(model, load_model(source))


def ensure_token_slot(model, num_tokens: int, trainable: bool) -> None:
    """Resuming: a token parameter of the checkpoint's shape (its value comes from the checkpoint)."""
    if model.backbone.knowledge_token is None:
        add_knowledge_token(model, num_tokens)
    model.backbone.knowledge_token.requires_grad_(trainable)
