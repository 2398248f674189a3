"""ViTPose model: parity with Hugging Face transformers, the Table 5 attention variants, ViTPose+
experts and heads, knowledge token, BatchNorm folding, freezing, bad input."""
import copy

import pytest
import torch

import vitpose
import vitpose_kernels
from vitpose.models.configs import TABLE5
from vitpose.data.keypoints import DATASETS, VITPOSE_PLUS_DATASETS
from vitpose.models.knowledge import (attach_knowledge_token, knowledge_token, load_knowledge_token,
                               prepare_token_training, save_knowledge_token)

TINY = dict(embed_dim=64, depth=2, num_heads=4, img_size=(64, 48))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def randomize_bn(model, seed=0):
    """Running statistics and the affine weight and bias of every BatchNorm (so that folding them
    has something to get wrong)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def tiny(**kw):
    return vitpose.ViTPose(vitpose.vitpose_config("S", **{**TINY, **kw})).eval()


# ---- Hugging Face transformers parity ----------------------------------------------------------
def hf_model(embed_dim, depth, heads, img_size, simple, seed, **backbone):
    """HF VitPoseForPoseEstimation with random weights (filled directly: HF's init is slow on CPU)."""
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    bc = transformers.VitPoseBackboneConfig(
        hidden_size=embed_dim, num_hidden_layers=depth, num_attention_heads=heads, image_size=list(img_size),
        patch_size=[16, 16], layer_norm_eps=1e-6, out_indices=[depth], **backbone)
    cfg = transformers.VitPoseConfig(backbone_config=bc, use_simple_decoder=simple, num_labels=17)
    cfg._attn_implementation = "eager"
    with no_init_weights():
        model = transformers.VitPoseForPoseEstimation(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = "norm" in name and name.endswith("weight")
            p.copy_((1.0 if norm else 0.0) + torch.randn(p.shape, generator=g) * (0.1 if norm else 0.02))
    randomize_bn(model, seed)
    return model


@pytest.mark.parametrize("simple", [False, True], ids=["classic", "simple"])
@pytest.mark.parametrize("size", ["tiny", "B"])
def test_hf_parity(size, simple):
    if size == "tiny":
        args, batch, heads = (64, 2, 4, (64, 48)), 2, {"num_heads": 4}
    else:
        args, batch, heads = (768, 12, 12, (256, 192)), 1, {}
    hf = hf_model(*args, simple=simple, seed=1)
    ours = vitpose.load_model(hf.state_dict(), **heads)
    assert ours.config.head == ("simple" if simple else "classic")
    x = torch.randn(batch, 3, *args[3], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(x).heatmaps
        got = ours(x)
    assert got.shape == expected.shape == (batch, 17, args[3][0] // 4, args[3][1] // 4)
    assert rel_err(got, expected) < 1e-5


def test_hf_parity_vitpose_plus_experts():
    hf = hf_model(64, 2, 4, (64, 48), simple=False, seed=3, num_experts=6, part_features=16)
    ours = vitpose.load_model(hf.state_dict(), num_heads=4)
    assert ours.config.experts == 6 and ours.config.part_features == 16
    x = torch.randn(3, 3, 64, 48, generator=torch.Generator().manual_seed(4))
    index = torch.tensor([0, 4, 1])
    with torch.no_grad():
        assert rel_err(ours(x, dataset_index=index), hf(x, dataset_index=index).heatmaps) < 1e-5


# ---- configs -------------------------------------------------------------------------------------
def test_sizes():
    for size, (c, d, h) in {"S": (384, 12, 12), "B": (768, 12, 12), "L": (1024, 24, 16),
                            "H": (1280, 32, 16)}.items():
        cfg = vitpose.vitpose_config(size)
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.grid) == (c, d, h, (16, 12))
        assert cfg.heatmap_size == (64, 48) and cfg.patch_padding == 2
    assert vitpose.vitpose_config("H").head_dim == 80
    assert vitpose.vitpose_config("B").drop_path_rate == 0.3
    with pytest.raises(ValueError, match="size"):
        vitpose.vitpose_config("XL")
    with pytest.raises(ValueError, match="num_heads"):
        vitpose.ViTPoseConfig(embed_dim=100, num_heads=12)
    with pytest.raises(ValueError, match="window"):
        vitpose.ViTPoseConfig(shift=True)
    with pytest.raises(ValueError, match="head"):
        vitpose.ViTPoseConfig(head="fancy")


@pytest.mark.parametrize("size,rate", [("S", 0.1), ("B", 0.3), ("L", 0.5), ("H", 0.55)])
def test_drop_path_rates_grow_linearly_with_depth(size, rate):
    cfg = vitpose.vitpose_config(size, embed_dim=32, num_heads=2, img_size=(32, 32))  # depth kept
    model = vitpose.ViTPose(cfg)
    got = [0.0 if isinstance(b.drop_path, torch.nn.Identity) else b.drop_path.p for b in model.backbone.blocks]
    assert got == pytest.approx(torch.linspace(0, rate, cfg.depth).tolist())
    # per sample: a dropped sample loses the branch, a kept one is scaled by 1 / (1 - p)
    last = model.backbone.blocks[-1].drop_path.train()
    out = last(torch.ones(4000, 3))
    kept = out[:, 0] > 0
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - rate)))
    assert (out[~kept] == 0).all() and abs((~kept).float().mean().item() - rate) < 0.05
    assert torch.equal(last.eval()(torch.ones(4, 3)), torch.ones(4, 3))


