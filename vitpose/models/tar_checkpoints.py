"""TAR-ViTPose checkpoints: the official release (github zgspose/TARViTPose) and our format.

The official training script saves ``{"epoch", "model_state_dict", "optimizer_state_dict",
"scheduler_state_dict"}``. Its model holds the whole mmpose 1.x TopdownPoseEstimator as ``model``
and also registers that model's backbone and head pieces under its own names, so every encoder and
decoder tensor is stored twice:

    model.backbone.<mmpretrain ViT>   ==  backbone.<mmpretrain ViT>
    model.head.deconv_layers.N.*      ==  heatmap_head.0.N.*
    model.head.final_layer.*          ==  heatmap_head.1.*

The encoder is ``mmpretrain.VisionTransformer`` (patch_embed.projection, layers.N.ln1 / attn.qkv /
attn.proj / ln2 / ffn.layers.0.0 / ffn.layers.1, final ln1) with a (1, h*w, C) position embedding
and no class-token slot; ours has the slot of the original ViTPose (added to every token), so it
gets a zero there. The temporal modules' names are ours already.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch

from .checkpoints import CheckpointError, _grid_from_tokens, _listing, load_state_dict_strict
from .configs import SIZES, num_heads_for
from .tar_vitpose import TARViTPose, TARViTPoseConfig, tar_vitpose_config

ARCHS = ("tar-vitpose", "tar-vitpose-s", "tar-vitpose-b", "tar-vitpose-l", "tar-vitpose-h")
TEMPORAL_PREFIXES = ("query_feat.", "query_pe.", "masked_attention_layers.", "self_attention_layers.",
                     "ffn_layers.", "cross_attention.")

_MMPRETRAIN_BLOCK = {"ln1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "ln2": "norm2",
                     "ffn.layers.0.0": "mlp.fc1", "ffn.layers.1": "mlp.fc2"}
_MMPRETRAIN_TOP = {"patch_embed.projection": "patch_embed.proj", "ln1": "last_norm"}


def is_tar_state_dict(sd: dict) -> bool:
    return "query_feat.weight" in sd


def is_official(sd: dict) -> bool:
    return any(k.startswith(("model.backbone.", "heatmap_head.", "model.head.")) for k in sd) or \
        any(re.match(r"backbone\.layers\.\d+\.", k) for k in sd)


# ------------------------------------------------------------------------------------------------
# Official file -> our names
# ------------------------------------------------------------------------------------------------
def _merge_copies(sd: dict, source: str) -> tuple[dict, dict]:
    """One tensor per encoder / decoder weight from the file's repeated copies.
    Returns ({mmpretrain name: tensor}, {mmpose head name: tensor}); the copies must agree."""
    backbone, head, clashes = {}, {}, []

    def put(store, key, value, name):
        if key in store and not torch.equal(store[key][0], value):
            clashes.append(f"{store[key][1]} != {name}")
        store.setdefault(key, (value, name))

    for k, v in sd.items():
        if k.startswith("model.backbone."):
            put(backbone, k[len("model.backbone."):], v, k)
        elif k.startswith("backbone."):
            put(backbone, k[len("backbone."):], v, k)
        elif k.startswith("model.head."):
            put(head, k[len("model.head."):], v, k)
        elif k.startswith("heatmap_head.0."):
            put(head, "deconv_layers." + k[len("heatmap_head.0."):], v, k)
        elif k.startswith("heatmap_head.1."):
            put(head, "final_layer." + k[len("heatmap_head.1."):], v, k)
    if clashes:
        raise CheckpointError(f"{source}: the repeated copies of a tensor differ (not a file saved by the "
                              f"official TAR_ViTPose): {_listing(clashes, 5)}")
    return {k: v for k, (v, _) in backbone.items()}, {k: v for k, (v, _) in head.items()}


def official_to_ours(sd: dict, source: str = "checkpoint") -> OrderedDict:
    """The official TAR_ViTPose state dict under this package's names; unknown keys raise."""
    backbone, head = _merge_copies(sd, source)
    out, unknown = OrderedDict(), []
    for k, v in backbone.items():
        m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", k)
        prefix, _, leaf = k.rpartition(".")
        if m and m.group(2) in _MMPRETRAIN_BLOCK:
            out[f"backbone.blocks.{m.group(1)}.{_MMPRETRAIN_BLOCK[m.group(2)]}.{m.group(3)}"] = v
        elif prefix in _MMPRETRAIN_TOP and leaf in ("weight", "bias"):
            out[f"backbone.{_MMPRETRAIN_TOP[prefix]}.{leaf}"] = v
        elif k == "pos_embed":
            if v.dim() != 3 or v.shape[0] != 1:
                raise CheckpointError(f"{source}: backbone.pos_embed must be (1, h*w, C), got {tuple(v.shape)}")
            # mmpretrain with with_cls_token=False: no class-token slot. Ours adds slot 0 to every
            # token, so a zero slot computes the same.
            out["backbone.pos_embed"] = torch.cat([v.new_zeros(1, 1, v.shape[2]), v], dim=1)
        else:
            unknown.append(f"backbone.{k}")
    for k, v in head.items():
        if re.fullmatch(r"(deconv_layers\.\d+|final_layer)\.(weight|bias|running_mean|running_var|"
                        r"num_batches_tracked)", k):
            out[f"keypoint_head.{k}"] = v
        else:
            unknown.append(f"model.head.{k}")
    for k, v in sd.items():
        if k.startswith(TEMPORAL_PREFIXES):
            out[k] = v
        elif not k.startswith(("model.backbone.", "backbone.", "model.head.", "heatmap_head.")):
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"{source}: keys that are not part of TAR-ViTPose ({len(unknown)}): "
                              f"{_listing(unknown)}")
    return out


