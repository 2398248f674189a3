"""ViTPose: a plain vision transformer and a light decoder (Xu et al., NeurIPS 2022).

Sec. 3.1: patch embedding F_0 = PatchEmbed(X), then transformer layers (Eq. 1)

    F'_{i+1} = F_i + MHSA(LN(F_i)),    F_{i+1} = F'_{i+1} + FFN(LN(F'_{i+1}))

then a decoder: classic (Eq. 2, two deconvolution blocks and a 1x1 convolution) or simple (Eq. 3,
ReLU, bilinear x4, 3x3 convolution). Sec. 3.3: per-layer attention (window, shift, pool, full every
1/4 of the depth), 1/8 features by a patch stride of 8, one decoder per dataset. ViTPose+: FFN with
per-dataset experts. Sec. 3.4: a knowledge token, a global token of every attention layer.

Module names follow the official checkpoints (backbone.blocks.N.attn.qkv, keypoint_head.final_layer,
...), so official state dicts load as they are and parts can be frozen by name.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import vitpose_kernels

from .configs import ViTPoseConfig


# ------------------------------------------------------------------------------------------------
# Backbone
# ------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """F_0 = PatchEmbed(X): 16x16 patches with stride d (16, or 8 for overlapping patches)."""

    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_stride,
                              padding=cfg.patch_padding)

    def forward(self, x):
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def resize_pos_embed(pos: torch.Tensor, old_grid, new_grid) -> torch.Tensor:
    """Bicubic resize of the grid part of a (1, 1 + Hg*Wg, C) position embedding; slot 0 kept."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos
    C = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, *old_grid, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, C)], dim=1)