def test_qkv_reaches_window_attention_packed_as_the_linear_output(monkeypatch):
    """The qkv Linear's output goes to the packed entry as one (B, N, 3, H, D) view, so that the
    kernels read q, k, v in place and write one packed gradient."""
    seen = []
    inner = vitpose_kernels.window_attention_qkvpacked

    def spy(qkv, **kw):
        seen.append((qkv._base is not None, qkv.is_contiguous(), tuple(qkv.shape)))
        return inner(qkv, **kw)

    monkeypatch.setattr(vitpose_kernels, "window_attention_qkvpacked", spy)
    model = tiny(window=(2, 3))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 48))
    assert seen == [(True, True, (2, 12, 3, 4, 16))] * 2


def test_position_embedding_is_resized_bicubically():
    """At another input size the grid part of pos_embed is resized bicubically (the class slot,
    added to every token, kept): the same as a model built for that size with the resized table."""
    torch.manual_seed(0)
    model = tiny()
    pos = model.backbone.pos_embed.detach()
    grid = pos[:, 1:].reshape(1, 4, 3, 64).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid, size=(6, 4), mode="bicubic", align_corners=False)
    table = torch.cat([pos[:, :1], resized.permute(0, 2, 3, 1).reshape(1, 24, 64)], dim=1)
    built = vitpose.ViTPose(model.config.replace(img_size=(96, 64))).eval()
    sd = dict(model.state_dict(), **{"backbone.pos_embed": table})
    built.load_state_dict(sd)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        assert rel_err(model(x), built(x)) < 1e-6
        sd["backbone.pos_embed"] = table[:, [0, *range(24, 0, -1)]]  # a wrong table is noticed
        built.load_state_dict(sd)
        assert rel_err(model(x), built(x)) > 1e-4


def test_table5_rows_build_and_keep_64x48_heatmaps():
    assert len(TABLE5) == 7
    x = torch.randn(1, 3, 256, 192)
    for name, cfg in TABLE5.items():
        assert (cfg.embed_dim, cfg.patch_stride, cfg.grid, cfg.patch_padding) == (768, 8, (32, 24), 4)
        small = cfg.replace(embed_dim=32, depth=4, num_heads=2)
        model = vitpose.ViTPose(small).eval()
        assert len(model.keypoint_head.deconv_layers) == 3  # one deconv block at 1/8 features
        with torch.no_grad():
            assert model(x).shape == (1, 17, 64, 48), name
    plan = [TABLE5["window+shift+pool"].layer_attention(i) for i in range(4)]
    assert [p["shift"] for p in plan] == [(0, 0), (4, 4), (0, 0), (4, 4)] and all(p["pool"] for p in plan)
    full = [TABLE5["full+window"].layer_attention(i)["window"] is None for i in range(12)]
    assert [i for i, f in enumerate(full) if f] == [2, 5, 8, 11]


