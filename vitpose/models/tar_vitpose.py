"""TAR-ViTPose: Temporal Aggregate-and-Restore ViT for video pose (Fang et al., CVPR 2026).

A ViTPose encoder runs on every frame of a clip of T frames (default 5, the centre frame is the
target); its decoder gives initial heatmaps, and from them one attention mask per joint and frame
(Eq. 3). JTA (Eq. 4, 6 layers): K learnable joint queries (query features + query position
embeddings) cross-attend, under the masks, to the tokens of all frames, then attend to each other,
then an FFN; every sub-layer is residual + post-LayerNorm. GRA (Eq. 5): the centre frame's tokens
cross-attend to the joint queries (residual + LayerNorm). The ViTPose decoder turns the restored
centre-frame features into the output heatmaps.

This module computes what the official code (github zgspose/TARViTPose, models/best/TAR_ViTPose.py)
computes, including two layouts where that code differs from the paper's reading. Both are
reshapes where a reader expects transposes; a checkpoint trained with them depends on them:

* Tokens. The encoder's (C, h, w) map of a frame becomes P = h*w "tokens" of width C by
  ``reshape(P, C)`` of its channel-major (C, P) view, not by a transpose: token p holds elements
  [p*C, (p+1)*C) of the flattened channel-major map, i.e. C consecutive values of one or a few
  channel planes (ViT-B at 256x192, P = 192: channels 4p..4p+3 at every position; at the official
  384x288, P = 432: parts of two or three planes). JTA attends over these tokens, GRA's LayerNorm
  normalises them, and the inverse reshape turns GRA's output back into a (C, h, w) map.
* Masks. The per-frame masks (T, K, P) are read as (K, T*P) by a reshape, not by moving K in
  front: query joint j, frame slot t' uses the mask computed for (frame, joint) = divmod(j*T + t', K).

``layout="paper"`` (a config field) computes the paper's reading instead (tokens are positions,
mask row j is joint j in every frame), e.g. to train from scratch; official checkpoints need the
default "official".

A query row whose mask excludes every key (all of its masks below the threshold, e.g. constant
heatmaps) is undefined in the official code: nn.MultiheadAttention with need_weights=True softmaxes
a row of -inf into NaN, and the following joint self-attention spreads the NaN to every joint and
then to the whole output of that sample. Here the attention output of such a row is zero (the
``vitpose_kernels.masked_attention`` contract, also what nn.MultiheadAttention's need_weights=False
path returns in PyTorch >= 2.5), so the query goes on as LayerNorm(query + out_proj.bias); its keys
and values get no gradient from it. Rows with at least one allowed key are unaffected.

Module names are the official ones for the temporal part (query_feat, masked_attention_layers.N.mha,
...); the encoder and decoder are this package's ViTPose modules (``backbone``, ``keypoint_head``),
so ViTPose checkpoints initialise them as they are. ``tar_checkpoints`` maps the official mmpose 1.x
names (and the file's repeated copies of them) onto these.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import vitpose_kernels

from .configs import (
    ViTPoseConfig,
    check_positive_ints,
    config_from_dict,
    vitpose_config,
)
from .vitpose import ViTPose

# Table 1 of the paper and the official configs: the encoder's position embedding is sized for
# 256x192 (the mmpose ViTPose config), the network sees 384x288 crops and resizes it bicubically.
POS_EMBED_IMG_SIZE = (256, 192)
INPUT_SIZE = (384, 288)


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class TARViTPoseConfig:
    """One TAR-ViTPose: a ViTPose encoder + decoder (``vit``) and the temporal modules."""

    vit: ViTPoseConfig = field(default_factory=lambda: vitpose_config("B", img_size=POS_EMBED_IMG_SIZE))
    frames: int = 5                 # T, clip length; the centre frame T // 2 is the target
    temporal_heads: int = 4         # heads of every JTA / GRA attention (official default)
    jta_layers: int = 6             # JTA depth (official config NUM_LAYERS)
    ffn_ratio: float = 2.0          # JTA FFN hidden = ffn_ratio * C (official: 2C)
    mask_threshold: float = 0.2     # Eq. 3 threshold on the normalised, resized heatmaps
    use_mask: bool = True           # False: JTA's cross-attention sees every token (Table 6 (a))
    layout: str = "official"        # "official": the code's token / mask reshapes (what its
    #                                 checkpoints need); "paper": tokens are positions, row j of
    #                                 the mask is joint j in every frame
    input_size: tuple = INPUT_SIZE  # (H, W) of the crops the pipelines feed (forward takes any
    #                                 multiple of the patch stride)
    backend: str | None = None      # vitpose_kernels backend of every op call (None: fastest)
    name: str = field(default="TAR-ViTPose-custom", compare=False)

    def __post_init__(self):
        if isinstance(self.vit, dict):
            self.vit = ViTPoseConfig.from_dict(self.vit)
        self.input_size = tuple(int(v) for v in self.input_size)
        if self.backend != self.vit.backend:
            self.vit = self.vit.replace(backend=self.backend)
        self.validate()

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def num_keypoints(self) -> int:
        return self.vit.num_keypoints

    def __getattr__(self, name):
        # The encoder / decoder's fields and properties (depth, grid, experts, datasets, ...) read
        # through, so code written for a ViTPoseConfig (checkpoint loading, --init) works as it is.
        if not name.startswith("__") and name != "vit" and (
                name in ViTPoseConfig.__dataclass_fields__ or isinstance(getattr(ViTPoseConfig, name, None), property)):
            return getattr(self.vit, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def centre(self) -> int:
        return self.frames // 2

    def validate(self):
        def bad(msg):
            raise ValueError(f"TARViTPoseConfig: {msg}")

        check_positive_ints(self, ("frames", "temporal_heads", "jta_layers"), bad)
        if self.embed_dim % self.temporal_heads:
            bad(f"embed_dim={self.embed_dim} is not a multiple of temporal_heads={self.temporal_heads}")
        if not 0.0 <= float(self.mask_threshold) <= 1.0:
            bad(f"mask_threshold must be in [0, 1] (heatmaps are normalised to [0, 1]), got {self.mask_threshold}")
        if self.layout not in ("official", "paper"):
            bad(f"layout must be 'official' or 'paper', got {self.layout!r}")
        if self.ffn_ratio <= 0:
            bad(f"ffn_ratio must be positive, got {self.ffn_ratio}")
        if self.vit.experts > 1 or len(self.vit.datasets) > 1 or self.vit.num_knowledge_tokens:
            bad("the encoder must be a single-dataset ViTPose without experts or knowledge tokens "
                f"(got experts={self.vit.experts}, datasets={self.vit.datasets}, "
                f"num_knowledge_tokens={self.vit.num_knowledge_tokens})")
        s = self.vit.patch_stride
        if len(self.input_size) != 2 or self.input_size[0] % s or self.input_size[1] % s:
            bad(f"input_size={self.input_size} must be (H, W), multiples of patch_stride={s}")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["vit"], d["input_size"] = self.vit.to_dict(), list(self.input_size)
        return {"arch": "tar-vitpose", **d}

    @classmethod
    def from_dict(cls, d: dict) -> "TARViTPoseConfig":
        return config_from_dict(cls, {k: v for k, v in d.items() if k != "arch"})


_OWN_FIELDS = {f.name for f in dataclasses.fields(TARViTPoseConfig)} - {"vit", "name"}


def tar_vitpose_config(size: str = "B", **overrides) -> TARViTPoseConfig:
    """TAR-ViTPose on ViTPose-S/B/L/H; overrides may set TAR fields (``frames``, ``jta_layers``, ...)
    and encoder fields (``embed_dim``, ``depth``, ``img_size`` of the position embedding, ...)."""
    own = {k: overrides.pop(k) for k in list(overrides) if k in _OWN_FIELDS}
    name = overrides.pop("name", None)
    overrides.setdefault("img_size", POS_EMBED_IMG_SIZE)
    if "backend" in own:
        overrides["backend"] = own["backend"]
    vit = vitpose_config(size, **overrides)
    custom = any(k in overrides for k in ("embed_dim", "depth", "num_heads"))
    return TARViTPoseConfig(vit=vit, name=name or f"TAR-ViTPose-{'custom' if custom else size.upper()}", **own)


# ------------------------------------------------------------------------------------------------
# Attention through the fused masked-attention op
# ------------------------------------------------------------------------------------------------
class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters and arithmetic (packed in_proj, out_proj, batch first),
    computed by the fused ``vitpose_kernels.masked_attention``; key_mask: True = may attend (the
    opposite of PyTorch's attn_mask), bool or bit-packed, broadcast over heads."""

    def __init__(self, embed_dim: int, num_heads: int, backend=None):
        super().__init__()
        self.num_heads, self.head_dim, self.backend = num_heads, embed_dim // num_heads, backend
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):  # nn.MultiheadAttention's
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x, part):
        C = x.shape[-1]
        w = self.in_proj_weight[part * C:(part + 1) * C]
        b = self.in_proj_bias[part * C:(part + 1) * C]
        return F.linear(x, w, b).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, query, context, key_mask=None):
        out = vitpose_kernels.masked_attention(self._heads(query, 0), self._heads(context, 1),
                                               self._heads(context, 2), key_mask, backend=self.backend)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """LayerNorm(query + MHA(query, context, context)): JTA's masked attention, and GRA."""

    def __init__(self, embed_dim, num_heads, backend=None):
        super().__init__()
        self.mha = MultiheadAttention(embed_dim, num_heads, backend)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, query, context, key_mask=None):
        return self.norm(query + self.mha(query, context, key_mask))