class Attention(nn.Module):
    """MHSA of one layer through vitpose_kernels.window_attention: full, window, shifted window,
    pooled window, with optional decomposed relative position; global (knowledge) tokens first."""

    def __init__(self, cfg: ViTPoseConfig, layer: int):
        super().__init__()
        plan = cfg.layer_attention(layer)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.window, self.shift, self.pool = plan["window"], plan["shift"], plan["pool"]
        self.backend = cfg.backend
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        if plan["rel_pos"]:
            wh, ww = self.window
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * wh - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * ww - 1, self.head_dim))
        else:
            self.rel_pos_h = self.rel_pos_w = None

    def forward(self, x, grid, num_global: int = 0):
        B, N, C = x.shape
        # One Linear for q, k and v, passed packed: the kernels read q, k, v in place and their
        # backward writes one (B, N, 3, H, D) gradient (no copies, no stack of three gradients).
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        out = vitpose_kernels.window_attention_qkvpacked(
            qkv, grid=grid, window=self.window, shift=self.shift, pool=self.pool,
            num_global=num_global, rel_pos_h=self.rel_pos_h, rel_pos_w=self.rel_pos_w,
            backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def extra_repr(self):
        return f"heads={self.num_heads}, window={self.window}, shift={self.shift}, pool={self.pool}"


class Route:
    """Which dataset (expert, decoder) each sample of a batch uses: one index for all, or groups."""

    def __init__(self, dataset_index, batch: int, device, num: int):
        if dataset_index is None:
            dataset_index = 0
        if isinstance(dataset_index, int) and not isinstance(dataset_index, bool):
            idx = [dataset_index]
        else:
            t = torch.as_tensor(dataset_index)
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() > 1:
                raise TypeError(f"dataset_index must be an int or an integer tensor (B,), got {dataset_index!r}")
            idx = t.reshape(-1).tolist()
            if len(idx) not in (1, batch):
                raise ValueError(f"dataset_index must have one entry per sample (B={batch}), got {len(idx)}")
        bad = [i for i in idx if not 0 <= i < num]
        if bad:
            raise ValueError(f"dataset_index must be in [0, {num}) for this model, got {sorted(set(bad))}")
        self.uniform = idx[0] if len(set(idx)) == 1 else None
        self.groups = []
        if self.uniform is None:
            t = torch.tensor(idx, device=device)
            self.groups = [(e, (t == e).nonzero()[:, 0]) for e in sorted(set(idx))]


class FFN(nn.Module):
    """fc1 - GELU - fc2. ViTPose+: fc2 yields C - part_features shared channels and the expert of the
    sample's dataset, Linear(4C, part_features), the remaining ones (concatenated)."""

    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        hidden, part = cfg.mlp_hidden, (cfg.part_features if cfg.experts > 1 else 0)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, cfg.embed_dim - part)
        self.experts = nn.ModuleList(nn.Linear(hidden, part) for _ in range(cfg.experts)) if part else None

    def forward(self, x, route: Route | None = None):
        h = self.act(self.fc1(x))
        shared = self.fc2(h)
        if self.experts is None:
            return shared
        if route is None or route.uniform is not None:
            expert = self.experts[route.uniform if route else 0](h)
        else:
            expert = h.new_empty(*h.shape[:-1], self.experts[0].out_features)
            for e, sel in route.groups:
                expert[sel] = self.experts[e](h[sel])
        return torch.cat([shared, expert], dim=-1)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Eq. 1: F' = F + MHSA(LN(F)), F_next = F' + FFN(LN(F'))."""

    def __init__(self, cfg: ViTPoseConfig, layer: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg, layer)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.mlp = FFN(cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, grid, num_global=0, route=None):
        x = x + self.drop_path(self.attn(self.norm1(x), grid, num_global))
        return x + self.drop_path(self.mlp(self.norm2(x), route))


class ViT(nn.Module):
    """The plain, non-hierarchical encoder: (B, 3, H, W) -> F_out (B, C, H/d, W/d)."""

    def __init__(self, cfg: ViTPoseConfig):
        super().__init__()
        self.grid = cfg.grid
        self.patch_embed = PatchEmbed(cfg)
        # Absolute position embedding with the class-token slot of the pre-trained ViT; that slot is
        # added to every patch token (as in the official code), so checkpoints load unchanged.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], cfg.embed_dim))
        self.knowledge_token = (nn.Parameter(torch.zeros(1, cfg.num_knowledge_tokens, cfg.embed_dim))
                                if cfg.num_knowledge_tokens else None)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear decay
        self.blocks = nn.ModuleList(Block(cfg, i, rates[i]) for i in range(cfg.depth))
        self.last_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    @property
    def num_global(self) -> int:
        return 0 if self.knowledge_token is None else self.knowledge_token.shape[1]

    def forward(self, x, route: Route | None = None):
        B = x.shape[0]
        x, grid = self.patch_embed(x)
        pos = resize_pos_embed(self.pos_embed, self.grid, grid)
        x = x + pos[:, 1:] + pos[:, :1]
        G = self.num_global
        if G:  # Sec. 3.4: the knowledge token joins the visual tokens as a global token (placed
            # first, as window_attention wants; attention does not depend on token order)
            x = torch.cat([self.knowledge_token.expand(B, -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x, grid, G, route)
        x = self.last_norm(x[:, G:])
        return x.transpose(1, 2).reshape(B, -1, *grid)


# ------------------------------------------------------------------------------------------------
# Decoders
# ------------------------------------------------------------------------------------------------
class ClassicDecoder(nn.Module):
    """Eq. 2: K = Conv1x1(Deconv(Deconv(F_out))), Deconv = ConvTranspose 4x4/2 + BN + ReLU.
    With 1/8 features a single deconvolution block keeps the heatmaps at 1/4 of the input."""

    def __init__(self, in_channels: int, num_keypoints: int, upsample: int = 4, channels: int = 256):
        super().__init__()
        layers, c = [], in_channels
        for _ in range(int(math.log2(upsample))):
            layers += [nn.ConvTranspose2d(c, channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            c = channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(c, num_keypoints, 1)
        self.folded = False

    def forward(self, x):
        return self.final_layer(self.deconv_layers(x))

    @torch.no_grad()
    def fold_batchnorm(self):
        """Fold each inference-mode BatchNorm into the preceding deconvolution (adds its bias)."""
        if self.folded:
            return self
        for i in range(0, len(self.deconv_layers), 3):
            deconv, bn = self.deconv_layers[i], self.deconv_layers[i + 1]
            # In fp32 whatever the model's dtype: a bf16 product would round the folded weights a
            # second time.
            gain = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
            fused = nn.ConvTranspose2d(deconv.in_channels, deconv.out_channels, deconv.kernel_size,
                                       stride=deconv.stride, padding=deconv.padding, bias=True)
            fused = fused.to(deconv.weight.device, deconv.weight.dtype)
            # ConvTranspose2d weights are (in, out, k, k): BN's channel is dim 1
            fused.weight.copy_(deconv.weight.float() * gain.view(1, -1, 1, 1))
            fused.bias.copy_(bn.bias.float() - bn.running_mean.float() * gain)
            self.deconv_layers[i], self.deconv_layers[i + 1] = fused, nn.Identity()
        self.folded = True
        return self


class SimpleDecoder(nn.Module):
    """Eq. 3: K = Conv3x3(Bilinear(ReLU(F_out))), one fused vitpose_kernels.simple_decoder call."""

    def __init__(self, in_channels: int, num_keypoints: int, upsample: int = 4, backend=None):
        super().__init__()
        self.upsample, self.backend = upsample, backend
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, 3, padding=1)

    def forward(self, x):
        return vitpose_kernels.simple_decoder(x, self.final_layer.weight, self.final_layer.bias,
                                              scale_factor=self.upsample, backend=self.backend)


def make_decoder(cfg: ViTPoseConfig, num_keypoints: int) -> nn.Module:
    if cfg.head == "simple":
        return SimpleDecoder(cfg.embed_dim, num_keypoints, cfg.upsample, cfg.backend)
    return ClassicDecoder(cfg.embed_dim, num_keypoints, cfg.upsample, cfg.deconv_channels)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class ViTPose(nn.Module):
    """ViTPose(config)(pixel_values (B, 3, H, W), dataset_index=None) -> heatmaps (B, K, H/4, W/4).

    dataset_index (int or (B,) ints, default 0) picks the ViTPose+ expert and the decoder of each
    sample. A batch that mixes decoders with different keypoint counts returns K = the largest,
    zero in the channels a sample's decoder does not have.
    """

    def __init__(self, config: ViTPoseConfig | None = None):
        super().__init__()
        # A private copy: attaching a knowledge token updates it, and presets stay as they are.
        self.config = config = copy.deepcopy(config) if config is not None else ViTPoseConfig()
        self.backbone = ViT(config)
        heads = [make_decoder(config, k) for k in config.head_keypoints]
        self.keypoint_head = heads[0]
        self.associate_keypoint_heads = nn.ModuleList(heads[1:])  # empty: no state-dict keys
        self.reset_parameters()
        # Let vitpose_kernels look at this machine now, not inside a torch.compile trace (its probe
        # imports modules, which dynamo cannot trace with fullgraph=True).
        vitpose_kernels.backends()

    # The top-down pipeline's protocol (shared with TokenPose): crop size (W, H), heatmap decoding
    # (mmpose 1.x UDP with DARK-UDP), keypoint sets of the heads, the kernels' backend.
    decode_method = "udp"

    @property
    def input_size(self) -> tuple[int, int]:
        return self.config.img_size[1], self.config.img_size[0]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.config.datasets)

    @property
    def backend(self):
        return self.config.backend

    @property
    def heads(self) -> list[nn.Module]:
        return [self.keypoint_head, *self.associate_keypoint_heads]

    @property
    def num_datasets(self) -> int:
        return max(self.config.experts, len(self.config.datasets))

    @torch.no_grad()
    def reset_parameters(self):
        # The patch embedding keeps PyTorch's init; the decoders' convolutions get mmpose's head init.
        init_weights(self, convs=(nn.ConvTranspose2d, nn.Conv2d), skip=self.backbone.patch_embed.proj)
        nn.init.trunc_normal_(self.backbone.pos_embed, std=0.02)
        if self.backbone.knowledge_token is not None:
            nn.init.trunc_normal_(self.backbone.knowledge_token, std=0.02)

    def forward(self, pixel_values: torch.Tensor, dataset_index=None) -> torch.Tensor:
        self._check_input(pixel_values)
        route = Route(dataset_index, pixel_values.shape[0], pixel_values.device, self.num_datasets)
        features = self.backbone(pixel_values, route)
        heads = self.heads
        if route.uniform is not None:
            return heads[min(route.uniform, len(heads) - 1)](features)
        if len(heads) == 1:
            return heads[0](features)
        outs = [(sel, heads[min(e, len(heads) - 1)](features[sel])) for e, sel in route.groups]
        K = max(o.shape[1] for _, o in outs)
        heatmaps = features.new_zeros(features.shape[0], K, *outs[0][1].shape[2:])
        for sel, o in outs:
            heatmaps[sel, : o.shape[1]] = o
        return heatmaps

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got pixel_values.shape={tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"pixel_values must be normalized floats, got dtype={x.dtype}")
        s = self.config.patch_stride
        if x.shape[0] == 0 or x.shape[2] % s or x.shape[3] % s:
            raise ValueError(f"pixel_values must be a non-empty batch with H, W multiples of {s}, "
                             f"got pixel_values.shape={tuple(x.shape)} (the model was built for "
                             f"{self.config.img_size})")

    def fold_batchnorm(self) -> "ViTPose":
        """For inference: BatchNorm of the classic decoders folded into their deconvolutions."""
        for head in self.heads:
            if isinstance(head, ClassicDecoder):
                head.fold_batchnorm()
        return self

    @property
    def folded(self) -> bool:
        return any(getattr(h, "folded", False) for h in self.heads)

    def extra_repr(self):
        c = self.config
        return (f"{c.name}: C={c.embed_dim}, depth={c.depth}, heads={c.num_heads}, grid={c.grid}, "
                f"decoder={c.head}, datasets={list(c.datasets)}, experts={c.experts}")


@torch.no_grad()
def init_weights(model: nn.Module, convs=(nn.Conv2d,), skip: nn.Module | None = None) -> None:
    """The initialization the official ViTPose (mmpose) and TokenPose (HRNet code) share, module by
    module in ``model.modules()`` order: Linear trunc_normal(0.02), LayerNorm and BatchNorm 1/0,
    convolutions of the types ``convs`` (but ``skip``) normal(0.001), every bias zero."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, convs) and m is not skip:
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def freeze(model: ViTPose, part: str) -> list[str]:
    """Table 6's partial finetuning: freeze "mhsa" (attn + norm1 of every block) or "ffn" (mlp + norm2,
    and as in the official code the patch and position embeddings). Returns the frozen names."""
    if part not in ("mhsa", "ffn"):
        raise ValueError(f"part must be 'mhsa' or 'ffn', got {part!r}")
    keys = ((".attn.", ".norm1.") if part == "mhsa" else
            (".mlp.", ".norm2.", "backbone.patch_embed.", "backbone.pos_embed"))
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith("backbone.") and any(k in name or name.startswith(k) for k in keys):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