def test_stride8_simple_head_upsamples_by_2():
    model = tiny(patch_stride=8, head="simple")
    assert model.keypoint_head.upsample == 2 and model.config.grid == (8, 6)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)


def test_window_covering_the_grid_is_full_attention():
    torch.manual_seed(0)
    full = tiny()
    windowed = vitpose.ViTPose(full.config.replace(window=(4, 3))).eval()
    windowed.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert rel_err(windowed(x), full(x)) < 1e-5


def test_window_shift_pool_change_the_output():
    torch.manual_seed(0)
    base = tiny(img_size=(128, 96), window=(2, 2))
    x = torch.randn(1, 3, 128, 96)
    outs = {}
    for name, kw in {"window": {}, "shift": dict(shift=True), "pool": dict(pool=True)}.items():
        m = vitpose.ViTPose(base.config.replace(**kw)).eval()
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            outs[name] = m(x)
    assert rel_err(outs["shift"], outs["window"]) > 1e-4
    assert rel_err(outs["pool"], outs["window"]) > 1e-4


def test_rel_pos_in_window_layers_only():
    cfg = vitpose.vitpose_config("S", **TINY, window=(2, 3), rel_pos=True, full_every=2)
    model = vitpose.ViTPose(cfg).eval()
    b0, b1 = model.backbone.blocks[0].attn, model.backbone.blocks[1].attn
    assert b0.rel_pos_h.shape == (3, 16) and b0.rel_pos_w.shape == (5, 16)
    assert b1.rel_pos_h is None and b1.window is None
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        before = model(x)
        b0.rel_pos_h.normal_()
        assert rel_err(model(x), before) > 1e-6
    model.train()
    model(x).sum().backward()
    assert b0.rel_pos_h.grad is not None and b0.rel_pos_h.grad.abs().sum() > 0


# ---- ViTPose+ -------------------------------------------------------------------------------------
def plus_model():
    torch.manual_seed(0)
    model = vitpose.ViTPose(vitpose.vitpose_config("S", plus=True, **TINY)).eval()
    randomize_bn(model)
    return model


def test_vitpose_plus_heads_and_experts():
    model = plus_model()
    assert model.config.datasets == VITPOSE_PLUS_DATASETS and model.config.part_features == 16
    assert [h.final_layer.out_channels for h in model.heads] == [17, 14, 16, 17, 17, 133]
    fc2, expert = model.backbone.blocks[0].mlp.fc2, model.backbone.blocks[0].mlp.experts[0]
    assert (fc2.out_features, expert.in_features, expert.out_features) == (48, 256, 16)
    x = torch.randn(3, 3, 64, 48)
    with torch.no_grad():
        mixed = model(x, dataset_index=torch.tensor([0, 5, 2]))
        assert mixed.shape == (3, 133, 16, 12)
        for n, d in enumerate([0, 5, 2]):
            alone = model(x[n:n + 1], dataset_index=d)
            k = alone.shape[1]
            assert torch.allclose(mixed[n, :k], alone[0], rtol=1e-4, atol=1e-6)
            assert (mixed[n, k:] == 0).all()
        assert torch.equal(model(x), model(x, dataset_index=0))  # omitted means COCO, no error
    with pytest.raises(ValueError, match="dataset_index"):
        model(x, dataset_index=6)
    with pytest.raises(ValueError, match="one entry per sample"):
        model(x, dataset_index=torch.tensor([0, 1]))