class SelfAttention(nn.Module):
    """LayerNorm(x + MHA(x, x, x)): the joint queries attend to each other."""

    def __init__(self, embed_dim, num_heads, backend=None):
        super().__init__()
        self.mha = MultiheadAttention(embed_dim, num_heads, backend)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        return self.norm(x + self.mha(x, x))


class FFNLayer(nn.Module):
    """LayerNorm(x + fc2(GELU(fc1(x))))."""

    def __init__(self, embed_dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        return self.norm(x + self.fc2(self.act(self.fc1(x))))


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class TARViTPose(nn.Module):
    """TARViTPose(config)(clips (B, T, 3, H, W)) -> heatmaps of the centre frames (B, K, H/4, W/4)."""

    def __init__(self, config: TARViTPoseConfig | None = None):
        super().__init__()
        self.config = config = copy.deepcopy(config) if config is not None else TARViTPoseConfig()
        base = ViTPose(config.vit)  # the encoder and decoder, with ViTPose's initialisation
        self.backbone, self.keypoint_head = base.backbone, base.keypoint_head
        C, K, heads, be = config.embed_dim, config.num_keypoints, config.temporal_heads, config.backend
        self.query_feat = nn.Embedding(K, C)
        self.query_pe = nn.Embedding(K, C)
        n = config.jta_layers
        self.masked_attention_layers = nn.ModuleList(CrossAttention(C, heads, be) for _ in range(n))
        self.self_attention_layers = nn.ModuleList(SelfAttention(C, heads, be) for _ in range(n))
        self.ffn_layers = nn.ModuleList(FFNLayer(C, int(C * config.ffn_ratio)) for _ in range(n))
        self.cross_attention = CrossAttention(C, heads, be)

    @classmethod
    def from_vitpose(cls, vitpose: ViTPose, **overrides) -> "TARViTPose":
        """The paper's starting point: encoder and decoder from a (COCO-trained) ViTPose, temporal
        modules freshly initialised. ``overrides`` set TAR fields (frames, jta_layers, ...)."""
        cfg = TARViTPoseConfig(vit=vitpose.config, **overrides)
        model = cls(cfg)
        model.backbone.load_state_dict(vitpose.backbone.state_dict())
        model.keypoint_head.load_state_dict(vitpose.keypoint_head.state_dict())
        return model

    # ---- the forward of the official code, step by step ----------------------------------------
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        B, T = self._check_input(clips)
        feats = self.backbone(clips.flatten(0, 1))                  # (B*T, C, h, w)
        C, h, w = feats.shape[1:]
        P = h * w
        initial = self.keypoint_head(feats)                          # (B*T, K, 4h, 4w)
        key_mask = self.joint_masks(initial, (h, w), B, T)           # (B, 1, K, T*P) or None
        if self.config.layout == "official":  # reshape, not transpose (see the module doc)
            tokens = feats.reshape(B, T, C, P).reshape(B, T, P, C)
        else:
            tokens = feats.reshape(B, T, C, P).transpose(2, 3)
        centre = tokens[:, T // 2]
        context = tokens.flatten(1, 2)                               # (B, T*P, C), frame-major
        queries = (self.query_feat.weight + self.query_pe.weight).expand(B, -1, -1)
        for masked, self_attn, ffn in zip(self.masked_attention_layers, self.self_attention_layers,
                                          self.ffn_layers):
            queries = ffn(self_attn(masked(queries, context, key_mask)))   # JTA, Eq. 4
        restored = self.cross_attention(centre, queries)             # GRA, Eq. 5
        if self.config.layout == "official":
            return self.keypoint_head(restored.reshape(B, C, h, w))
        return self.keypoint_head(restored.transpose(1, 2).reshape(B, C, h, w))

    def joint_masks(self, initial_heatmaps, grid, B, T):
        """Eq. 3 masks, one per clip, broadcast over heads: (B, 1, K, T*P) bit-packed, from the fused
        ``vitpose_kernels.heatmap_key_mask``. Each initial map is min-max normalised (+1e-6),
        resized bilinearly to the token grid (align_corners=False) and keys below the threshold are
        excluded; the official layout reads the (T, K) masks as (K, T) (see the module doc). The
        masks are not differentiated, and computed in float32 whatever the model's dtype (a bf16
        normaliser would lose the 1e-6 and move keys across the threshold)."""
        if not self.config.use_mask:
            return None
        maps = initial_heatmaps.detach().float().unflatten(0, (B, T))
        return vitpose_kernels.heatmap_key_mask(maps, tuple(grid), threshold=self.config.mask_threshold,
                                                layout=self.config.layout, backend=self.config.backend)

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"clips must be a torch.Tensor, got {type(x).__name__}")
        T = self.config.frames
        if x.dim() != 5 or x.shape[1] != T or x.shape[2] != 3:
            raise ValueError(f"clips must be (B, T={T}, 3, H, W) (this model was built for {T} frames), "
                             f"got clips.shape={tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"clips must be normalized floats, got dtype={x.dtype}")
        s = self.config.vit.patch_stride
        if x.shape[0] == 0 or x.shape[3] % s or x.shape[4] % s:
            raise ValueError(f"clips must be a non-empty batch with H, W multiples of {s}, got "
                             f"clips.shape={tuple(x.shape)} (crops are {self.config.input_size} by default)")
        return x.shape[0], T

    # ---- ViTPose conveniences that apply unchanged -----------------------------------------------
    def fold_batchnorm(self) -> "TARViTPose":
        """For inference: the decoder's BatchNorm folded into its deconvolutions."""
        if hasattr(self.keypoint_head, "fold_batchnorm"):
            self.keypoint_head.fold_batchnorm()
        return self

    @property
    def folded(self) -> bool:
        return getattr(self.keypoint_head, "folded", False)

    def extra_repr(self):
        c = self.config
        return (f"{c.name}: C={c.embed_dim}, depth={c.vit.depth}, T={c.frames}, JTA layers={c.jta_layers}, "
                f"temporal heads={c.temporal_heads}, mask threshold={c.mask_threshold}")
