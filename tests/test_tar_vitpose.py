"""TAR-ViTPose against an independent formulation of the official code (written here: an
mmpretrain-style ViT, mmpose's HeatmapHead, plain nn.MultiheadAttention, the official tensor
layouts and module nesting), with weights drawn so that attention is far from uniform; checkpoint
loading of the official file layout; Eq. 3 masks by hand; fully masked query rows."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vitpose
from vitpose.models.checkpoints import CheckpointError
import vitpose_kernels
from vitpose.models.tar_vitpose import CrossAttention, FFNLayer, SelfAttention, TARViTPose, tar_vitpose_config

# tiny: C=32, 2 encoder heads, 4 temporal heads (head dim 8), 5 joints, 3 frames; the position
# embedding is sized for 64x48 (4x3 tokens) and resized to the 96x64 input (6x4 tokens)
C, DEPTH, HEADS, K, T, JTA = 32, 2, 2, 5, 3, 2
POS_GRID, INPUT = (4, 3), (96, 64)
TINY = dict(embed_dim=C, depth=DEPTH, num_heads=HEADS, num_keypoints=K, deconv_channels=8,
            img_size=(64, 48), frames=T, jta_layers=JTA, drop_path_rate=0.0)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------------------------
# The official model, as its code computes it
# ------------------------------------------------------------------------------------------------
class _Named(nn.Module):
    def __init__(self, **children):
        super().__init__()
        for k, v in children.items():
            setattr(self, k, v)


class MMPretrainAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


class MMPretrainLayer(nn.Module):
    """mmpretrain TransformerEncoderLayer: ln1, attn, ln2, ffn.layers (Linear-GELU-Dropout, Linear)."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C, eps=1e-6), nn.LayerNorm(C, eps=1e-6)
        self.attn = MMPretrainAttention()
        self.ffn = _Named(layers=nn.Sequential(nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Dropout(0.0)),
                                               nn.Linear(4 * C, C), nn.Dropout(0.0)))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ffn.layers(self.ln2(x))


