"""TokenPose against an independent formulation written here: plain functional PyTorch driven by the
official state-dict names (the structure is read off the keys), dense softmax attention, F.unfold
patches. Same random weights -> same heatmaps (fp32, 1e-5 relative), with attention weights large
enough that attention is far from uniform (checked). Also: Table 1's parameters and GFLOPs,
Triton-interpreter parity of T and S, the sine embedding, the MLP-head rule, bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitpose
from vitpose.models.complexity import paper_counts
from vitpose.models.tokenpose import (TABLE1_PAPER, VARIANTS, TokenPose, sine_position_embedding,
                                      tokenpose_config)

# Tiny versions with the official wiring (HRNet's four modules of four blocks, three transformers for
# L, the head layouts) and the official head dims: T 12, S/B/L-D6 24, L-D24 16.
TINY = {
    "T": dict(img_size=(64, 48), patch_size=(8, 6), dim=48, heads=4, depth=2, hidden_heatmap_dim=96),
    "S-v1": dict(img_size=(64, 48), dim=48, heads=2, depth=2, hidden_heatmap_dim=96),
    "S-v2": dict(img_size=(64, 48), dim=48, heads=2, depth=2, hidden_heatmap_dim=96),
    "B": dict(img_size=(64, 48), hrnet_width=8, dim=48, heads=2, depth=2, hidden_heatmap_dim=96),
    "L/D6": dict(img_size=(64, 48), hrnet_width=8, dim=48, heads=2, depth=1, hidden_heatmap_dim=64),
    "L/D24": dict(img_size=(64, 48), hrnet_width=8, dim=48, heads=3, depth=2, hidden_heatmap_dim=64),
}


# ------------------------------------------------------------------------------------------------
# The independent formulation
# ------------------------------------------------------------------------------------------------
class Official:
    """The official TokenPose forward as plain functions of a state dict with the official names."""

    def __init__(self, sd, *, heads, scale, patch, pos_type, heatmap):
        self.sd, self.heads, self.scale, self.patch = sd, heads, scale, patch
        self.pos_type, self.heatmap = pos_type, heatmap
        self.entropy = []  # normalized attention entropy per layer (1 = uniform)

    def has(self, k):
        return k in self.sd

    # -- CNN pieces
    def conv(self, x, p, stride=1):
        w = self.sd[p + ".weight"]
        return F.conv2d(x, w, self.sd.get(p + ".bias"), stride, w.shape[-1] // 2)

    def bn(self, x, p):
        s = self.sd
        return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                            False, 0.0, 1e-5)

    def block(self, x, p):
        """BasicBlock or Bottleneck, told apart by a conv3."""
        out = F.relu(self.bn(self.conv(x, p + ".conv1"), p + ".bn1"))
        out = self.bn(self.conv(out, p + ".conv2"), p + ".bn2")
        if self.has(p + ".conv3.weight"):
            out = self.bn(self.conv(F.relu(out), p + ".conv3"), p + ".bn3")
        short = x if not self.has(p + ".downsample.0.weight") else self.bn(self.conv(x, p + ".downsample.0"),
                                                                          p + ".downsample.1")
        return F.relu(out + short)

    def blocks(self, x, p):
        i = 0
        while self.has(f"{p}.{i}.conv1.weight"):
            x = self.block(x, f"{p}.{i}")
            i += 1
        return x

    def stem(self, x, p):
        x = F.relu(self.bn(self.conv(x, p + "conv1", 2), p + "bn1"))
        x = F.relu(self.bn(self.conv(x, p + "conv2", 2), p + "bn2"))
        return self.blocks(x, p + "layer1")

    def count(self, prefix):
        """How many numbered children a module has: i such that some key starts with prefix.i."""
        return len({k[len(prefix):].split(".")[1] for k in self.sd if k.startswith(prefix + ".")})

    def hr_module(self, xs, p):
        xs = [self.blocks(x, f"{p}.branches.{i}") for i, x in enumerate(xs)]
        out = []
        for i in range(self.count(f"{p}.fuse_layers")):  # one per output branch (1 in the last module)
            y = 0
            for j, x in enumerate(xs):
                q = f"{p}.fuse_layers.{i}.{j}"
                if j > i:  # 1x1 conv, BN, nearest upsampling
                    x = F.interpolate(self.bn(self.conv(x, q + ".0"), q + ".1"), scale_factor=2 ** (j - i),
                                      mode="nearest")
                elif j < i:  # (i - j) stride-2 3x3 convs, ReLU between
                    for k in range(i - j):
                        x = self.bn(self.conv(x, f"{q}.{k}.0", 2), f"{q}.{k}.1")
                        x = F.relu(x) if k < i - j - 1 else x
                y = y + x
            out.append(F.relu(y))
        return out

    def hrnet(self, x):
        x = self.stem(x, "pre_feature.")
        t = "pre_feature.transition1"
        xs = [F.relu(self.bn(self.conv(x, t + ".0.0"), t + ".0.1")),
              F.relu(self.bn(self.conv(x, t + ".1.0.0", 2), t + ".1.0.1"))]
        for stage, nxt in (("stage2", "transition2"), ("stage3", None)):
            for m in range(self.count(f"pre_feature.{stage}")):
                xs = self.hr_module(xs, f"pre_feature.{stage}.{m}")
            if nxt:
                t = f"pre_feature.{nxt}"
                xs = xs + [F.relu(self.bn(self.conv(xs[-1], t + ".2.0.0", 2), t + ".2.0.1"))]
        return xs[0]

    # -- transformer
    def layer_norm(self, x, p):
        return F.layer_norm(x, x.shape[-1:], self.sd[p + ".weight"], self.sd[p + ".bias"], 1e-5)

    def linear(self, x, p):
        return F.linear(x, self.sd[p + ".weight"], self.sd.get(p + ".bias"))

    def attention(self, x, p):
        B, N, C = x.shape
        q, k, v = self.linear(x, p + ".to_qkv").chunk(3, dim=-1)
        q, k, v = (t.reshape(B, N, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) * self.scale, dim=-1)
        self.entropy.append(float(-(attn * attn.clamp_min(1e-30).log()).sum(-1).mean() / math.log(N)))
        out = torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(B, N, C)
        return self.linear(out, p + ".to_out.0")

    def transformer(self, x, p, K, pos):
        i = 0
        while self.has(f"{p}.layers.{i}.0.fn.norm.weight"):
            if i > 0 and self.pos_type == "sine-full":
                x = x.clone()
                x[:, K:] += pos
            q = f"{p}.layers.{i}"
            x = x + self.attention(self.layer_norm(x, q + ".0.fn.norm"), q + ".0.fn.fn")
            h = self.layer_norm(x, q + ".1.fn.norm")
            x = x + self.linear(F.gelu(self.linear(h, q + ".1.fn.fn.net.0")), q + ".1.fn.fn.net.3")
            i += 1
        return x

    def tokens(self, feature, p):
        ph, pw = self.patch
        B, C = feature.shape[:2]
        cols = F.unfold(feature, (ph, pw), stride=(ph, pw))            # (B, C*ph*pw, L), (c, p1, p2)
        patches = cols.reshape(B, C, ph * pw, -1).permute(0, 3, 2, 1).reshape(B, cols.shape[-1], -1)
        x = self.linear(patches, p + ".patch_to_embedding")
        kp = self.sd[p + ".keypoint_token"].expand(B, -1, -1)
        K, pos = kp.shape[1], self.sd[p + ".pos_embedding"]
        if self.pos_type == "learnable":
            x = torch.cat([kp, x], 1) + pos
        else:
            x = torch.cat([kp, x + pos], 1)
        stacks = [f"{p}.transformer"] if self.has(f"{p}.transformer.layers.0.0.fn.norm.weight") else \
            [f"{p}.transformer{s}" for s in (1, 2, 3)]
        outs = []
        for s in stacks:
            x = self.transformer(x, s, K, pos)
            outs.append(x[:, :K])
        y = torch.cat(outs, -1)
        i = 0
        while self.has(f"{p}.mlp_head.{i}.weight"):
            y = self.layer_norm(y, f"{p}.mlp_head.{i}") if i % 2 == 0 else self.linear(y, f"{p}.mlp_head.{i}")
            i += 1
        return y.reshape(B, K, *self.heatmap)

    def __call__(self, img):
        if self.has("features.keypoint_token"):
            return self.tokens(self.stem(img, "features."), "features")
        feature = self.hrnet(img) if self.has("pre_feature.conv1.weight") else img
        return self.tokens(feature, "transformer")


def randomized(model: TokenPose, seed=0, qkv_std=0.25) -> dict:
    """Random weights under the official names; q/k projections large (peaked attention), BN
    statistics random, the sine embedding as built."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point() or k.endswith("pos_embedding") and model.config.pos_embedding != "learnable":
            sd[k] = v.clone()
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("to_qkv.weight"):
            sd[k] = torch.randn(v.shape, generator=g) * qkv_std
        elif v.dim() == 1 and k.endswith(".weight"):  # LayerNorm / BatchNorm gains
            sd[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = torch.randn(v.shape, generator=g) * (0.5 / math.sqrt(v[0].numel()) if v.dim() > 1 else 0.1)
    return sd


def official_for(model: TokenPose, sd) -> Official:
    c = model.config
    return Official(sd, heads=c.heads, scale=(c.dim // c.heads if c.scale_with_head else c.dim) ** -0.5,
                    patch=c.patch_size, pos_type=c.pos_embedding, heatmap=c.heatmap_size)


def check_against_official(model: TokenPose, batch=2, seed=0, qkv_std=0.4):
    c = model.config
    if not c.scale_with_head:  # S's smaller scale d^-0.5: larger q, k for the same peakedness
        qkv_std *= (c.dim / c.head_dim) ** 0.25
    sd = randomized(model, seed, qkv_std)
    loaded = vitpose.load_model(sd, **_overrides(model))
    assert set(loaded.state_dict()) == set(sd)
    x = torch.randn(batch, 3, *model.config.img_size, generator=torch.Generator().manual_seed(seed + 1))
    official = official_for(model, sd)
    with torch.no_grad():
        want = official(x)
        got = loaded(x)
    rel = ((got - want).abs().max() / want.abs().max()).item()
    return rel, official.entropy, got


def _overrides(model):
    """What the tensors of a shrunken model cannot tell (a full-size one needs none)."""
    c = model.config
    return dict(heads=c.heads, patch_size=c.patch_size, img_size=c.img_size, pos_embedding=c.pos_embedding)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_variant_matches_official_formulation(variant):
    torch.manual_seed(0)
    model = TokenPose(tokenpose_config(variant, **TINY[variant]))
    rel, entropy, out = check_against_official(model)
    assert rel < 1e-5, (variant, rel)
    # attention far from uniform in every layer (uniform: 1.0)
    assert max(entropy) < 0.5, (variant, entropy)
    assert out.shape == (2, 17, 16, 12) and out.std() > 0.05


@pytest.mark.parametrize("variant", ["T", "S-v1"])
def test_full_size_matches_official_formulation(variant):
    torch.manual_seed(0)
    model = TokenPose(tokenpose_config(variant))
    rel, entropy, out = check_against_official(model, batch=1, qkv_std=0.2)
    assert rel < 1e-5, (variant, rel)
    assert max(entropy) < 0.5, (variant, entropy)
    assert out.shape == (1, 17, 64, 48)


def test_official_wiring_per_variant():
    """What the official code decides per variant: attention scale, head layout, head dims, grids."""
    want = {  # scale_with_head, two-layer head, head dim, grid, patch
        "T": (True, True, 12, (16, 16), (16, 12)), "S-v1": (False, True, 24, (16, 16), (4, 3)),
        "S-v2": (False, True, 24, (32, 24), (2, 2)), "B": (True, True, 24, (16, 16), (4, 3)),
        "L/D6": (True, False, 24, (16, 16), (4, 3)), "L/D24": (True, False, 16, (16, 16), (4, 3)),
    }
    for v, (swh, two, hd, grid, patch) in want.items():
        c = tokenpose_config(v)
        assert (c.scale_with_head, c.two_layer_head, c.head_dim, c.grid, c.patch_size) == (swh, two, hd, grid, patch), v
        assert c.pos_embedding == "sine-full"
        assert c.attention_scale == pytest.approx((hd if swh else 192) ** -0.5)
    l384 = tokenpose_config("L/D24", img_size=(384, 288))  # the official 384x288 config
    assert (l384.patch_size, l384.grid, l384.heatmap_size, l384.patch_dim) == ((6, 4), (16, 18), (96, 72), 48 * 24)
    for v in VARIANTS:
        c = tokenpose_config(v, img_size=(384, 288))
        assert c.heatmap_size == (96, 72) and c.num_patches in (256, 288, 768)
    with torch.device("meta"):
        m = vitpose.build_model("tokenpose-l-d24", img_size=(384, 288))
    assert m.transformer.mlp_head[1].out_features == 96 * 72 and m.input_size == (288, 384)


def test_learnable_and_plain_sine_embeddings():
    """The two other official position embeddings: learnable over all tokens, sine added once."""
    for pos in ("learnable", "sine"):
        model = TokenPose(tokenpose_config("T", **TINY["T"], pos_embedding=pos))
        rel, _, _ = check_against_official(model)
        assert rel < 1e-5, (pos, rel)
    learn = TokenPose(tokenpose_config("T", **TINY["T"], pos_embedding="learnable"))
    assert learn.transformer.pos_embedding.requires_grad and learn.transformer.pos_embedding.shape[1] == 17 + 64
    sine = TokenPose(tokenpose_config("T", **TINY["T"]))
    assert "transformer.pos_embedding" not in dict(sine.named_parameters())  # constant, still in the state dict


def test_sine_embedding_formula():
    """DETR-style 2D sine, normalized to 2*pi: rows in the first half, columns in the second."""
    h, w, d = 5, 7, 16
    pe = sine_position_embedding((h, w), d).numpy().reshape(h, w, d)
    t = 10000.0 ** (2 * (np.arange(d // 2) // 2) / (d // 2))
    for y in range(h):
        for x in range(w):
            a, b = (y + 1) / h * 2 * np.pi / t, (x + 1) / w * 2 * np.pi / t
            want = np.concatenate([np.where(np.arange(d // 2) % 2 == 0, np.sin(a), np.cos(a)),
                                   np.where(np.arange(d // 2) % 2 == 0, np.sin(b), np.cos(b))])
            assert np.abs(pe[y, x] - want).max() < 2e-6


@pytest.mark.parametrize("variant", ["T", "S-v1"])
def test_triton_interpreter_parity(variant):
    """The fused attention (Triton, through the interpreter here) against the reference backend:
    forward and the gradients a training step needs, at small shapes."""
    kw = dict(TINY[variant], img_size=(32, 24), depth=1, dim=2 * TINY[variant]["dim"] // TINY[variant]["heads"],
              heads=2, hidden_heatmap_dim=48)  # two heads of the variant's head dim
    if variant == "T":
        kw["patch_size"] = (8, 6)
    torch.manual_seed(0)
    models = {b: TokenPose(tokenpose_config(variant, **kw, backend=b)) for b in ("triton", "reference")}
    sd = randomized(models["reference"])
    grads = {}
    for b, m in models.items():
        m.load_state_dict(sd)
        x = torch.randn(1, 3, 32, 24, generator=torch.Generator().manual_seed(3))
        out = m(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[b] = (out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if "to_qkv" in n})
    (o_t, g_t), (o_r, g_r) = grads["triton"], grads["reference"]
    assert (o_t - o_r).abs().max() <= 1e-5 * o_r.abs().max()
    for n in g_r:
        assert (g_t[n] - g_r[n]).abs().max() <= 1e-4 * g_r[n].abs().max(), n


def test_window_attention_serves_tokenpose_head_dims():
    """Head dims 12 (T), 16 (L/D24), 24 (S, B, L/D6): the reference and Triton serve them all."""
    import vitpose_kernels
    for d in (12, 16, 24):
        q = torch.randn(1, 2, 17 + 4 * 3, d)
        reasons = vitpose_kernels.explain("window_attention", q, q, q, grid=(4, 3), num_global=17)
        assert reasons["reference"] == [] and reasons["triton"] == []


@pytest.mark.parametrize("D", [12, 24])
def test_window_attention_parity_at_tokenpose_head_dims(D):
    """Full attention with 17 global (keypoint) tokens first, at TokenPose's head dims: Triton (the
    interpreter here) against the float64 reference, forward and gradients, by the shared harness
    (its CI sweep has head dim 16 with global tokens already)."""
    import parity
    parity.check_window_attention("triton", parity.AttentionCase(grid=(4, 3), window=None, num_global=17, D=D),
                                  torch.device("cpu"))


@pytest.mark.parametrize("D", [16, 24])
def test_cuda_window_attention_at_tokenpose_head_dims_emulated(D):
    """The CUDA kernels (multiples of 8) at TokenPose-L/D24's and S/B's head dims, bf16, with the 17
    keypoint tokens, run on the CPU through tests/cuda_emulator."""
    import cuda_emulator
    import parity
    why = cuda_emulator.skip_reason()
    if why is not None:
        pytest.skip(f"CUDA emulator unavailable: {why}")
    with cuda_emulator.emulated():
        parity.check_window_attention("cuda", parity.AttentionCase(grid=(4, 3), window=None, num_global=17, D=D,
                                                                   dtype=torch.bfloat16), torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_takes_head_dims_16_and_24_and_leaves_12_to_triton():
    import vitpose_kernels
    if vitpose_kernels.backends("window_attention")["cuda"]:
        pytest.skip(f"CUDA backend unavailable: {vitpose_kernels.backends('window_attention')['cuda']}")
    for d in (12, 16, 24):
        q = torch.randn(2, 8, 17 + 16 * 16, d, device="cuda", dtype=torch.bfloat16)
        reasons = vitpose_kernels.explain("window_attention", q, q, q, grid=(16, 16), num_global=17)
        assert (reasons["cuda"] == []) == (d % 8 == 0), (d, reasons["cuda"])
        assert reasons["triton"] == []
    model = TokenPose(tokenpose_config("T")).cuda().to(torch.bfloat16).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 256, 192, device="cuda", dtype=torch.bfloat16))
    assert torch.isfinite(out).all()


def test_table1_parameters_and_gflops(capsys):
    """Table 1 as the paper counts (HRNet's get_model_summary rule: see vitpose/models/complexity.py),
    within 3 %, printed beside all parameters (LayerNorms, keypoint tokens, sine embedding included).
    benchmarks/tokenpose_table1.py adds the true multiply-adds (torch.utils.flop_counter)."""
    lines = [f"{'variant':8} {'paper M':>8} {'rule M':>8} {'all M':>8} | {'paper GF':>8} {'rule GF':>8}"]
    for v, (p_m, p_gf) in TABLE1_PAPER.items():
        with torch.device("meta"):
            model = TokenPose(tokenpose_config(v))
        rule = paper_counts(model)
        every = (sum(p.numel() for p in model.parameters()) + model.tokens.pos_embedding.numel()) / 1e6
        lines.append(f"{v:8} {p_m:8.1f} {rule['params_m']:8.3f} {every:8.3f} | {p_gf:8.1f} {rule['gflops']:8.3f}")
        assert abs(rule["params_m"] / p_m - 1) < 0.03, (v, rule)
        assert abs(rule["gflops"] / p_gf - 1) < 0.03, (v, rule)
    with capsys.disabled():
        print("\nTokenPose Table 1 (256x192):\n" + "\n".join(lines))


def test_bad_input():
    model = TokenPose(tokenpose_config("T", **TINY["T"]))
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 48\).*pixel_values.shape=\(1, 3, 64, 64\)"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="normalized floats"):
        model(torch.zeros(1, 3, 64, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dataset_index"):
        model(torch.zeros(1, 3, 64, 48), 1)
    with pytest.raises(ValueError, match="patch_size=.*must divide"):
        tokenpose_config("T", img_size=(256, 200))
    with pytest.raises(ValueError, match="dim=190 is not a multiple of heads=16"):
        tokenpose_config("T", dim=190)
    with pytest.raises(ValueError, match="pos_embedding must be one of"):
        tokenpose_config("T", pos_embedding="none")
    with pytest.raises(ValueError, match="unknown TokenPose variant"):
        tokenpose_config("XL")