# ------------------------------------------------------------------------------------------------
# Config from tensor shapes
# ------------------------------------------------------------------------------------------------
def infer_tar_config(sd: dict, arch: str = "tar-vitpose", source: str = "checkpoint",
                     **overrides) -> TARViTPoseConfig:
    """A TARViTPoseConfig from our-named tensors (after ``official_to_ours``). The size must match
    ``arch`` when it names one; what tensors cannot tell (heads of a custom width, frames, input
    size, threshold) comes from ``overrides`` or the official defaults."""
    def need(key):
        if key not in sd:
            raise CheckpointError(f"{source}: missing {key} (keys present: {_listing(sd, 8)})")
        return sd[key]

    C = need("backbone.patch_embed.proj.weight").shape[0]
    depth = 1 + max((int(m.group(1)) for k in sd for m in [re.match(r"backbone\.blocks\.(\d+)\.", k)] if m),
                    default=-1)
    final = need("keypoint_head.final_layer.weight")
    deconvs = sorted(int(m.group(1)) for k in sd
                     for m in [re.fullmatch(r"keypoint_head\.deconv_layers\.(\d+)\.weight", k)]
                     if m and sd[k].dim() == 4)
    jta = 1 + max((int(m.group(1)) for k in sd for m in [re.match(r"masked_attention_layers\.(\d+)\.", k)] if m),
                  default=-1)
    if depth < 1 or jta < 1:
        raise CheckpointError(f"{source}: a TAR-ViTPose checkpoint needs backbone blocks and JTA layers; "
                              f"found {depth} encoder blocks and {jta} masked_attention_layers")
    size = arch[len("tar-vitpose-"):].upper() if arch != "tar-vitpose" else None
    if size is not None and (SIZES[size]["embed_dim"], SIZES[size]["depth"]) != (C, depth):
        raise CheckpointError(f"{source}: {arch} is ViT-{size} (C={SIZES[size]['embed_dim']}, depth "
                              f"{SIZES[size]['depth']}) but the checkpoint has C={C}, depth {depth}; "
                              "load it with arch='tar-vitpose' (size read from the tensors)")
    grid = _grid_from_tokens(need("backbone.pos_embed").shape[1] - 1)
    vit = dict(embed_dim=C, depth=depth, num_heads=num_heads_for(C),
               mlp_ratio=need("backbone.blocks.0.mlp.fc1.weight").shape[0] / C,
               qkv_bias="backbone.blocks.0.attn.qkv.bias" in sd, num_keypoints=final.shape[0],
               img_size=(grid[0] * 16, grid[1] * 16), head="classic" if deconvs or final.shape[-1] == 1 else "simple")
    if deconvs:
        vit["deconv_channels"] = sd[f"keypoint_head.deconv_layers.{deconvs[0]}.weight"].shape[1]
    own = dict(jta_layers=jta, ffn_ratio=need("ffn_layers.0.fc1.weight").shape[0] / C)
    vit_overrides = {k: overrides.pop(k) for k in list(overrides) if k not in TARViTPoseConfig.__dataclass_fields__}
    vit.update(vit_overrides)
    own.update(overrides)
    base = size or next((n for n, s in SIZES.items() if s["embed_dim"] == C), "B")
    cfg = tar_vitpose_config(base, **vit, **own)
    if size is not None:
        cfg.name = f"TAR-ViTPose-{size}"
    return cfg


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def load_tar_model(sd: dict, config: dict | None = None, *, arch: str = "tar-vitpose",
                   source: str = "state dict", device=None, **overrides) -> TARViTPose:
    """A TARViTPose in eval mode from an official or our state dict (see ``vitpose.load_model``)."""
    arch = arch.lower()
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if is_official(sd):
        sd = official_to_ours(sd, source)
    unknown = [k for k in sd if not k.startswith(("backbone.", "keypoint_head.", *TEMPORAL_PREFIXES))]
    if unknown:
        raise CheckpointError(f"{source}: keys that are not part of TAR-ViTPose ({len(unknown)}): "
                              f"{_listing(unknown)}")
    if config is not None:
        cfg = TARViTPoseConfig.from_dict(config)
        if overrides:
            d = cfg.to_dict()
            vit = {k: overrides.pop(k) for k in list(overrides) if k not in TARViTPoseConfig.__dataclass_fields__}
            d["vit"] = cfg.vit.replace(**vit).to_dict()
            d.update(overrides)
            cfg = TARViTPoseConfig.from_dict(d)
    else:
        cfg = infer_tar_config(sd, arch, source, **overrides)
    with torch.device("meta"):
        model = TARViTPose(cfg)
    load_state_dict_strict(model, sd, source, copy=source == "state dict")
    model.eval()
    if device is not None:
        model.to(device)
    return model