class MMPretrainViT(nn.Module):
    """mmpretrain VisionTransformer(with_cls_token=False, out_type='featmap', patch padding 2)."""

    def __init__(self):
        super().__init__()
        self.patch_embed = _Named(projection=nn.Conv2d(3, C, 16, 16, padding=2))
        self.pos_embed = nn.Parameter(torch.zeros(1, POS_GRID[0] * POS_GRID[1], C))
        self.layers = nn.ModuleList(MMPretrainLayer() for _ in range(DEPTH))
        self.ln1 = nn.LayerNorm(C, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.projection(x)
        hw = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        grid = self.pos_embed.reshape(1, *POS_GRID, C).permute(0, 3, 1, 2)
        pos = F.interpolate(grid.float(), size=hw, mode="bicubic", align_corners=False).to(x.dtype).flatten(2).transpose(1, 2)
        x = x + pos
        for layer in self.layers:
            x = layer(x)
        x = self.ln1(x)
        return (x.reshape(x.shape[0], *hw, C).permute(0, 3, 1, 2),)  # a permuted (strided) view


class HeatmapHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.deconv_layers = nn.Sequential(
            nn.ConvTranspose2d(C, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.final_layer = nn.Conv2d(8, K, 1)


class OfficialCross(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(C, 4, batch_first=True)
        self.norm = nn.LayerNorm(C)

    def forward(self, query, context, attn_mask=None, need_weights=True):
        out, weights = self.mha(query, context, context, attn_mask=attn_mask, need_weights=need_weights)
        return self.norm(query + out), weights


class OfficialSelf(OfficialCross):
    def forward(self, x):
        return super().forward(x, x)[0]


class OfficialFFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(C, 2 * C), nn.GELU(), nn.Linear(2 * C, C)
        self.drop, self.norm = nn.Dropout(0.0), nn.LayerNorm(C)

    def forward(self, x):
        return self.norm(x + self.drop(self.fc2(self.act(self.fc1(x)))))


class OfficialTAR(nn.Module):
    """The official TAR_ViTPose: the mmpose model as ``model`` and its parts again under their own
    names (so the state dict repeats them), the official layouts (reshapes) throughout."""

    def __init__(self, layout="official", threshold=0.2):
        super().__init__()
        self.layout, self.threshold = layout, threshold
        self.model = _Named(backbone=MMPretrainViT(), head=HeatmapHead())
        self.backbone = self.model.backbone
        self.heatmap_head = nn.Sequential(self.model.head.deconv_layers, self.model.head.final_layer)
        self.query_feat, self.query_pe = nn.Embedding(K, C), nn.Embedding(K, C)
        self.masked_attention_layers = nn.ModuleList(OfficialCross() for _ in range(JTA))
        self.self_attention_layers = nn.ModuleList(OfficialSelf() for _ in range(JTA))
        self.ffn_layers = nn.ModuleList(OfficialFFN() for _ in range(JTA))
        self.cross_attention = OfficialCross()
        self.attention_weights = []

    def attn_mask(self, heatmap, size):  # True = blocked, (B*heads, T, K, P)
        BT, J = heatmap.shape[:2]
        lo, hi = heatmap.amin(dim=(2, 3), keepdim=True), heatmap.amax(dim=(2, 3), keepdim=True)
        small = F.interpolate((heatmap - lo) / (hi - lo + 1e-6), size=size, mode="bilinear", align_corners=False)
        mask = (small < self.threshold).view(BT // T, T, J, *size)
        return mask.flatten(3).unsqueeze(1).repeat(1, 4, 1, 1, 1).flatten(0, 1).detach()

    def forward(self, x, need_weights=True):
        B = x.shape[0]
        feats = self.backbone(x.view(-1, *x.shape[2:]))[0]
        h, w = feats.shape[2:]
        init = self.heatmap_head(feats)
        mask = self.attn_mask(init, (h, w))
        out = self.query_feat.weight.unsqueeze(0).repeat(B, 1, 1) + self.query_pe.weight.unsqueeze(0).repeat(B, 1, 1)
        feats = feats.view(B, T, C, h, w)
        if self.layout == "official":
            tokens = feats.flatten(3).reshape(B, T, h * w, C)
            mask = mask.view(-1, K, T, h * w).flatten(2)
        else:  # the paper's reading: tokens are positions, masks per (joint, frame); not the code's
            tokens = feats.flatten(3).transpose(2, 3)
            mask = mask.transpose(1, 2).flatten(2)
        centre, keys = tokens[:, T // 2], tokens.flatten(1, 2)
        self.attention_weights, self.mask = [], mask
        for masked, self_attn, ffn in zip(self.masked_attention_layers, self.self_attention_layers, self.ffn_layers):
            out, weights = masked(out, keys, attn_mask=mask, need_weights=need_weights)
            self.attention_weights.append(weights)
            out = ffn(self_attn(out))
        centre, _ = self.cross_attention(centre, out, need_weights=need_weights)
        if self.layout == "official":
            centre = centre.view(B, C, h, w)
        else:
            centre = centre.transpose(1, 2).reshape(B, C, h, w)
        return self.heatmap_head(centre)


@torch.no_grad()
def randomize(model, seed=0):
    """Weights large enough that attention is far from uniform (checked by the tests); random BN
    statistics; LayerNorm affine away from identity."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g)
        if name.endswith("in_proj_weight") or name.endswith("qkv.weight"):
            p.copy_(r * 1.5 / math.sqrt(p.shape[1]))
        elif "norm" in name or name.split(".")[-2] in ("ln1", "ln2"):
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * r)
        elif p.dim() >= 2 and "query" not in name and "pos_embed" not in name:
            p.copy_(r / math.sqrt(p[0].numel()))
        else:
            p.copy_(r * (0.1 if name.endswith("bias") else 1.0))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


# Random initial heatmaps are not peaked like trained ones: min-max normalised, nearly all of a map
# is above 0.2. A higher threshold gives masks that block about half of the keys.
THRESHOLD = 0.6


def official_and_ours(tmp_path, seed=1):
    official = randomize(OfficialTAR(threshold=THRESHOLD), seed).eval()
    path = tmp_path / "tar_official.pt"
    torch.save({"epoch": 3, "model_state_dict": official.state_dict(),
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 5e-6, "params": [0]}]},
                "scheduler_state_dict": None}, path)
    ours = vitpose.load_model(path, arch="tar-vitpose", num_heads=HEADS, frames=T, mask_threshold=THRESHOLD,
                              drop_path_rate=0.0)
    return official, ours


def clips(seed=1, batch=2):
    return torch.randn(batch, T, 3, *INPUT, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# Whole model
# ------------------------------------------------------------------------------------------------
def test_official_file_layout_repeats_tensors(tmp_path):
    sd = OfficialTAR().state_dict()
    assert "model.backbone.layers.0.attn.qkv.weight" in sd and "backbone.layers.0.attn.qkv.weight" in sd
    assert "model.head.final_layer.weight" in sd and "heatmap_head.1.weight" in sd
    assert "heatmap_head.0.1.running_var" in sd and sd["backbone.pos_embed"].shape == (1, 12, C)


def test_whole_model_matches_official(tmp_path):
    official, ours = official_and_ours(tmp_path)
    assert ours.config.frames == T and ours.config.jta_layers == JTA and ours.config.temporal_heads == 4
    x = clips()
    with torch.no_grad():
        expected = official(x)
        got = ours(x)
    assert got.shape == expected.shape == (2, K, INPUT[0] // 4, INPUT[1] // 4)
    assert rel_err(got, expected) < 1e-5
    # the test has something to catch: masks that both allow and block, attention far from uniform
    allowed = ~official.mask
    assert 0.2 < allowed.float().mean() < 0.9
    assert bool(allowed.any(-1).all())
    for weights in official.attention_weights:  # (B, K, T*P), averaged over heads
        n_allowed = allowed[::4].sum(-1).float()
        assert (weights.amax(-1) * n_allowed).mean() > 4  # uniform would be 1
    # the paper's reading of the layouts (tokens = positions) computes something else, and
    # layout="paper" computes that
    official.layout = "transpose"
    ours.config.layout = "paper"
    with torch.no_grad():
        paper = official(x)
        assert rel_err(paper, expected) > 1e-2
        assert rel_err(ours(x), paper) < 1e-5


def test_whole_model_gradients_match_official(tmp_path):
    """In training mode (BatchNorm on batch statistics, as the official training runs it)."""
    official, ours = official_and_ours(tmp_path, seed=5)
    official.train()
    ours.train()
    assert ours.config.vit.drop_path_rate == 0.0  # (loaded with drop_path_rate=0: deterministic)
    x = clips(seed=4)
    target = torch.randn(2, K, INPUT[0] // 4, INPUT[1] // 4, generator=torch.Generator().manual_seed(5))
    ((official(x) - target) ** 2).mean().backward()
    assert bool((~official.mask).any(-1).all())  # no fully masked row (the official code: NaN)
    ((ours(x) - target) ** 2).mean().backward()
    pairs = {
        "query_feat.weight": official.query_feat.weight,
        "masked_attention_layers.0.mha.in_proj_weight": official.masked_attention_layers[0].mha.in_proj_weight,
        "self_attention_layers.1.mha.out_proj.weight": official.self_attention_layers[1].mha.out_proj.weight,
        "cross_attention.norm.weight": official.cross_attention.norm.weight,
        "backbone.patch_embed.proj.weight": official.backbone.patch_embed.projection.weight,
        "backbone.blocks.0.attn.qkv.weight": official.backbone.layers[0].attn.qkv.weight,
    }
    params = dict(ours.named_parameters())
    for name, ref in pairs.items():
        assert rel_err(params[name].grad, ref.grad) < 1e-4, name
    # BatchNorm ran twice per step in both (initial heatmaps, then the restored centre frame)
    assert torch.allclose(ours.keypoint_head.deconv_layers[1].running_mean,
                          official.model.head.deconv_layers[1].running_mean, atol=1e-6)
    # the position embedding: ours has the (zero, unused-by-mmpretrain) class slot first
    assert rel_err(params["backbone.pos_embed"].grad[:, 1:], official.backbone.pos_embed.grad) < 1e-4


def test_all_masked_rows(tmp_path):
    """Constant initial heatmaps normalise to 0 < 0.2: every key of every query is excluded. The
    official code (need_weights=True) turns the whole output NaN; ours attends to nothing, which is
    what nn.MultiheadAttention's need_weights=False path computes."""
    official, ours = official_and_ours(tmp_path, seed=6)
    with torch.no_grad():
        for m in (official.model.head.final_layer, ours.keypoint_head.final_layer):
            m.weight.zero_()
        x = clips(seed=7)
        assert torch.isnan(official(x)).all()
        expected = official(x, need_weights=False)
        got = ours(x)
    assert not official.mask.logical_not().any()
    assert torch.isfinite(got).all() and rel_err(got, expected) < 1e-5


# ------------------------------------------------------------------------------------------------
# JTA / GRA blocks on their own
# ------------------------------------------------------------------------------------------------
def _copy_block(official, ours):
    ours.load_state_dict(official.state_dict())
    return ours


def test_jta_and_gra_blocks_match_nn_multiheadattention():
    g = torch.Generator().manual_seed(8)
    cross = randomize(OfficialCross(), 9)
    mine = _copy_block(cross, CrossAttention(C, 4))
    q, ctx = 2 * torch.randn(3, K, C, generator=g), 2 * torch.randn(3, 40, C, generator=g)
    key_mask = torch.rand(3, 1, K, 40, generator=g) > 0.6
    key_mask[..., 0] = True
    blocked = (~key_mask).expand(3, 4, K, 40).reshape(12, K, 40)
    expected, weights = cross(q, ctx, attn_mask=blocked)
    assert rel_err(mine(q, ctx, key_mask), expected) < 1e-5                   # JTA cross-attention
    assert (weights.amax(-1) * key_mask.sum(-1).squeeze(1)).mean() > 4        # far from uniform
    assert rel_err(mine(q, ctx), cross(q, ctx)[0]) < 1e-5                     # GRA (no mask)
    selfa = randomize(OfficialSelf(), 10)
    assert rel_err(_copy_block(selfa, SelfAttention(C, 4))(q), selfa(q)) < 1e-5
    ffn = randomize(OfficialFFN(), 11)
    assert rel_err(_copy_block(ffn, FFNLayer(C, 2 * C))(q), ffn(q)) < 1e-5


def test_fully_masked_row_is_zero_attention_without_gradient():
    g = torch.Generator().manual_seed(12)
    block = randomize(CrossAttention(C, 4), 13)
    q = torch.randn(2, K, C, generator=g)
    ctx = torch.randn(2, 20, C, generator=g, requires_grad=True)
    key_mask = torch.rand(2, 1, K, 20, generator=g) > 0.5
    key_mask[..., 0] = True
    key_mask[1, 0, 2] = False  # sample 1, joint 2: no key allowed
    out = block(q, ctx, key_mask)
    assert torch.isfinite(out).all()
    alone = block.norm(q[1, 2] + block.mha.out_proj.bias)
    assert torch.allclose(out[1, 2], alone, atol=1e-6)
    out[1, 2].sum().backward()
    assert ctx.grad is not None and not ctx.grad.any()
    # the other rows are untouched by it
    key_mask2 = key_mask.clone()
    key_mask2[1, 0, 2] = True
    with torch.no_grad():
        other = block(q, ctx, key_mask2)
    keep = torch.ones(2, K, dtype=torch.bool)
    keep[1, 2] = False
    assert torch.equal(out.detach()[keep], other[keep])


# ------------------------------------------------------------------------------------------------
# Eq. 3 masks by hand
# ------------------------------------------------------------------------------------------------
def mask_of(hm, grid, threshold=0.2):
    """The model's Eq. 3 masks for maps (N, K, Hh, Wh) of one frame each: bool (N, K, h*w)."""
    return vitpose_kernels.heatmap_key_mask(hm[:, None], grid, threshold=threshold, packed=False)[:, 0]


def test_heatmap_key_mask_by_hand():
    hm = torch.zeros(1, 2, 8, 8)
    hm[0, 0, 1:3, 1:3] = torch.tensor([[4.0, 2.0], [2.0, 0.0]])  # one bump in the top-left cell
    hm[0, 0] += 1.0                                              # offset: removed by the min
    hm[0, 1] = 3.0                                               # a constant map
    # x4 bilinear, align_corners=False: output (i, j) averages input rows/cols 4i+1, 4i+2.
    # joint 0 normalised: (hm - 1) / (4 + 1e-6); cell (0, 0) = mean(4, 2, 2, 0) / 4 = 0.5 >= 0.2,
    # the other cells are 0. Joint 1: (3 - 3) / 1e-6 = 0 everywhere: nothing allowed.
    assert mask_of(hm, (2, 2)).tolist() == [[[True, False, False, False], [False, False, False, False]]]
    # At the threshold the 1e-6 of the normalisation decides: peak 4 at (7, 7) (not sampled by
    # any cell), cell (0, 0) = (1.6 + 0.8 + 0.8 + 0) / 4 / (4 + 1e-6) = 0.19999995 < 0.2: blocked.
    hm = torch.zeros(1, 1, 8, 8)
    hm[0, 0, 7, 7] = 4.0
    hm[0, 0, 1:3, 1:3] = torch.tensor([[1.6, 0.8], [0.8, 0.0]])
    assert mask_of(hm, (2, 2)).tolist() == [[[False, False, False, False]]]
    hm[0, 0, 1, 1] = 1.6001                                      # 0.2000062: allowed
    assert mask_of(hm, (2, 2)).tolist() == [[[True, False, False, False]]]


# ------------------------------------------------------------------------------------------------
# Names, sizes, checkpoints, bad input
# ------------------------------------------------------------------------------------------------
def test_build_model_names_and_paper_sizes():
    with torch.device("meta"):
        b = vitpose.build_model("tar-vitpose-b", frames=5)
        s = vitpose.build_model("tar-vitpose-s")
    c = b.config
    assert (c.frames, c.jta_layers, c.temporal_heads, c.mask_threshold, c.input_size) == (5, 6, 4, 0.2, (384, 288))
    assert (c.embed_dim, c.vit.depth, c.vit.num_heads, c.vit.img_size) == (768, 12, 12, (256, 192))
    assert c.name == "TAR-ViTPose-B" and s.config.embed_dim == 384
    # Table 3 of the paper: TAR-ViTPose with ViT-S has 35.6M parameters
    assert round(sum(p.numel() for p in s.parameters()) / 1e6, 1) == 35.6
    for size in "lh":
        assert f"tar-vitpose-{size}" in vitpose.architectures()


def test_our_format_round_trip(tmp_path):
    model = randomize(vitpose.build_model("tar-vitpose-s", **TINY), 14).eval()
    x = clips(seed=15)
    for name in ("tar.safetensors", "tar.pth"):
        vitpose.save_model(model, tmp_path / name)
        loaded = vitpose.load_model(tmp_path / name)
        assert isinstance(loaded, TARViTPose) and loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_from_vitpose_keeps_encoder_and_decoder():
    vit = randomize(vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=C, depth=1, num_heads=HEADS,
                                                           img_size=(64, 48), deconv_channels=8)), 16).eval()
    tar = TARViTPose.from_vitpose(vit, frames=T, jta_layers=1).eval()
    frame = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(tar.keypoint_head(tar.backbone(frame)), vit(frame))


def test_checkpoint_errors(tmp_path):
    sd = OfficialTAR().state_dict()
    with pytest.raises(CheckpointError, match="ViT-B"):
        vitpose.load_model(dict(sd), arch="tar-vitpose-b", num_heads=HEADS, frames=T)
    bad = dict(sd, **{"extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="extra.weight"):
        vitpose.load_model(bad, arch="tar-vitpose", num_heads=HEADS, frames=T)
    missing = {k: v for k, v in sd.items() if not k.startswith("cross_attention.")}
    with pytest.raises(CheckpointError, match="cross_attention.mha.in_proj_weight"):
        vitpose.load_model(missing, arch="tar-vitpose", num_heads=HEADS, frames=T)
    clash = dict(sd)
    clash["backbone.ln1.weight"] = clash["backbone.ln1.weight"] + 1
    with pytest.raises(CheckpointError, match="copies"):
        vitpose.load_model(clash, arch="tar-vitpose", num_heads=HEADS, frames=T)
    with pytest.raises(ValueError, match="arch"):
        vitpose.load_model(dict(sd), arch="tar-vitpose-x")


def test_bad_input():
    model = vitpose.build_model("tar-vitpose-s", **TINY).eval()
    with pytest.raises(ValueError, match=r"T=3"):
        model(torch.randn(1, 5, 3, 64, 48))
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, T, 3, 60, 48))
    with pytest.raises(TypeError, match="dtype"):
        model(torch.zeros(1, T, 3, 64, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match="temporal_heads"):
        tar_vitpose_config("S", embed_dim=30, num_heads=3, temporal_heads=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tar_vitpose_b_on_gpu_fused_matches_reference():
    """TAR-ViTPose-B at 384x288, T=5, on the GPU: the fused masked attention and mask kernels
    (fastest backend) against the reference ops, fp32 and bf16; the official layouts throughout."""
    torch.manual_seed(0)
    fused = randomize(vitpose.build_model("tar-vitpose-b", frames=5), 17).cuda().eval()
    ref = vitpose.build_model("tar-vitpose-b", frames=5, backend="reference").cuda().eval()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 3, 384, 288, device="cuda")
    with torch.no_grad():
        expected = ref(x)
        assert rel_err(fused(x), expected) < 1e-4
        got = fused.to(torch.bfloat16)(x.bfloat16()).float()
    # bf16: heatmaps near the mask threshold may flip keys, so only a loose agreement is owed
    assert torch.isfinite(got).all()
    assert torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1] > 0.95


def test_init_from_a_vitpose_checkpoint():
    """``vitpose train --init vitpose.pth`` on a TAR-ViTPose: encoder and decoder from the file, the
    temporal modules left as initialised (the paper's starting point)."""
    from vitpose.models.pretrained import load_pretrained
    vit = randomize(vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=C, depth=DEPTH, num_heads=HEADS,
                                                           img_size=(64, 48), deconv_channels=8)), 18)
    tar = vitpose.build_model("tar-vitpose-s", embed_dim=C, depth=DEPTH, num_heads=HEADS, img_size=(64, 48),
                              deconv_channels=8, frames=T, jta_layers=1)
    report = load_pretrained(tar, vit.state_dict())
    assert report["loaded"] == len(vit.state_dict()) and not report["unused"]
    assert report["missing"] and all(k.startswith(("query_", "masked_", "self_", "ffn_", "cross_"))
                                     for k in report["missing"])
    assert torch.equal(tar.backbone.blocks[1].attn.qkv.weight, vit.backbone.blocks[1].attn.qkv.weight)
    assert tar.config.depth == DEPTH and tar.config.grid == (4, 3)   # the encoder's fields read through
