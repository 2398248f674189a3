"""TokenPose checkpoints: the official release (github.com/leeyegy/TokenPose; a state dict, possibly
under "state_dict" and with "module." prefixes) and our own format (weights + config), reached
through ``vitpose.load_model``.

From the tensors: the variant family (``transformer.*`` alone: T; ``features.*``: S; ``pre_feature.*``:
B or L, by one or three transformers), width, depth, MLP ratio, keypoint count, HRNet width, the
head layout, the heatmap size and hence the input size, learnable vs sine position embedding.
What they cannot tell comes from the matching Table 1 variant: the head count, the attention scale
rule, sine vs sine-full (the official configs all use sine-full) and the patch shape (only its
area is in the tensors). ``arch="tokenpose-l-d24"`` names the variant when the tensors match none
(or to be explicit); any config field can be overridden (``heads=``, ``patch_size=``,
``pos_embedding="sine"``, ``backend=``).
"""
from __future__ import annotations

import re

import torch

from .tokenpose import ARCHITECTURES, VARIANTS, TokenPose, TokenPoseConfig, variant_key

FAMILY = "tokenpose"


def is_tokenpose(sd: dict, config: dict | None = None) -> bool:
    if config is not None:
        return config.get("family") == FAMILY
    return "transformer.keypoint_token" in sd or "features.keypoint_token" in sd


def _error(msg: str):
    from .checkpoints import CheckpointError
    return CheckpointError(msg)


