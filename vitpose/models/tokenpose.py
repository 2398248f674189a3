"""TokenPose: keypoints as learnable tokens next to the visual tokens (Li et al., ICCV 2021).

Sec. 3.2: visual tokens are flattened P_h x P_w patches of the image (TokenPose-T) or of CNN
features at 1/4 resolution (S: stem + bottleneck stage, B: HRNet-W32 stages 1-3, L: HRNet-W48
stages 1-3), each linearly projected to d and given a 2D position embedding; N keypoint tokens are
prepended; a pre-norm transformer (Eq. 1, 2) mixes them; an MLP head maps each output keypoint
token to a flattened H/4 x W/4 heatmap. TokenPose-L concatenates the keypoint tokens after each
third of its depth ("keypoint token fusion", Sec. 4.4) before the head.

Every detail follows the official code (github.com/leeyegy/TokenPose, lib/models), so its
checkpoints load under their own names and give its outputs:
- attention scale (d/h)^-0.5 for T, B, L but d^-0.5 for S (its transformer is built without
  ``scale_with_head``);
- position embeddings "learnable" (over keypoint + visual tokens), "sine" (2D sine over the visual
  tokens) and "sine-full" (sine, re-added to the visual tokens before every layer but the first
  of each transformer) -- every official config uses sine-full;
- the MLP head has two layers (LN, Linear to hidden, LN, Linear) when its input width is at most
  half the hidden width, else one (LN, Linear): T/S/B (192 <= 384 / 2) two, L (3 x 192 > 384 / 2)
  one;
- patches are flattened in (row, column, channel) order, keypoint tokens come first.

Attention runs through ``vitpose_kernels.window_attention`` with full attention (window=None) and
the keypoint tokens as its global tokens. Head dims: 12 (T), 24 (S, B, L/D6), 16 (L/D24); the CUDA
backend takes multiples of 8 and leaves 12 to Triton (``vitpose_kernels.explain`` says so).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

import vitpose_kernels

from ..data.keypoints import keypoint_set
from .configs import BACKENDS, check_positive_ints, config_from_dict, int_pair
from .hrnet import HRNetSpec, HRNetStage3, add_stem, run_stem
from .vitpose import init_weights

POS_EMBEDDINGS = ("learnable", "sine", "sine-full")
BACKBONES = ("none", "stem", "hrnet")

# Table 1 (and the official configs: depth per transformer x 3 for L, heads, patch P_h x P_w).
# Patch sizes at 384x288 follow the one official 384x288 config (L/D24: 4x3 -> 6x4, keeping 16 token
# rows); T, S and B have no official 384x288 config, so the same rule is applied to them.
VARIANTS = {
    "T": dict(backbone="none", depth=12, heads=16, patch={(256, 192): (16, 12), (384, 288): (24, 18)}),
    "S-v1": dict(backbone="stem", depth=12, heads=8, scale_with_head=False,
                 patch={(256, 192): (4, 3), (384, 288): (6, 4)}),
    "S-v2": dict(backbone="stem", depth=12, heads=8, scale_with_head=False,
                 patch={(256, 192): (2, 2), (384, 288): (3, 3)}),
    "B": dict(backbone="hrnet", hrnet_width=32, depth=12, heads=8,
              patch={(256, 192): (4, 3), (384, 288): (6, 4)}),
    "L/D6": dict(backbone="hrnet", hrnet_width=48, depth=2, stacks=3, heads=8, hidden_heatmap_dim=384,
                 patch={(256, 192): (4, 3), (384, 288): (6, 4)}),
    "L/D24": dict(backbone="hrnet", hrnet_width=48, depth=8, stacks=3, heads=12, hidden_heatmap_dim=384,
                  patch={(256, 192): (4, 3), (384, 288): (6, 4)}),
}
# The paper's Table 1 (256x192): parameters (M) and GFLOPs as it counts them (see complexity.py).
TABLE1_PAPER = {"T": (5.8, 1.3), "S-v1": (6.6, 2.2), "S-v2": (6.2, 11.6), "B": (13.5, 5.7),
                "L/D6": (20.8, 9.1), "L/D24": (27.5, 11.0)}
# Registry names -> variant keys.
ARCHITECTURES = {"tokenpose-t": "T", "tokenpose-s-v1": "S-v1", "tokenpose-s-v2": "S-v2", "tokenpose-b": "B",
                 "tokenpose-l-d6": "L/D6", "tokenpose-l-d24": "L/D24"}


@dataclass
class TokenPoseConfig:
    """One TokenPose model. Sizes are (H, W). ``patch_size=None`` takes the variant's patch for
    the image size; ``hidden_heatmap_dim=None`` takes H/4 * W/4 / 8 (the official T/S/B rule)."""

    backbone: str = "none"          # "none" (T: patches of the image), "stem" (S), "hrnet" (B, L)
    hrnet_width: int = 32           # C of HRNet-W{C} (B: 32, L: 48)
    img_size: tuple = (256, 192)
    patch_size: tuple | None = None
    dim: int = 192
    depth: int = 12                 # layers per transformer (L has three transformers)
    stacks: int = 1                 # 3: TokenPose-L's keypoint token fusion
    heads: int = 8
    mlp_ratio: int = 3
    scale_with_head: bool = True    # attention scale (dim/heads)^-0.5; False: dim^-0.5 (S)
    pos_embedding: str = "sine-full"
    hidden_heatmap_dim: int | None = None
    apply_multi: bool = True        # the official flag that allows the two-layer head
    dropout: float = 0.0
    num_keypoints: int | None = None  # 17 (COCO) unless set
    dataset: str = "coco"             # the keypoint set (flip order for the flip test)
    backend: str | None = None
    name: str = field(default="TokenPose-custom", compare=False)

    def __post_init__(self):
        self.img_size = int_pair("img_size", self.img_size)
        if self.patch_size is not None:
            self.patch_size = int_pair("patch_size", self.patch_size)
        if self.num_keypoints is not None and keypoint_set(self.dataset).num_keypoints != self.num_keypoints:
            from .configs import _custom_dataset
            self.dataset = _custom_dataset(self.num_keypoints)
        self.num_keypoints = keypoint_set(self.dataset).num_keypoints
        if self.hidden_heatmap_dim is None:
            self.hidden_heatmap_dim = self.heatmap_size[0] * self.heatmap_size[1] // 8
        self.validate()

    # ---- derived sizes ---------------------------------------------------------------------------
    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.img_size[0] // 4, self.img_size[1] // 4

    @property
    def feature_size(self) -> tuple[int, int]:
        """What the patches are cut from: the image (T) or the 1/4 CNN features."""
        return self.img_size if self.backbone == "none" else self.heatmap_size

    @property
    def feature_channels(self) -> int:
        return {"none": 3, "stem": 256, "hrnet": self.hrnet_width}[self.backbone]

    @property
    def grid(self) -> tuple[int, int]:
        (fh, fw), (ph, pw) = self.feature_size, self.patch_size
        return fh // ph, fw // pw

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.feature_channels * self.patch_size[0] * self.patch_size[1]

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def attention_scale(self) -> float:
        return (self.head_dim if self.scale_with_head else self.dim) ** -0.5

    @property
    def two_layer_head(self) -> bool:
        """The official rule: hidden layer when the head's input is at most half the hidden width."""
        return self.dim * self.stacks <= self.hidden_heatmap_dim * 0.5 and self.apply_multi

    @property
    def input_size(self) -> tuple[int, int]:
        """(W, H) of the crops, the pipeline's convention."""
        return self.img_size[1], self.img_size[0]

    # ---- checks ----------------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg):
            raise ValueError(f"TokenPoseConfig: {msg}")

        if self.backbone not in BACKBONES:
            bad(f"backbone must be one of {BACKBONES}, got backbone={self.backbone!r}")
        check_positive_ints(self, ("dim", "depth", "stacks", "heads", "mlp_ratio", "hrnet_width",
                                   "hidden_heatmap_dim"), bad)
        if self.dim % self.heads:
            bad(f"dim={self.dim} is not a multiple of heads={self.heads}")
        if self.pos_embedding not in POS_EMBEDDINGS:
            bad(f"pos_embedding must be one of {POS_EMBEDDINGS}, got {self.pos_embedding!r}")
        if self.pos_embedding != "learnable" and self.dim % 4:
            bad(f"sine position embeddings need dim divisible by 4 (two directions of sin/cos pairs), "
                f"got dim={self.dim}")
        if self.backend not in BACKENDS:
            bad(f"backend must be one of {BACKENDS}, got backend={self.backend!r}")
        h, w = self.img_size
        if h % 4 or w % 4 or h < 4 or w < 4:
            bad(f"img_size={self.img_size} must be multiples of 4 (heatmaps are 1/4 of the input)")
        if self.patch_size is None:
            bad(f"no default patch size for img_size={self.img_size}; pass patch_size=(ph, pw)")
        (fh, fw), (ph, pw) = self.feature_size, self.patch_size
        if min(ph, pw) < 1 or fh % ph or fw % pw:
            what = "image" if self.backbone == "none" else "1/4 feature map"
            bad(f"patch_size={self.patch_size} must divide the {what} {self.feature_size} (img_size={self.img_size})")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")

    # ---- (de)serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TokenPoseConfig":
        return config_from_dict(cls, d)

    def replace(self, **overrides) -> "TokenPoseConfig":
        """The same config with fields changed as given (nothing re-derived: use tokenpose_config for
        a variant at another image size)."""
        d = self.to_dict()
        if "num_keypoints" in overrides and "dataset" not in overrides:
            d["dataset"] = "coco"
        d.update(overrides)
        return TokenPoseConfig.from_dict(d)


