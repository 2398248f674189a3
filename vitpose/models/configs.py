"""ViTPose configurations: the four sizes of the paper, custom sizes, and the rows of Table 5.

A config says everything the model file needs: the plain ViT (Sec. 3.1), the decoder (Eq. 2 or 3),
the attention of every layer (Sec. 3.3, Table 5), the ViTPose+ experts and heads, and the
knowledge token (Sec. 3.4). ``config.layer_attention(i)`` is the per-layer attention plan.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..data.keypoints import keypoint_set

# Sec. 3.2 / Table 9: embed dim, depth, heads (ViT-H: head dim 80), drop path.
SIZES = {
    "S": dict(embed_dim=384, depth=12, num_heads=12, drop_path_rate=0.1),
    "B": dict(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.3),
    "L": dict(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.5),
    "H": dict(embed_dim=1280, depth=32, num_heads=16, drop_path_rate=0.55),
}

HEADS = ("classic", "simple")
BACKENDS = (None, "reference", "triton", "cuda")


# ---- helpers of every model config here (ViTPose, TokenPose, TAR-ViTPose) --------------------------
def int_pair(name, value, optional: bool = False):
    """An int n -> (n, n), a pair -> a pair of ints; None stays None where ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    return a, b


def check_positive_ints(config, names, bad) -> None:
    """``bad(message)`` (which raises) for the first of these fields that is not an int >= 1."""
    for name in names:
        v = getattr(config, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            bad(f"{name} must be a positive int, got {name}={v!r}")


def config_from_dict(cls, d: dict):
    """``cls(**d)`` for a dataclass config, with keys that are not its fields refused by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
    return cls(**d)


@dataclass
class ViTPoseConfig:
    """One ViTPose model. Image sizes are (H, W); ``patch_padding=None`` picks the official padding
    (2 for stride 16, 4 for stride 8) and is resolved to an int on construction."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    img_size: tuple = (256, 192)
    patch_size: int = 16
    patch_stride: int = 16
    patch_padding: int | None = None
    # decoder (Eq. 2 classic, Eq. 3 simple)
    head: str = "classic"
    num_keypoints: int | None = None  # 17 (COCO) unless set; else that of datasets[0]
    deconv_channels: int = 256
    # attention per layer (Sec. 3.3, Table 5)
    window: tuple | None = None       # (wh, ww) of window layers; None: full attention everywhere
    shift: bool = False               # shift every second window layer by half a window (Swin)
    pool: bool = False                # window layers also attend to the pooled window tokens
    full_every: int | None = None     # ViTDet: layers i with (i + 1) % full_every == 0 stay full
    rel_pos: bool = False             # decomposed relative position in window layers (ViTDet/SAM)
    # Sec. 3.4 knowledge token(s): global tokens of every attention layer
    num_knowledge_tokens: int = 0
    # ViTPose+ (multi-dataset): one decoder per dataset, FFN experts per dataset
    datasets: tuple = ("coco",)
    experts: int = 1
    part_features: int | None = None  # expert width; default embed_dim // 4 when experts > 1
    # vitpose_kernels backend for every op call (None: fastest that fits)
    backend: str | None = None
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        self.img_size = int_pair("img_size", self.img_size)
        self.window = int_pair("window", self.window, optional=True)
        self.datasets = tuple(self.datasets) if self.datasets else ("coco",)
        for d in self.datasets:
            keypoint_set(d)  # raises for unknown names
        if self.num_keypoints is not None and len(self.datasets) == 1 \
                and keypoint_set(self.datasets[0]).num_keypoints != self.num_keypoints:
            # one head with a keypoint count of its own: COCO for 17, else an anonymous set
            self.datasets = (_custom_dataset(self.num_keypoints),)
        self.num_keypoints = keypoint_set(self.datasets[0]).num_keypoints
        if self.patch_padding is None:
            ratio = self.patch_size // self.patch_stride
            self.patch_padding = 4 + 2 * (ratio // 2 - 1)  # the official PatchEmbed's choice
        if self.experts > 1 and self.part_features is None:
            self.part_features = self.embed_dim // 4
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (Hg, Wg) after the patch embedding."""
        return tuple(self.grid_for(self.img_size))

    def grid_for(self, img_size) -> tuple[int, int]:
        p, s, pad = self.patch_size, self.patch_stride, self.patch_padding
        return tuple((n + 2 * pad - p) // s + 1 for n in img_size)

    @property
    def upsample(self) -> int:
        """Decoder upsampling so that heatmaps are 1/4 of the input (4 at stride 16, 2 at stride 8)."""
        return self.patch_stride // 4

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.img_size[0] // 4, self.img_size[1] // 4

    @property
    def head_keypoints(self) -> tuple[int, ...]:
        return tuple(keypoint_set(d).num_keypoints for d in self.datasets)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def layer_attention(self, i: int) -> dict:
        """The window_attention arguments of layer i: window, shift, pool and whether it has rel pos."""
        if self.window is None or (self.full_every and (i + 1) % self.full_every == 0):
            return dict(window=None, shift=(0, 0), pool=False, rel_pos=False)
        # Count window layers only, so that with full_every the shifts still alternate.
        nth = i - (((i + 1) // self.full_every) if self.full_every else 0)
        wh, ww = self.window
        shifted = self.shift and nth % 2 == 1
        return dict(window=(wh, ww), shift=(wh // 2, ww // 2) if shifted else (0, 0), pool=self.pool,
                    rel_pos=self.rel_pos)

    # ---- checks ----------------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg):
            raise ValueError(f"ViTPoseConfig: {msg}")

        check_positive_ints(self, ("embed_dim", "depth", "num_heads", "patch_size", "patch_stride",
                                   "num_keypoints", "deconv_channels", "experts"), bad)
        if self.embed_dim % self.num_heads:
            bad(f"embed_dim={self.embed_dim} is not a multiple of num_heads={self.num_heads}")
        if self.head not in HEADS:
            bad(f"head must be one of {HEADS}, got head={self.head!r}")
        if self.backend not in BACKENDS:
            bad(f"backend must be one of {BACKENDS}, got backend={self.backend!r}")
        up = self.upsample
        if self.patch_stride % 4 or up < 1 or (self.head == "classic" and up & (up - 1)):
            bad(f"patch_stride={self.patch_stride} must be 4 times a power of two (16: 1/16 features, "
                "8: 1/8) so that the decoder upsamples to 1/4 of the input")
        h, w = self.img_size
        if h % self.patch_stride or w % self.patch_stride or h < 4 or w < 4:
            bad(f"img_size={self.img_size} must be multiples of patch_stride={self.patch_stride}")
        if self.grid != (h // self.patch_stride, w // self.patch_stride):
            bad(f"patch_padding={self.patch_padding} gives a {self.grid} token grid for img_size="
                f"{self.img_size}, expected {(h // self.patch_stride, w // self.patch_stride)}")
        if self.window is None and (self.shift or self.pool or self.rel_pos or self.full_every):
            bad("shift, pool, rel_pos and full_every need window=(wh, ww)")
        if self.window is not None and min(self.window) < 1:
            bad(f"window must be positive, got window={self.window}")
        if self.full_every is not None and (not isinstance(self.full_every, int) or self.full_every < 1):
            bad(f"full_every must be a positive int or None, got {self.full_every!r}")
        if self.num_knowledge_tokens < 0:
            bad(f"num_knowledge_tokens must be >= 0, got {self.num_knowledge_tokens}")
        if self.experts > 1 and not 0 < self.part_features < self.embed_dim:
            bad(f"part_features must be in (0, embed_dim), got {self.part_features}")

    # ---- (de)serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["img_size"], d["datasets"] = list(self.img_size), list(self.datasets)
        d["window"] = list(self.window) if self.window else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ViTPoseConfig":
        return config_from_dict(cls, d)

    def replace(self, **overrides) -> "ViTPoseConfig":
        d = self.to_dict()
        if "patch_stride" in overrides and "patch_padding" not in overrides:
            d["patch_padding"] = None
        if "datasets" in overrides and "num_keypoints" not in overrides:
            d["num_keypoints"] = None
        if "num_keypoints" in overrides and "datasets" not in overrides:
            d["datasets"] = None
        d.update(overrides)
        return ViTPoseConfig.from_dict(d)


def _custom_dataset(k: int) -> str:
    from ..data.keypoints import DATASETS, register_dataset
    if k == 17:
        return "coco"
    name = f"custom{k}"
    if name not in DATASETS:
        register_dataset(name, k)
    return name


def vitpose_config(size: str = "B", **overrides) -> ViTPoseConfig:
    """ViTPose-S/B/L/H (``size``), any field overridden: ``vitpose_config("B", head="simple")``."""
    key = size.upper().replace("VITPOSE-", "").replace("VIT-", "")
    if key not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    plus = overrides.pop("plus", False)
    base = dict(SIZES[key])
    if plus:  # ViTPose+: six datasets, six experts
        from ..data.keypoints import VITPOSE_PLUS_DATASETS
        base.update(datasets=VITPOSE_PLUS_DATASETS, experts=len(VITPOSE_PLUS_DATASETS))
    base.update(overrides)
    base.setdefault("name", f"ViTPose{'+' if plus else ''}-{key}")
    return ViTPoseConfig(**base)


# Table 5: ViTPose-B with 1/8 features (patch stride 8, 32x24 tokens at 256x192).
# Full attention every 1/4 of the depth (ViTDet) is full_every = depth // 4 = 3.
_T5 = dict(patch_stride=8)
TABLE5 = {
    "full": vitpose_config("B", **_T5, name="T5 full"),
    "window": vitpose_config("B", **_T5, window=(8, 8), name="T5 window 8x8"),
    "window+shift": vitpose_config("B", **_T5, window=(8, 8), shift=True, name="T5 window+shift 8x8"),
    "window+pool": vitpose_config("B", **_T5, window=(8, 8), pool=True, name="T5 window+pool 8x8"),
    "window+shift+pool": vitpose_config("B", **_T5, window=(8, 8), shift=True, pool=True,
                                        name="T5 window+shift+pool 8x8"),
    "full+window": vitpose_config("B", **_T5, window=(8, 8), full_every=3, name="T5 full+window 8x8"),
    "window+shift+pool 16x12": vitpose_config("B", **_T5, window=(16, 12), shift=True, pool=True,
                                              name="T5 window+shift+pool 16x12"),
}
# The paper's numbers for those rows: training memory (MB, * = fp16), GFLOPs, COCO val AP / AR.
TABLE5_PAPER = {
    "full": dict(train_memory_mb=36141, fp16=True, gflops=76.59, ap=77.4, ap50=91.0, ar=82.4, ar50=94.9),
    "window": dict(train_memory_mb=21161, gflops=66.31, ap=66.4, ap50=87.7, ar=72.9, ar50=91.9),
    "window+shift": dict(train_memory_mb=21161, gflops=66.31, ap=76.4, ap50=90.9, ar=81.6, ar50=94.5),
    "window+pool": dict(train_memory_mb=22893, gflops=66.39, ap=76.4, ap50=90.6, ar=81.6, ar50=94.6),
    "window+shift+pool": dict(train_memory_mb=22893, gflops=66.39, ap=76.8, ap50=90.8, ar=81.9, ar50=94.8),
    "full+window": dict(train_memory_mb=28594, gflops=69.94, ap=76.9, ap50=90.8, ar=82.1, ar50=94.7),
    "window+shift+pool 16x12": dict(train_memory_mb=26778, gflops=68.46, ap=77.1, ap50=91.0, ar=82.2,
                                    ar50=94.8),
}


def num_heads_for(embed_dim: int) -> int:
    """Heads of the standard sizes for a given width (checkpoints do not store it); 64-dim heads else."""
    for s in SIZES.values():
        if s["embed_dim"] == embed_dim:
            return s["num_heads"]
    return max(1, embed_dim // 64) if embed_dim % 64 == 0 else max(
        h for h in range(1, embed_dim + 1) if embed_dim % h == 0 and h <= math.isqrt(embed_dim))