def _count(sd: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def _heatmap_size(out: int, hints) -> tuple[int, int]:
    """(H/4, W/4) from the flattened heatmap length: the variant's image sizes first, then the 3:4
    aspect of every official COCO config, then square (MPII)."""
    for h, w in hints:
        if (h // 4) * (w // 4) == out:
            return h // 4, w // 4
    from .checkpoints import grid_4x3_or_square
    size = grid_4x3_or_square(out)
    if size is not None:
        return size
    raise _error(f"cannot tell the heatmap size from the head's {out} outputs; pass img_size=(H, W)")


def _family(sd: dict) -> tuple[str, str, int]:
    """(prefix of the token part, backbone, stacks) from the key names."""
    prefix = "features" if "features.keypoint_token" in sd else "transformer"
    hrnet = any(k.startswith("pre_feature.") for k in sd)
    backbone = "stem" if prefix == "features" else ("hrnet" if hrnet else "none")
    stacks = 3 if any(k.startswith(f"{prefix}.transformer1.") for k in sd) else 1
    return prefix, backbone, stacks


def _match_variant(backbone: str, stacks: int, depth: int, patch_area: int) -> str | None:
    if backbone == "none":
        return "T"
    if backbone == "stem":
        return {12: "S-v1", 4: "S-v2"}.get(patch_area)
    if stacks == 1:
        return "B"
    return {2: "L/D6", 8: "L/D24"}.get(depth)


def infer_config(sd: dict, arch: str | None = None, **overrides) -> TokenPoseConfig:
    """A TokenPoseConfig from official-named tensors (see the module docstring)."""
    prefix, backbone, stacks = _family(sd)
    token = sd.get(f"{prefix}.keypoint_token")
    proj = sd.get(f"{prefix}.patch_to_embedding.weight")
    if token is None or token.dim() != 3 or proj is None or proj.dim() != 2:
        some = ", ".join(list(sd)[:8])
        raise _error(f"not a TokenPose checkpoint: no {prefix}.keypoint_token (1, K, d) / "
                     f"{prefix}.patch_to_embedding.weight; first keys: {some}")
    K, dim = token.shape[1], token.shape[2]
    stack = f"{prefix}.transformer1" if stacks == 3 else f"{prefix}.transformer"
    depth = _count(sd, re.escape(stack) + r"\.layers\.(\d+)\.")
    if depth == 0:
        raise _error(f"this TokenPose checkpoint has no {stack}.layers.N.* weights")
    cfg = dict(backbone=backbone, dim=dim, depth=depth, stacks=stacks, num_keypoints=K)
    fc1 = sd.get(f"{stack}.layers.0.1.fn.fn.net.0.weight")
    if fc1 is not None:
        cfg["mlp_ratio"] = fc1.shape[0] // dim
    if backbone == "hrnet":
        t = sd.get("pre_feature.transition1.0.0.weight")
        if t is None:
            raise _error("this TokenPose checkpoint has pre_feature.* weights but no "
                         "pre_feature.transition1.0.0.weight (HRNet stages 1-3 expected)")
        cfg["hrnet_width"] = t.shape[0]
    channels = {"none": 3, "stem": 256, "hrnet": cfg.get("hrnet_width", 0)}[backbone]
    patch_area = proj.shape[1] // channels if channels else 0

    if arch is not None:
        key = variant_key(arch)
        if VARIANTS[key]["backbone"] != backbone or VARIANTS[key].get("stacks", 1) != stacks:
            raise _error(f"arch={arch!r} is TokenPose-{key} ({VARIANTS[key]['backbone']} backbone, "
                         f"{VARIANTS[key].get('stacks', 1)} transformer(s)), but this checkpoint has a "
                         f"{backbone} backbone and {stacks} transformer(s)")
    else:
        key = _match_variant(backbone, stacks, depth, patch_area)
        if key is None and "heads" not in overrides:
            raise _error(f"this TokenPose checkpoint ({backbone} backbone, {stacks} transformer(s) of depth "
                         f"{depth}, patches of {patch_area} pixels) matches no Table 1 variant; pass "
                         f"arch= (one of {', '.join(ARCHITECTURES)}) or heads= and patch_size=")
    variant = VARIANTS.get(key, {})
    if key is not None:
        cfg["heads"] = variant["heads"]
        cfg["scale_with_head"] = variant.get("scale_with_head", True)
        cfg["name"] = f"TokenPose-{key}"
    else:
        cfg["name"] = "TokenPose-custom"

    head = f"{prefix}.mlp_head"
    last = sd.get(f"{head}.3.weight", sd.get(f"{head}.1.weight"))
    if last is None:
        raise _error(f"this TokenPose checkpoint has no {head}.1.weight / {head}.3.weight (its MLP head)")
    two_layer = f"{head}.3.weight" in sd
    img = overrides.get("img_size")
    if img is None:
        hm = _heatmap_size(last.shape[0], variant.get("patch", {(256, 192): None}).keys())
        img = (4 * hm[0], 4 * hm[1])
    cfg["img_size"] = tuple(img)
    if two_layer:
        cfg["hidden_heatmap_dim"] = sd[f"{head}.1.weight"].shape[0]
    else:  # the variant's hidden width if the official rule then picks one layer (L), else any that does
        default = variant.get("hidden_heatmap_dim", 0)
        cfg["hidden_heatmap_dim"] = default if default and dim * stacks > default * 0.5 else 1
    if "patch_size" not in overrides:
        patch = variant.get("patch", {}).get(tuple(img))
        if patch is None or patch[0] * patch[1] != patch_area:
            raise _error(f"cannot tell the patch shape of this TokenPose checkpoint (patches of {patch_area} "
                         f"pixels, input {tuple(img)}); pass patch_size=(ph, pw)")
        cfg["patch_size"] = patch

    pos = sd.get(f"{prefix}.pos_embedding")
    if pos is not None and pos.dim() == 3:
        fh, fw = img if backbone == "none" else (img[0] // 4, img[1] // 4)
        ph, pw = overrides.get("patch_size", cfg.get("patch_size"))
        n = (fh // ph) * (fw // pw)
        cfg["pos_embedding"] = "learnable" if pos.shape[1] == n + K else "sine-full"
    cfg.update(overrides)
    try:
        return TokenPoseConfig(**cfg)
    except ValueError as e:
        raise _error(f"this TokenPose checkpoint gives an invalid config: {e}") from e


def config_from_dict(config: dict) -> TokenPoseConfig:
    d = {k: v for k, v in config.items() if k != "family"}
    return TokenPoseConfig.from_dict(d)


def load_tokenpose(sd: dict, config: dict | None, source: str, *, arch=None, device=None,
                   **overrides) -> TokenPose:
    """A TokenPose in eval mode from a state dict (official or ours) and our config if any."""
    from .checkpoints import load_state_dict_strict
    if config is not None:
        cfg = config_from_dict(config)
        if overrides:
            cfg = cfg.replace(**overrides)
    else:
        cfg = infer_config(sd, arch=arch, **overrides)
    with torch.device("meta"):
        model = TokenPose(cfg)
    c = model.config
    what = (f"{c.name} ({c.backbone} backbone, dim {c.dim}, depth {c.depth}x{c.stacks}, "
            f"{c.pos_embedding} position embedding, img {c.img_size})")
    load_state_dict_strict(model, sd, source, copy=source == "state dict", what=what)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def tokenpose_save_payload(model: TokenPose) -> tuple[dict, dict]:
    """(state dict under the official names, our config dict) for save_model."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return sd, {"family": FAMILY, **model.config.to_dict()}
