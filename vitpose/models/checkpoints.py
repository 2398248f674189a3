"""Checkpoints: the official ViTPose / ViTPose+ release (mmpose 0.x .pth), the Hugging Face
transformers VitPose format, and our own format (weights + config), all through one entry point:

    model = vitpose.load_model("vitpose-b.pth")   # eval mode; model(crops) -> heatmaps

Size, decoder, experts, heads, knowledge token and relative position are read from the tensors'
names and shapes (our format stores its config). Files are read with ``torch.load(weights_only=True)``
or safetensors; nothing is fetched from the network. Unknown or missing keys raise an error that
lists them.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import OrderedDict

import torch

from .configs import SIZES, ViTPoseConfig, num_heads_for
from ..data.keypoints import VITPOSE_PLUS_DATASETS, keypoint_set
from .vitpose import ViTPose, resize_pos_embed

STANDARD_WIDTHS = {size['embed_dim'] for size in SIZES.values()}  # whose head counts are known

FORMAT = "vitpose"
IGNORED_KEYS = ("backbone.cls_token",)  # in some official files; ViTPose never uses it


class CheckpointError(ValueError):
    """A checkpoint that cannot become a ViTPose model; the message says why."""


# ------------------------------------------------------------------------------------------------
# Reading and writing files
# ------------------------------------------------------------------------------------------------
def read_checkpoint(path) -> tuple[dict, dict | None]:
    """(state_dict, our config dict or None) from a .safetensors or torch file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"could not read {path} as safetensors: {e}") from e
        config = json.loads(meta["config"]) if meta.get("format") == FORMAT and "config" in meta else None
        return sd, config
    not_torch = _not_a_torch_file(path)
    if not_torch:
        raise CheckpointError(f"could not read checkpoint {path}: it is not a PyTorch checkpoint: {not_torch}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Unsupported global" in str(e):  # a class the weights-only unpickler will not build
            raise CheckpointError(
                f"could not read checkpoint {path}: {type(e).__name__}: {e}\nThe file pickles objects beyond "
                "tensors (e.g. an optimizer or mmcv meta). If you trust it, re-save only its weights once:\n"
                "  sd = torch.load(F, weights_only=False)['state_dict']; torch.save(sd, 'clean.pth')") from e
        # torch's weights-only message suggests weights_only=False, which cannot help a damaged file:
        # keep only the unpickler's own complaint.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0] if lines else "no message")
        raise CheckpointError(f"could not read checkpoint {path}: the file is damaged (truncated or corrupt) or "
                              f"not a PyTorch checkpoint ({type(e).__name__}: {detail[:300]})") from e
    return unwrap(obj, source=path)


def _not_a_torch_file(path: str) -> str | None:
    """Why `path` cannot be a torch.save file, judged by its first bytes (None: it may be)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip, or a legacy pickle
        return None
    return (f"it is neither a zip archive (torch.save) nor a pickle (it starts with {head!r}): a damaged file, "
            "or another format (.safetensors files need that extension)")


def unwrap(obj, source="state dict") -> tuple[dict, dict | None]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    config = None
    if obj.get("format") == FORMAT:
        config = obj.get("config")
    for key in ("state_dict", "model", "module", "model_state_dict"):  # last: TAR-ViTPose training files
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = OrderedDict()
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor")
        sd[k[len("module."):] if k.startswith("module.") else k] = v
    return sd, config


def save_model(model, path) -> None:
    """Our format: .safetensors (config in the metadata) or a torch file {format, config, state_dict}.
    Both load with load_model; the key names are the official ones. ViTPose or TokenPose."""
    from .tokenpose import TokenPose
    path = os.fspath(path)
    if isinstance(model, TokenPose):
        from .tokenpose_checkpoints import tokenpose_save_payload
        sd, config = tokenpose_save_payload(model)
    else:
        if model.folded:
            raise ValueError("save_model: this model's BatchNorm is folded (inference only); save it before "
                             "fold_batchnorm()")
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        config = model.config.to_dict()
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(sd, path, metadata={"format": FORMAT, "config": json.dumps(config)})
    else:
        torch.save({"format": FORMAT, "config": config, "state_dict": sd}, path)


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers VitPose <-> official names
# ------------------------------------------------------------------------------------------------
_HF_BLOCK = {
    "layernorm_before": "norm1", "attention.output.dense": "attn.proj", "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_HF_TOP = {
    "backbone.embeddings.patch_embeddings.projection": "backbone.patch_embed.proj",
    "backbone.embeddings.position_embeddings": "backbone.pos_embed",
    "backbone.layernorm": "backbone.last_norm",
    "head.deconv1": "keypoint_head.deconv_layers.0", "head.batchnorm1": "keypoint_head.deconv_layers.1",
    "head.deconv2": "keypoint_head.deconv_layers.3", "head.batchnorm2": "keypoint_head.deconv_layers.4",
    "head.conv": "keypoint_head.final_layer",
}


def is_hf(sd: dict) -> bool:
    return any(k.startswith(("backbone.embeddings.", "backbone.encoder.")) for k in sd)


def hf_to_official(sd: dict) -> tuple[dict, list[str]]:
    """HF VitPoseForPoseEstimation state dict -> official names (q, k, v fused into qkv).
    Returns (state_dict, keys it does not know)."""
    out, unknown, qkv = OrderedDict(), [], {}
    for k, v in sd.items():
        m = re.fullmatch(r"backbone\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", k)
        if m:
            i, inner, kind = m.groups()
            part = re.fullmatch(r"attention\.attention\.(query|key|value)", inner)
            if part:
                qkv.setdefault((i, kind), {})[part.group(1)] = v
                continue
            if inner in _HF_BLOCK or re.fullmatch(r"mlp\.experts\.\d+", inner):
                out[f"backbone.blocks.{i}.{_HF_BLOCK.get(inner, inner)}.{kind}"] = v
                continue
        else:
            prefix, _, leaf = k.rpartition(".")
            if k in _HF_TOP:
                out[_HF_TOP[k]] = v
                continue
            if prefix in _HF_TOP:
                out[f"{_HF_TOP[prefix]}.{leaf}"] = v
                continue
        unknown.append(k)
    for (i, kind), parts in qkv.items():
        absent = [p for p in ("query", "key", "value") if p not in parts]
        if absent:  # q, k and v become one qkv tensor: all three or none
            names = ", ".join(f"backbone.encoder.layer.{i}.attention.attention.{p}.{kind}" for p in absent)
            raise CheckpointError(f"Hugging Face checkpoint: missing keys {names} (layer {i} has "
                                  f"{sorted(parts)} of query/key/value {kind})")
        out[f"backbone.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out, unknown


def hf_state_dict(model: ViTPose) -> dict:
    """Our model's weights under HF transformers' VitPoseForPoseEstimation names (COCO head only)."""
    inverse_top = {v: k for k, v in _HF_TOP.items()}
    inverse_block = {v: k for k, v in _HF_BLOCK.items()}
    out = OrderedDict()
    C = model.config.embed_dim
    for k, v in model.state_dict().items():
        if k.startswith("associate_keypoint_heads."):
            continue
        m = re.fullmatch(r"backbone\.blocks\.(\d+)\.(.+)\.(weight|bias)", k)
        if m:
            i, inner, kind = m.groups()
            base = f"backbone.encoder.layer.{i}"
            if inner == "attn.qkv":
                for j, p in enumerate(("query", "key", "value")):
                    out[f"{base}.attention.attention.{p}.{kind}"] = v[j * C:(j + 1) * C]
            elif inner in inverse_block:
                out[f"{base}.{inverse_block[inner]}.{kind}"] = v
            elif re.fullmatch(r"mlp\.experts\.\d+", inner):
                out[f"{base}.{inner}.{kind}"] = v
            else:
                raise ValueError(f"{k} has no Hugging Face counterpart")
            continue
        prefix, _, leaf = k.rpartition(".")
        if k in inverse_top:
            out[inverse_top[k]] = v
        elif prefix in inverse_top:
            out[f"{inverse_top[prefix]}.{leaf}"] = v
        else:
            raise ValueError(f"{k} has no Hugging Face counterpart")
    return out


# ------------------------------------------------------------------------------------------------
# Config from tensor shapes
# ------------------------------------------------------------------------------------------------
def grid_4x3_or_square(n: int) -> tuple[int, int] | None:
    """(H, W) of n cells laid out 4:3 (the grids of 256x192 crops) or else square; None if neither."""
    k = math.isqrt(n // 12)
    if 12 * k * k == n:
        return 4 * k, 3 * k
    s = math.isqrt(n)
    if s * s == n:
        return s, s
    return None


def _grid_from_tokens(n: int) -> tuple[int, int]:
    """The token grid of a position embedding: 4:3 (the usual 256x192) or square."""
    grid = grid_4x3_or_square(n)
    if grid is not None:
        return grid
    raise CheckpointError(f"cannot tell the token grid from a position embedding of {n} tokens; "
                          "pass img_size=(H, W) and patch_stride to load_model")


def _head_keys(prefix: str, sd: dict) -> dict:
    deconvs = sorted(int(m.group(1)) for k in sd
                     for m in [re.fullmatch(re.escape(prefix) + r"\.deconv_layers\.(\d+)\.weight", k)]
                     if m and sd[k].dim() == 4)
    final = sd.get(f"{prefix}.final_layer.weight")
    return dict(deconvs=deconvs, final=final)


def infer_config(sd: dict, **overrides) -> tuple[ViTPoseConfig, tuple[int, int]]:
    """A ViTPoseConfig from official-named tensors; returns it and the checkpoint's token grid."""
    proj = sd.get("backbone.patch_embed.proj.weight")
    if proj is None or proj.dim() != 4 or "backbone.pos_embed" not in sd:
        some = ", ".join(list(sd)[:8])
        raise CheckpointError("this is not a ViTPose checkpoint: it has no backbone.patch_embed.proj.weight "
                              f"/ backbone.pos_embed (official, ViTPose+, HF or vitpose format); first keys: {some}")
    C, patch = proj.shape[0], proj.shape[-1]
    depth = 1 + max((int(m.group(1)) for k in sd for m in [re.match(r"backbone\.blocks\.(\d+)\.", k)] if m),
                    default=-1)
    if depth == 0:
        raise CheckpointError("this checkpoint has a patch embedding but no backbone.blocks.N.* layers")
    cfg = dict(embed_dim=C, depth=depth, patch_size=patch, qkv_bias="backbone.blocks.0.attn.qkv.bias" in sd)
    fc1 = sd.get("backbone.blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        cfg["mlp_ratio"] = fc1.shape[0] / C
    experts = sorted({int(m.group(1)) for k in sd for m in [re.match(r"backbone\.blocks\.0\.mlp\.experts\.(\d+)\.weight", k)] if m})
    if experts:
        cfg["experts"] = len(experts)
        cfg["part_features"] = sd["backbone.blocks.0.mlp.experts.0.weight"].shape[0]
    rel = [(k, v) for k, v in sd.items() if k.endswith("attn.rel_pos_h")]
    if rel:
        cfg["rel_pos"] = True
        rh = rel[0][1]
        rw = sd[rel[0][0][:-1] + "w"]
        cfg["window"] = ((rh.shape[0] + 1) // 2, (rw.shape[0] + 1) // 2)
        cfg["num_heads"] = C // rh.shape[1]
        full = [i for i in range(depth) if f"backbone.blocks.{i}.attn.rel_pos_h" not in sd]
        if full:
            every = full[0] + 1
            if full == [i for i in range(depth) if (i + 1) % every == 0]:
                cfg["full_every"] = every
    if "num_heads" not in cfg and "num_heads" not in overrides:
        cfg["num_heads"] = num_heads_for(C)
        if C not in STANDARD_WIDTHS:
            warnings.warn(
                f"this checkpoint's width embed_dim={C} is not a standard ViTPose size, and the weights do not "
                f"store the head count: assuming num_heads={cfg['num_heads']}. If that is wrong the heatmaps are "
                f"wrong with no other error: pass num_heads= to load_model, or keep the Hugging Face config.json "
                "beside the weights.", stacklevel=3)
    token = sd.get("backbone.knowledge_token")
    if token is not None:
        cfg["num_knowledge_tokens"] = token.shape[1]

    head = _head_keys("keypoint_head", sd)
    if head["final"] is None:
        raise CheckpointError("this checkpoint has no keypoint_head.final_layer.weight (a backbone only?); "
                              "ViTPose needs its decoder")
    if head["deconvs"]:
        cfg["head"] = "classic"
        cfg["deconv_channels"] = sd[f"keypoint_head.deconv_layers.{head['deconvs'][0]}.weight"].shape[1]
        cfg["patch_stride"] = 4 * 2 ** len(head["deconvs"])  # the decoder upsamples back to 1/4
    else:
        cfg["head"] = "classic" if head["final"].shape[-1] == 1 else "simple"
        cfg["patch_stride"] = patch
    counts = [head["final"].shape[0]]
    i = 0
    while f"associate_keypoint_heads.{i}.final_layer.weight" in sd:
        counts.append(sd[f"associate_keypoint_heads.{i}.final_layer.weight"].shape[0])
        i += 1
    plus = [keypoint_set(d).num_keypoints for d in VITPOSE_PLUS_DATASETS]
    if len(counts) > 1 and counts == plus[: len(counts)]:
        cfg["datasets"] = VITPOSE_PLUS_DATASETS[: len(counts)]
    elif len(counts) > 1:
        from .configs import _custom_dataset
        cfg["datasets"] = tuple(_custom_dataset(k) for k in counts)
    else:
        cfg["num_keypoints"] = counts[0]

    stride = overrides.get("patch_stride", cfg["patch_stride"])
    ckpt_grid = _grid_from_tokens(sd["backbone.pos_embed"].shape[1] - 1)
    cfg["img_size"] = (ckpt_grid[0] * stride, ckpt_grid[1] * stride)
    size = [n for n, s in SIZES.items() if s["embed_dim"] == C and s["depth"] == depth]
    cfg["name"] = (f"ViTPose{'+' if experts else ''}-{size[0]}" if size else "custom")
    if size:  # the paper's stochastic depth of that size, for finetuning a loaded model
        cfg["drop_path_rate"] = SIZES[size[0]]["drop_path_rate"]
    cfg.update(overrides)
    if "patch_stride" in overrides and "patch_padding" not in overrides:
        cfg["patch_padding"] = None
    return ViTPoseConfig(**cfg), ckpt_grid


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def _listing(keys, limit=20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(model, sd: dict, source: str = "checkpoint", copy: bool = False,
                           what: str | None = None) -> None:
    """Fill a (meta-device) model from sd, which must match it key for key and shape for shape.
    copy=True: the model gets its own tensors (a caller's state dict is never aliased). ``what``
    describes the model in the error (default: a ViTPose's size and decoder)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unknown = [k for k in sd if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or unknown or shapes:
        what = what or (f"{model.config.name} ({model.config.embed_dim}-d, depth {model.config.depth}, "
                        f"{model.config.head} decoder)")
        lines = [f"{source} does not match {what}:"]
        if unknown:
            lines.append(f"  unknown keys ({len(unknown)}): {_listing(unknown)}")
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes[:10]))
        raise CheckpointError("\n".join(lines))
    sd = {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype, copy=copy)
          for k, v in sd.items()}
    for k, v in expected.items():  # e.g. BatchNorm's num_batches_tracked, absent from some files
        if k not in sd:
            sd[k] = torch.zeros(v.shape, dtype=v.dtype)
    model.load_state_dict(sd, strict=True, assign=True)


def _weights_file(path: str) -> str:
    """A file as given; a folder (e.g. a Hugging Face snapshot) -> its weights file."""
    if not os.path.isdir(path):
        return path
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in the folder {path}")


def _hf_config_hints(weights: str) -> dict:
    """Head count and LayerNorm eps from a Hugging Face config.json beside the weights, if any."""
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.json")
    try:
        with open(path) as f:
            backbone = json.load(f).get("backbone_config") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    hints = {}
    if isinstance(backbone.get("num_attention_heads"), int):
        hints["num_heads"] = backbone["num_attention_heads"]
    if isinstance(backbone.get("layer_norm_eps"), float):
        hints["layer_norm_eps"] = backbone["layer_norm_eps"]
    return hints


def load_model(path_or_state_dict, arch: str | None = None, *, device=None, **overrides):
    """A ViTPose, TokenPose or TAR-ViTPose in eval mode from a file (.pth/.pt/.bin/.safetensors) or
    a state dict in any of the supported formats. ``arch`` (a ``vitpose.architectures()`` name, or
    "tar-vitpose" for a TAR-ViTPose of any size) says which model it is when the tensors cannot tell
    (TokenPose variants beyond Table 1), or checks that they agree. ``overrides`` set config fields
    the tensors cannot tell (ViTPose: attention windows, shift/pool, ``patch_stride`` of a simple
    decoder, ``img_size`` (position embedding resized bicubically), ``backend``, ``num_heads`` of a
    non-standard width; TokenPose: see tokenpose_checkpoints; TAR-ViTPose: see tar_checkpoints,
    official training files or ours, recognised without ``arch`` too)."""
    from .registry import architectures
    if arch is not None and not isinstance(arch, str):
        raise TypeError(f"arch must be a string such as 'vitpose-b' or 'tar-vitpose-b', got {type(arch).__name__}")
    if arch is not None and arch.lower() not in (*architectures(), "tar-vitpose"):
        raise ValueError(f"arch must be one of {', '.join(architectures())} or tar-vitpose, got arch={arch!r}")
    hints_from = None
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = _weights_file(os.fspath(path_or_state_dict))
        sd, config = read_checkpoint(source)
        hints_from = source if config is None else None
    else:
        source = "state dict"
        sd, config = unwrap(path_or_state_dict)
    if not sd:
        raise CheckpointError(f"{source} holds no tensors")
    from . import tar_checkpoints
    tar = (config or {}).get("arch") == "tar-vitpose" or tar_checkpoints.is_tar_state_dict(sd)
    if tar or (arch is not None and arch.lower().startswith("tar-")):
        return tar_checkpoints.load_tar_model(sd, config, arch=arch or "tar-vitpose", source=source,
                                              device=device, **overrides)
    from .tokenpose_checkpoints import is_tokenpose, load_tokenpose
    family = "tokenpose" if is_tokenpose(sd, config) else "vitpose"
    if arch is not None and not arch.lower().startswith(family):
        names = {"tokenpose": "TokenPose", "vitpose": "ViTPose"}
        raise CheckpointError(f"arch={arch!r}, but {source} is not a {names[arch.lower().split('-')[0]]} "
                              f"checkpoint; first keys: {', '.join(list(sd)[:4])}")
    if family == "tokenpose":
        return load_tokenpose(sd, config, source, arch=arch, device=device, **overrides)
    if hints_from is not None:
        for k, v in _hf_config_hints(hints_from).items():
            overrides.setdefault(k, v)
    unknown = []
    if is_hf(sd):
        sd, unknown = hf_to_official(sd)
    sd = OrderedDict((k, v) for k, v in sd.items() if k not in IGNORED_KEYS)
    if config is not None:
        cfg = ViTPoseConfig.from_dict(config)
        ckpt_grid = cfg.grid
        if overrides:
            cfg = cfg.replace(**overrides)
    else:
        cfg, ckpt_grid = infer_config(sd, **overrides)
    if arch is not None and cfg.name.lower().replace("+", "") != arch.lower():
        raise CheckpointError(f"arch={arch!r}, but the tensors of {source} are those of {cfg.name} "
                              f"({cfg.embed_dim}-d, depth {cfg.depth})")
    # Built on the meta device and filled from the checkpoint: no time spent on random init.
    with torch.device("meta"):
        model = ViTPose(cfg)
    pos = sd.get("backbone.pos_embed")
    if pos is not None and tuple(ckpt_grid) != cfg.grid and pos.shape[1] == 1 + ckpt_grid[0] * ckpt_grid[1]:
        sd["backbone.pos_embed"] = resize_pos_embed(pos.float(), ckpt_grid, cfg.grid)
    for k in unknown:
        sd[k] = torch.empty(0)  # reported as unknown below
    # A state dict given by the caller (e.g. another model's) is copied: with assign=True the new
    # model would otherwise share, and train, the caller's tensors.
    load_state_dict_strict(model, sd, source, copy=source == "state dict")
    model.eval()
    if device is not None:
        model.to(device)
    return model
