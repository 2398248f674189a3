"""Initialising a ViTPose for training from pre-trained weights: ``load_pretrained(model, path)``.

Two sources, told apart by their key names:

- an MAE-pretrained ViT, the official MAE release format (github.com/facebookresearch/mae):
  ``{"model": {cls_token, pos_embed (1, 1 + 14*14, C), patch_embed.proj.*, blocks.N.*, norm.*}}``
  (the visualisation releases add mask_token and decoder_*). As the official ViTPose does
  (mmcv_custom/checkpoint.py): the keys go to the backbone, the 14x14 position embedding is
  resized bicubically to the pose grid (its class-token slot kept), ViTPose+ experts start from
  the last ``part_features`` rows of fc2 and fc2 keeps the others; cls_token, the final ``norm``
  (ViTPose's ``last_norm`` starts fresh) and MAE's decoder are unused and reported;
- a ViTPose checkpoint (official mmpose .pth, ViTPose+, Hugging Face, ours): everything whose
  shape fits is loaded, the position embedding resized to the model's grid; a decoder whose
  keypoint count differs keeps its fresh initialisation (a new head for a new dataset).

Returns a report: the format, loaded / resized / unused keys, the model's keys left as
initialised, and the new heads. A backbone tensor of a different shape is an error.
"""
from __future__ import annotations

import math
import os
import re

import torch

from .checkpoints import CheckpointError, hf_to_official, is_hf, read_checkpoint, unwrap
from .vitpose import ViTPose, resize_pos_embed

_HEADS = ("keypoint_head.", "associate_keypoint_heads.")


def _grid_of(tokens: int, model_grid) -> tuple[int, int]:
    """The grid of a position embedding of ``tokens`` patch tokens: square (MAE), or the model's
    aspect ratio (a ViTPose checkpoint of another resolution)."""
    s = math.isqrt(tokens)
    if s * s == tokens:
        return s, s
    h, w = model_grid
    for k in range(1, tokens + 1):
        if (h * k) % w == 0 and (h * k // w) * k == tokens:
            return h * k // w, k
    raise CheckpointError(f"cannot tell the grid of a position embedding with {tokens} patch tokens "
                          f"(neither square nor {h}:{w})")


def is_mae(sd: dict) -> bool:
    return any(k.startswith("blocks.") for k in sd) and not any(k.startswith("backbone.") for k in sd)


def _split_experts(sd: dict, target: dict, cfg) -> tuple[dict, list[str]]:
    """ViTPose+ from a checkpoint without experts (e.g. MAE): as the official loader, every expert
    starts from the last part_features rows of fc2, which keeps the others."""
    sd, notes = dict(sd), []
    part = cfg.part_features
    for k in list(sd):
        m = re.fullmatch(r"(backbone\.blocks\.\d+\.mlp\.)fc2\.(weight|bias)", k)
        if not m or sd[k].shape[0] != cfg.embed_dim or f"{m.group(1)}experts.0.{m.group(2)}" in sd:
            continue
        full = sd[k]
        sd[k] = full[:-part]
        for e in range(cfg.experts):
            sd[f"{m.group(1)}experts.{e}.{m.group(2)}"] = full[-part:]
        if m.group(2) == "weight":
            notes.append(f"{m.group(1)}fc2: last {part} rows -> {cfg.experts} experts")
    return sd, notes


def load_pretrained(model: ViTPose, source) -> dict:
    """Fill ``model`` (in place) from an MAE or ViTPose checkpoint (path or state dict); the report."""
    if isinstance(source, (str, os.PathLike)):
        sd, _ = read_checkpoint(source)
        where = os.fspath(source)
    else:
        sd, _ = unwrap(source)
        where = "state dict"
    unknown = []
    if is_hf(sd):
        sd, unknown = hf_to_official(sd)
    mae = is_mae(sd)
    if mae:
        sd = {f"backbone.{k}": v for k, v in sd.items()}
    target = model.state_dict()
    cfg = model.config
    new, resized, unused, heads = {}, [], list(unknown), set()
    if cfg.experts > 1:
        sd, split = _split_experts(sd, target, cfg)
        resized += split
    for k, v in sd.items():
        if k == "backbone.pos_embed" and k in target and v.shape != target[k].shape:
            if v.dim() != 3 or v.shape[-1] != target[k].shape[-1]:
                raise CheckpointError(f"{where}: {k} is {tuple(v.shape)}, the model's {tuple(target[k].shape)}")
            old = _grid_of(v.shape[1] - 1, cfg.grid)
            v = resize_pos_embed(v.float(), old, cfg.grid)
            resized.append(f"{k}: {old[0]}x{old[1]} -> {cfg.grid[0]}x{cfg.grid[1]}")
        if k not in target:
            unused.append(k)
            continue
        if v.shape != target[k].shape:
            if k.startswith(_HEADS):
                heads.add(k.rsplit(".final_layer", 1)[0].split(".deconv_layers")[0])
                continue
            raise CheckpointError(f"{where}: {k} is {tuple(v.shape)} in the checkpoint but {tuple(target[k].shape)} "
                                  f"in the model ({cfg.name}, {cfg.embed_dim}-d, depth {cfg.depth})")
        new[k] = v
    # A head of a new keypoint count is left to its initialisation as a whole (not half-loaded).
    for h in heads:
        for k in list(new):
            if k.startswith(h + "."):
                del new[k]
    missing = sorted(k for k in target if k not in new and not k.endswith("num_batches_tracked"))
    with torch.no_grad():
        for k, v in new.items():
            target[k].copy_(v.to(target[k].dtype))
    if not new:
        raise CheckpointError(f"{where}: nothing in it fits this model (first keys: {list(sd)[:6]})")
    return {"source": where, "format": "mae" if mae else "vitpose", "loaded": len(new), "resized": resized,
            "unused": sorted(unused), "missing": missing, "new_heads": sorted(heads)}


def format_report(report: dict, limit: int = 8) -> str:
    def short(keys):
        return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    lines = [f"init from {report['source']} ({report['format']}): {report['loaded']} tensors loaded"]
    for name in ("resized", "unused", "missing", "new_heads"):
        if report[name]:
            label = {"unused": "unused (in the file, not in the model)", "missing": "left as initialised",
                     "new_heads": "new heads (keypoint count differs)", "resized": "resized"}[name]
            lines.append(f"  {label}: {short(report[name])}")
    return "\n".join(lines)