# ---- knowledge token (Eq. 5-6) --------------------------------------------------------------------
def test_knowledge_token_train_attach_freeze(tmp_path):
    torch.manual_seed(0)
    teacher = tiny(window=(2, 3))
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        plain = teacher(x)
    params = prepare_token_training(teacher)
    assert [p.shape for p in params] == [(1, 1, 64)]
    assert [n for n, p in teacher.named_parameters() if p.requires_grad] == ["backbone.knowledge_token"]
    teacher.backbone.knowledge_token.data.normal_()
    out = teacher(x)
    assert rel_err(out.detach(), plain) > 1e-6
    out.sum().backward()
    assert teacher.backbone.knowledge_token.grad.abs().sum() > 0
    # A global token: with 2x3 windows and no shift, only it carries information across windows,
    # so changing it moves the features of every window of the 4x3 grid.
    with torch.no_grad():
        a = teacher.backbone(x)
        teacher.backbone.knowledge_token.normal_(generator=torch.Generator().manual_seed(1))
        b = teacher.backbone(x)
    assert ((a - b).abs().amax(dim=(0, 1)) > 1e-6).all()
    vitpose.freeze_knowledge_token(teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="no knowledge token"):
        vitpose.freeze_knowledge_token(tiny())

    save_knowledge_token(teacher, tmp_path / "t.safetensors")
    assert torch.equal(load_knowledge_token(tmp_path / "t.safetensors"), knowledge_token(teacher))
    student = tiny(depth=1)
    token = attach_knowledge_token(student, tmp_path / "t.safetensors")
    assert not token.requires_grad and student.config.num_knowledge_tokens == 1
    assert "backbone.knowledge_token" in student.state_dict()
    wide = vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=96, depth=1, num_heads=4, img_size=(64, 48)))
    with pytest.raises(ValueError, match="projection"):
        attach_knowledge_token(wide, teacher)
    attach_knowledge_token(wide, teacher, projection=torch.nn.Linear(64, 96))
    assert wide.backbone.knowledge_token.shape == (1, 1, 96)


# ---- inference helpers -----------------------------------------------------------------------------
def test_fold_batchnorm_keeps_outputs():
    torch.manual_seed(0)
    model = plus_model()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        folded = copy.deepcopy(model).fold_batchnorm()
        for d in (0, 1, 5):
            assert rel_err(folded(x, dataset_index=d), model(x, dataset_index=d)) < 1e-5
    assert folded.folded and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(folded.keypoint_head.deconv_layers[1], torch.nn.Identity)
    # A bf16 model folds in fp32: its folded weights are rounded once, not twice.
    half = copy.deepcopy(model).to(torch.bfloat16)
    deconv, bn = half.keypoint_head.deconv_layers[3], half.keypoint_head.deconv_layers[4]
    gain = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    want = (deconv.weight.float() * gain.view(1, -1, 1, 1)).bfloat16()
    half.fold_batchnorm()
    assert torch.equal(half.keypoint_head.deconv_layers[3].weight, want)
    with pytest.raises(ValueError, match="folded"):
        vitpose.save_model(folded, "never.safetensors")


def test_freeze_by_name():
    model = tiny()
    frozen = vitpose.freeze(model, "mhsa")
    assert frozen and all(".attn." in n or ".norm1." in n for n in frozen)
    assert model.backbone.blocks[0].mlp.fc1.weight.requires_grad
    frozen = vitpose.freeze(tiny(), "ffn")
    assert "backbone.pos_embed" in frozen and "backbone.blocks.1.mlp.fc2.weight" in frozen


def test_flip_indices_are_involutions():
    assert vitpose.COCO_FLIP_INDICES == (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    for ks in DATASETS.values():
        if ks.flip_indices:
            f = ks.flip_indices
            assert sorted(f) == list(range(ks.num_keypoints)) and all(f[f[i]] == i for i in f)
    with pytest.raises(ValueError, match="permutation"):
        vitpose.register_dataset("bad", 3, flip_indices=[0, 0, 1])


def test_other_input_sizes_resize_the_position_embedding():
    model = tiny()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 64)).shape == (1, 17, 24, 16)


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="3, H, W"):
        model(torch.randn(1, 4, 64, 48))
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 60, 48))
    with pytest.raises(TypeError, match="dtype"):
        model(torch.zeros(1, 3, 64, 48, dtype=torch.uint8))
    with pytest.raises(TypeError, match="dataset_index"):
        model(torch.randn(1, 3, 64, 48), dataset_index=0.5)


def test_torch_compile_fullgraph():
    # A fresh process would probe vitpose_kernels on its first call; building the model does it.
    model = tiny(plus=True, head="simple", window=(2, 3), shift=True, pool=True, num_knowledge_tokens=1)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(compiled(x, 3), model(x, 3))