def variant_key(name: str) -> str:
    """"tokenpose-l-d24", "L/D24", "l-d24", "TokenPose-L/D24" -> "L/D24"."""
    key = name.lower().replace("tokenpose-", "").replace("tokenpose_", "").replace("/", "-")
    for v in VARIANTS:
        if v.lower().replace("/", "-") == key:
            return v
    raise ValueError(f"unknown TokenPose variant {name!r}; known: {', '.join(VARIANTS)}")


def tokenpose_config(variant: str = "T", **overrides) -> TokenPoseConfig:
    """A Table 1 variant ("T", "S-v1", "S-v2", "B", "L/D6", "L/D24" or a registry name), any field
    overridden: ``tokenpose_config("L/D24", img_size=(384, 288))``."""
    key = variant_key(variant)
    base = {k: v for k, v in VARIANTS[key].items() if k != "patch"}
    base.update(overrides)
    img = int_pair("img_size", base.get("img_size", (256, 192)))
    if base.get("patch_size") is None:
        patches = VARIANTS[key]["patch"]
        base["patch_size"] = patches.get(img, patches[(256, 192)])
    if key.startswith("L") and "hidden_heatmap_dim" not in overrides:
        base["hidden_heatmap_dim"] = VARIANTS[key]["hidden_heatmap_dim"]
    base.setdefault("name", f"TokenPose-{key}")
    return TokenPoseConfig(**base)


