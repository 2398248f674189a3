"""Optimizer and learning-rate schedule of the recipe.

Parameter groups follow mmcv_custom/layer_decay_optimizer_constructor.py of the official ViTPose
(LayerDecayOptimizerConstructor): with L = depth + 2 "layers", the patch embedding, position
embedding (and cls/mask tokens) are layer 0, block i is layer i + 1, everything else (last norm,
decoders) layer L - 1; a group's lr is base_lr * rate ** (L - 1 - layer). A parameter has no
weight decay when it is 1-D (norms), a bias, or a position embedding. Groups are named
``layer_{id}_{decay|no_decay}`` in first-seen order, frozen parameters are skipped, as there.

Two additions for parameters the official ViT does not have, both in the spirit of its config's
custom_keys (``relative_position_bias_table: decay_mult 0``): relative-position tables
(``rel_pos_h/w``) and the knowledge token have no weight decay; the knowledge token, like any
name outside the backbone's embeddings and blocks in the official rule, sits in the last layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .recipe import Recipe

_EMBEDDINGS = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")


def layer_id(name: str, num_layers: int) -> int:
    """The official get_num_layer_for_vit(name, num_layers + 2) for a depth-``num_layers`` ViT."""
    if name in _EMBEDDINGS or name.startswith("backbone.patch_embed"):
        return 0
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return (param.dim() == 1 or name.endswith(".bias") or "pos_embed" in name
            or "rel_pos_" in name or name.endswith("knowledge_token"))


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None,
                             num_layers: int) -> list[dict]:
    """mmcv's LayerDecayOptimizerConstructor groups: dicts with params, param_names, lr, lr_scale,
    weight_decay, group_name. layer_decay=None: one lr (every scale 1)."""
    L = num_layers + 2
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not no_weight_decay(name, p)
        lid = layer_id(name, num_layers)
        key = f"layer_{lid}_{'decay' if decay else 'no_decay'}"
        if key not in groups:
            scale = 1.0 if layer_decay is None else layer_decay ** (L - lid - 1)
            groups[key] = {"params": [], "param_names": [], "lr_scale": scale, "lr": lr * scale,
                           "weight_decay": weight_decay if decay else 0.0, "group_name": key}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, recipe: Recipe, num_layers: int) -> torch.optim.Optimizer:
    groups = layer_decay_param_groups(model, recipe.lr, recipe.weight_decay, recipe.layer_decay, num_layers)
    if not groups:
        raise ValueError("the model has no trainable parameter (everything frozen?)")
    for g in groups:
        g["initial_lr"] = g["lr"]  # what the schedule scales, as mmcv's lr hooks do
    kind = recipe.optimizer.lower()
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas), weight_decay=recipe.weight_decay)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, betas=tuple(recipe.betas))
    raise ValueError(f"recipe optimizer must be 'adamw' or 'adam', got {recipe.optimizer!r}")


class Schedule:
    """Learning-rate factor of iteration i in epoch e, as mmcv's lr hooks compute it: the regular
    factor per epoch ('step': gamma ** (number of milestones <= e); 'cosine': half a cosine over
    the epochs, per iteration), times linear warmup 1 - (1 - i / W) (1 - ratio) while i < W."""

    def __init__(self, recipe: Recipe, steps_per_epoch: int):
        if recipe.schedule not in ("step", "cosine"):
            raise ValueError(f"recipe schedule must be 'step' or 'cosine', got {recipe.schedule!r}")
        self.recipe, self.steps_per_epoch = recipe, max(1, steps_per_epoch)

    def factor(self, iteration: int, epoch: int) -> float:
        r = self.recipe
        if r.schedule == "step":
            regular = r.lr_gamma ** sum(epoch >= s for s in r.lr_steps)
        else:
            total = r.epochs * self.steps_per_epoch
            regular = 0.5 * (1 + math.cos(math.pi * min(iteration, total) / total))
        if iteration < r.warmup_iters:
            regular *= 1 - (1 - iteration / r.warmup_iters) * (1 - r.warmup_ratio)
        return regular

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int, epoch: int) -> float:
        """Set every group's lr; returns the base lr (the layer-1.0 group's)."""
        f = self.factor(iteration, epoch)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f
        return self.recipe.lr * f