# ------------------------------------------------------------------------------------------------
# Position embedding
# ------------------------------------------------------------------------------------------------
def sine_position_embedding(grid, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The official 2D sine embedding (DETR-style, normalized to 2*pi over the grid): (1, Hg*Wg, dim),
    the first dim/2 channels encode the row, the rest the column, as (sin, cos) pairs. Float32 ops
    in the official order, so a freshly built model holds the same values as a checkpoint."""
    h, w = grid
    half = dim // 2
    eps = 1e-6
    cpu = dict(dtype=torch.float32, device="cpu")  # computed on the CPU whatever the default device
    y = torch.arange(1, h + 1, **cpu)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, **cpu)[None, :].expand(h, w)
    y = y / (torch.tensor(float(h), **cpu) + eps) * (2 * math.pi)
    x = x / (torch.tensor(float(w), **cpu) + eps) * (2 * math.pi)
    steps = torch.arange(half, **cpu)
    dim_t = temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / half)

    def encode(p):
        a = p[..., None] / dim_t
        return torch.stack((a[..., 0::2].sin(), a[..., 1::2].cos()), dim=-1).flatten(-2)

    pe = torch.cat((encode(y), encode(x)), dim=-1).reshape(1, h * w, dim)
    return pe.to(torch.get_default_device())  # e.g. meta inside ``with torch.device("meta")``


# ------------------------------------------------------------------------------------------------
# Transformer (official names: layers.i.0.fn.norm, layers.i.0.fn.fn.to_qkv, layers.i.1.fn.fn.net.0)
# ------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """MSA (Eq. 2) through the fused window_attention: full attention, keypoint tokens global."""

    def __init__(self, cfg: TokenPoseConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.scale = cfg.attention_scale
        self.backend = cfg.backend
        self.to_qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.Dropout(cfg.dropout))

    def forward(self, x, grid, num_global):
        B, N, C = x.shape
        q, k, v = self.to_qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = vitpose_kernels.window_attention(q, k, v, grid=grid, window=None, num_global=num_global,
                                               scale=self.scale, backend=self.backend)
        return self.to_out(out.transpose(1, 2).reshape(B, N, C))

    def extra_repr(self):
        return f"heads={self.heads}, head_dim={self.head_dim}, scale={self.scale:.6g}"


class FeedForward(nn.Module):
    def __init__(self, cfg: TokenPoseConfig):
        super().__init__()
        hidden = cfg.dim * cfg.mlp_ratio
        self.net = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(hidden, cfg.dim), nn.Dropout(cfg.dropout))

    def forward(self, x, **_):
        return self.net(x)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x, **kwargs):
        return x + self.fn(x, **kwargs)


class Transformer(nn.Module):
    """``depth`` pre-norm layers (Eq. 1). With a sine-full embedding ``pos`` is added to the visual
    tokens before every layer but the first (the official ``all_attn``)."""

    def __init__(self, cfg: TokenPoseConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Residual(PreNorm(cfg.dim, Attention(cfg))), Residual(PreNorm(cfg.dim, FeedForward(cfg)))])
            for _ in range(cfg.depth))

    def forward(self, x, grid, num_keypoints: int, pos=None):
        for i, (attn, ff) in enumerate(self.layers):
            if i > 0 and pos is not None:
                x = torch.cat([x[:, :num_keypoints], x[:, num_keypoints:] + pos], dim=1)
            x = attn(x, grid=grid, num_global=num_keypoints)
            x = ff(x)
        return x


# ------------------------------------------------------------------------------------------------
# The token part: patch embedding, keypoint tokens, transformer(s), MLP head
# ------------------------------------------------------------------------------------------------
class TokenPoseBase(nn.Module):
    """The official TokenPose_{TB,S,L}_base: features (B, C, Hf, Wf) -> heatmaps (B, K, H/4, W/4).
    For S it also holds the stem (conv1 ... layer1) and takes the image."""

    def __init__(self, cfg: TokenPoseConfig):
        super().__init__()
        self.cfg = cfg
        K, d = cfg.num_keypoints, cfg.dim
        if cfg.backbone == "stem":
            add_stem(self)
        self.keypoint_token = nn.Parameter(torch.zeros(1, K, d))
        if cfg.pos_embedding == "learnable":
            self.pos_embedding = nn.Parameter(torch.zeros(1, cfg.num_patches + K, d))
        else:  # a constant: a buffer here, a requires_grad=False Parameter officially; same state-dict key
            self.register_buffer("pos_embedding", sine_position_embedding(cfg.grid, d))
        self.patch_to_embedding = nn.Linear(cfg.patch_dim, d)
        if cfg.stacks == 1:
            self.transformer = Transformer(cfg)
        else:
            for s in range(cfg.stacks):
                self.add_module(f"transformer{s + 1}", Transformer(cfg))
        width, hidden, out = d * cfg.stacks, cfg.hidden_heatmap_dim, cfg.heatmap_size[0] * cfg.heatmap_size[1]
        if cfg.two_layer_head:
            self.mlp_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.LayerNorm(hidden),
                                          nn.Linear(hidden, out))
        else:
            self.mlp_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out))

    @property
    def transformers(self) -> list[Transformer]:
        if self.cfg.stacks == 1:
            return [self.transformer]
        return [getattr(self, f"transformer{s + 1}") for s in range(self.cfg.stacks)]

    def patchify(self, feature):
        """(B, C, Hg*ph, Wg*pw) -> (B, Hg*Wg, ph*pw*C): patches row-major, each flattened as
        (row in patch, column in patch, channel), the official rearrange."""
        B, C, H, W = feature.shape
        ph, pw = self.cfg.patch_size
        x = feature.reshape(B, C, H // ph, ph, W // pw, pw).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // ph) * (W // pw), ph * pw * C)

    def forward(self, x):
        cfg = self.cfg
        if cfg.backbone == "stem":
            x = run_stem(self, x)
        x = self.patch_to_embedding(self.patchify(x))
        B, n, _ = x.shape
        K = cfg.num_keypoints
        tokens = self.keypoint_token.expand(B, -1, -1).to(x.dtype)
        pos = self.pos_embedding.to(x.dtype)
        if cfg.pos_embedding == "learnable":  # over keypoint and visual tokens
            x = torch.cat([tokens, x], dim=1) + pos[:, :n + K]
        else:
            x = torch.cat([tokens, x + pos[:, :n]], dim=1)
        every_layer = pos if cfg.pos_embedding == "sine-full" else None
        outputs = []
        for t in self.transformers:
            x = t(x, cfg.grid, K, every_layer)
            outputs.append(x[:, :K])
        x = self.mlp_head(torch.cat(outputs, dim=-1))  # L: keypoint token fusion
        return x.reshape(B, K, *cfg.heatmap_size)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class TokenPose(nn.Module):
    """TokenPose(config)(pixel_values (B, 3, H, W)) -> heatmaps (B, K, H/4, W/4).

    Top-level names as the official wrappers: ``transformer.*`` (T), ``features.*`` (S),
    ``pre_feature.*`` + ``transformer.*`` (B, L). For the top-down pipeline it says its crop size
    (``input_size``, (W, H)) and how its heatmaps are decoded (``decode_method``: the official
    test-time post-processing, DARK's)."""

    decode_method = "dark"

    def __init__(self, config: TokenPoseConfig | None = None):
        super().__init__()
        self.config = config = copy.deepcopy(config) if config is not None else tokenpose_config("T")
        if config.backbone == "stem":
            self.features = TokenPoseBase(config)
        else:
            if config.backbone == "hrnet":
                self.pre_feature = HRNetStage3(HRNetSpec(width=config.hrnet_width))
            self.transformer = TokenPoseBase(config)
        if self.tokens.keypoint_token.device.type != "meta":  # meta: shapes only (and init there imports dynamo)
            self.reset_parameters()
        vitpose_kernels.backends()  # probe the machine now, not inside a torch.compile trace

    @property
    def tokens(self) -> TokenPoseBase:
        return self.features if self.config.backbone == "stem" else self.transformer

    # the pipeline's protocol (shared with ViTPose)
    @property
    def input_size(self) -> tuple[int, int]:
        return self.config.input_size

    @property
    def datasets(self) -> tuple[str, ...]:
        return (self.config.dataset,)

    @property
    def num_datasets(self) -> int:
        return 1

    @property
    def backend(self):
        return self.config.backend

    @torch.no_grad()
    def reset_parameters(self):
        """The official initialization (INIT: true): Linear trunc_normal(0.02), LayerNorm 1/0,
        convolutions normal(0.001), BatchNorm 1/0, keypoint tokens (and a learnable embedding)
        trunc_normal(0.02). B/L then load ImageNet HRNet weights officially; none are shipped here."""
        init_weights(self, convs=(nn.Conv2d,))
        nn.init.trunc_normal_(self.tokens.keypoint_token, std=0.02)
        if self.config.pos_embedding == "learnable":
            nn.init.trunc_normal_(self.tokens.pos_embedding, std=0.02)
        else:
            self.tokens.pos_embedding.copy_(sine_position_embedding(self.config.grid, self.config.dim))

    def forward(self, pixel_values: torch.Tensor, dataset_index=None) -> torch.Tensor:
        self._check_input(pixel_values, dataset_index)
        x = pixel_values
        if self.config.backbone == "hrnet":
            x = self.pre_feature(x)
        return self.tokens(x)

    def _check_input(self, x, dataset_index):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"pixel_values must be normalized floats, got dtype={x.dtype}")
        if x.dim() != 4 or x.shape[0] == 0 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.config.img_size:
            raise ValueError(f"pixel_values must be (B, 3, {self.config.img_size[0]}, {self.config.img_size[1]}) "
                             f"with B >= 1 (TokenPose's position embedding fixes the input size), got "
                             f"pixel_values.shape={tuple(x.shape)}")
        if dataset_index not in (None, 0):
            raise ValueError(f"TokenPose has one keypoint head; dataset_index must be 0 or None, got {dataset_index!r}")

    def extra_repr(self):
        c = self.config
        return (f"{c.name}: backbone={c.backbone}, img={c.img_size}, patch={c.patch_size}, grid={c.grid}, "
                f"dim={c.dim}, depth={c.depth}x{c.stacks}, heads={c.heads}, pos={c.pos_embedding}")
