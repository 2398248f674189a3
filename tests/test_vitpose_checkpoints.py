"""Checkpoints: official (mmpose 0.x) and ViTPose+ files round-trip, HF format, our own format,
position-embedding resize, and errors that list what is wrong."""
import json
import pickle

import pytest
import torch

import vitpose
from vitpose.models.checkpoints import CheckpointError, hf_state_dict

# ViT-S width (its head count is the standard one, so nothing has to be told), shallow and small.
SMALL = dict(depth=2, img_size=(64, 48))
X = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))


def randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


def same_outputs(a, b, **kw):
    with torch.no_grad():
        return torch.allclose(a(X, **kw), b(X, **kw), rtol=1e-5, atol=1e-7)


def official_file(model, path):
    """What the official release looks like: {meta, state_dict}, a stray cls_token included."""
    sd = dict(model.state_dict())
    sd["backbone.cls_token"] = torch.zeros(1, 1, model.config.embed_dim)
    torch.save({"meta": {"epoch": 210, "mmpose_version": "0.24.0"}, "state_dict": sd}, path)


def official_keys(depth, experts=0, associate=(), simple=False):
    """The key names of the official mmpose 0.x ViTPose / ViTPose+ files, written out by hand."""
    keys = ["backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias", "backbone.pos_embed",
            "backbone.last_norm.weight", "backbone.last_norm.bias"]
    for n in range(depth):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2",
                      *(f"mlp.experts.{k}" for k in range(experts))):
            keys += [f"backbone.blocks.{n}.{layer}.weight", f"backbone.blocks.{n}.{layer}.bias"]
    for head in ["keypoint_head", *(f"associate_keypoint_heads.{i}" for i in range(len(associate)))]:
        keys += [f"{head}.final_layer.weight", f"{head}.final_layer.bias"]
        if not simple:
            keys += [f"{head}.deconv_layers.{i}.weight" for i in (0, 3)]
            keys += [f"{head}.deconv_layers.{i}.{b}" for i in (1, 4) for b in
                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    return set(keys)


def test_state_dict_names_are_the_official_ones():
    model = vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL))
    assert set(model.state_dict()) == official_keys(2)
    assert set(vitpose.ViTPose(vitpose.vitpose_config("S", head="simple", **SMALL)).state_dict()) == \
        official_keys(2, simple=True)
    plus = vitpose.ViTPose(vitpose.vitpose_config("S", plus=True, **SMALL))
    assert set(plus.state_dict()) == official_keys(2, experts=6, associate=range(5))
    sd = plus.state_dict()
    assert sd["backbone.blocks.0.mlp.experts.5.weight"].shape == (96, 4 * 384)
    assert sd["backbone.blocks.0.mlp.fc2.weight"].shape == (384 - 96, 4 * 384)
    assert [sd[f"associate_keypoint_heads.{i}.final_layer.weight"].shape[0] for i in range(5)] == \
        [14, 16, 17, 17, 133]


@pytest.mark.parametrize("size,plus", [("S", False), ("B", False), ("L", False), ("H", False), ("H", True)])
def test_config_inferred_from_official_shapes(size, plus):
    """The four sizes at 256x192 (shapes only: the model is built on the meta device)."""
    from vitpose.models.checkpoints import infer_config
    with torch.device("meta"):
        sd = vitpose.ViTPose(vitpose.vitpose_config(size, plus=plus)).state_dict()
    cfg, grid = infer_config(sd)
    want = vitpose.SIZES[size]
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.drop_path_rate) == \
        (want["embed_dim"], want["depth"], want["num_heads"], want["drop_path_rate"])
    assert (grid, cfg.img_size, cfg.patch_padding, cfg.head) == ((16, 12), (256, 192), 2, "classic")
    assert cfg.experts == (6 if plus else 1) and cfg.name == f"ViTPose{'+' if plus else ''}-{size}"
    if plus:
        assert cfg.part_features == want["embed_dim"] // 4 and len(cfg.datasets) == 6


def test_table5_stride8_and_knowledge_token_inferred():
    from vitpose.models.checkpoints import infer_config
    from vitpose.models.configs import TABLE5
    with torch.device("meta"):
        sd = vitpose.ViTPose(TABLE5["full"].replace(num_knowledge_tokens=1)).state_dict()
    cfg, grid = infer_config(sd)
    assert (cfg.patch_stride, cfg.patch_padding, grid, cfg.img_size, cfg.heatmap_size) == \
        (8, 4, (32, 24), (256, 192), (64, 48))
    assert cfg.num_knowledge_tokens == 1
    model = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL, num_knowledge_tokens=1)))
    assert same_outputs(model, vitpose.load_model(model.state_dict()))


def test_loading_a_state_dict_copies_it():
    source = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL)))
    sd = source.state_dict()
    loaded = vitpose.load_model(sd)
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    assert sd["backbone.pos_embed"].abs().sum() > 0
    assert source.backbone.blocks[0].attn.qkv.weight.abs().sum() > 0


@pytest.mark.parametrize("head", ["classic", "simple"])
def test_official_checkpoint_round_trip(tmp_path, head):
    model = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", head=head, **SMALL)))
    official_file(model, tmp_path / "vitpose_small.pth")
    loaded = vitpose.load_model(tmp_path / "vitpose_small.pth")
    c = loaded.config
    assert (c.embed_dim, c.depth, c.num_heads, c.head, c.num_keypoints, c.img_size) == \
        (384, 2, 12, head, 17, (64, 48))
    assert not loaded.training and same_outputs(model, loaded)


def test_vitpose_plus_checkpoint_round_trip(tmp_path):
    model = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", plus=True, depth=1, img_size=(64, 48))))
    official_file(model, tmp_path / "vitpose+_small.pth")
    loaded = vitpose.load_model(tmp_path / "vitpose+_small.pth")
    assert loaded.config.experts == 6 and loaded.config.part_features == 96
    assert loaded.config.datasets == model.config.datasets
    for d in (0, 1, 5):
        assert same_outputs(model, loaded, dataset_index=d)


def test_hf_format_file(tmp_path):
    from safetensors.torch import save_file
    model = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL)))
    save_file({k: v.contiguous() for k, v in hf_state_dict(model).items()}, tmp_path / "model.safetensors")
    loaded = vitpose.load_model(tmp_path / "model.safetensors")
    assert same_outputs(model, loaded)
    # a snapshot folder whose config.json says 6 heads (not the 12 of ViT-S's width)
    (tmp_path / "config.json").write_text(json.dumps({"backbone_config": {"num_attention_heads": 6}}))
    assert vitpose.load_model(tmp_path).config.num_heads == 6


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_own_format_keeps_the_config(tmp_path, suffix):
    cfg = vitpose.vitpose_config("S", **SMALL, window=(2, 3), shift=True, pool=True, rel_pos=True,
                                 full_every=2, num_knowledge_tokens=1, head="simple")
    model = randomized(vitpose.ViTPose(cfg))
    vitpose.save_model(model, tmp_path / f"m{suffix}")
    loaded = vitpose.load_model(tmp_path / f"m{suffix}")
    assert loaded.config == cfg and same_outputs(model, loaded)


def test_state_dict_input_and_position_embedding_resize():
    model = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL)))
    bigger = vitpose.load_model(model.state_dict(), img_size=(128, 96))
    assert bigger.backbone.pos_embed.shape == (1, 1 + 8 * 6, 384)
    pos = model.backbone.pos_embed.detach()
    grid = torch.nn.functional.interpolate(pos[:, 1:].reshape(1, 4, 3, 384).permute(0, 3, 1, 2), size=(8, 6),
                                           mode="bicubic", align_corners=False)
    want = torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    assert torch.allclose(bigger.backbone.pos_embed, want, atol=1e-6)
    with torch.no_grad():
        assert bigger(torch.randn(1, 3, 128, 96)).shape == (1, 17, 32, 24)


def test_missing_and_unknown_keys_are_listed():
    sd = dict(randomized(vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL))).state_dict())
    del sd["backbone.blocks.1.attn.proj.weight"]
    sd["backbone.blocks.0.attn.mystery.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as e:
        vitpose.load_model(sd)
    msg = str(e.value)
    assert "missing keys (1): backbone.blocks.1.attn.proj.weight" in msg
    assert "unknown keys (1): backbone.blocks.0.attn.mystery.weight" in msg


def test_hf_format_errors_name_the_hf_keys():
    sd = hf_state_dict(vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL)))
    sd["backbone.encoder.layer.0.attention.attention.mystery.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unknown keys \(1\): backbone.encoder.layer.0.attention.attention.myst"):
        vitpose.load_model(sd)
    del sd["backbone.encoder.layer.0.attention.attention.mystery.weight"]
    del sd["backbone.encoder.layer.1.attention.attention.key.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys backbone.encoder.layer.1.attention.attention.key.b"):
        vitpose.load_model(sd)


def test_checkpoint_of_another_model():
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}
    with pytest.raises(CheckpointError, match="not a ViTPose checkpoint.*conv1.weight"):
        vitpose.load_model(resnet)


def test_wrong_number_of_keypoints():
    sd = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL))).state_dict()
    with pytest.raises(CheckpointError, match=r"keypoint_head.final_layer.weight: checkpoint \(17,"):
        vitpose.load_model(sd, num_keypoints=16)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        vitpose.load_model(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        vitpose.load_model(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        vitpose.load_model(tmp_path / "junk.safetensors")
    # Pickled objects beyond tensors are refused (weights_only) with a way out.
    with open(tmp_path / "pickled.pth", "wb") as f:
        pickle.dump({"state_dict": {}, "meta": Unsafe()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="re-save only its weights"):
        vitpose.load_model(tmp_path / "pickled.pth")


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint", b'{"a": 1}', "truncated zip"])
def test_damaged_files_are_called_damaged_not_unsafe(tmp_path, content):
    """A corrupt, truncated or foreign file is reported as such, without the advice to load it with
    weights_only=False (which cannot help and would run whatever it contains)."""
    if content == "truncated zip":
        torch.save({"a": torch.ones(100)}, tmp_path / "whole.pth")
        content = (tmp_path / "whole.pth").read_bytes()[:200]
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        vitpose.load_model(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "bad.pth" in msg and ("not a PyTorch checkpoint" in msg or "damaged" in msg)
    assert "weights_only=False" not in msg and "re-save" not in msg


def test_head_count_of_a_non_standard_width_is_never_silent(tmp_path):
    """A bare checkpoint does not store the head count: for a width that is not a standard size,
    load_model takes config.json when it is there, else warns naming num_heads= (a wrong head
    count gives wrong heatmaps with no other error)."""
    from safetensors.torch import save_file
    model = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=64, num_heads=4, **SMALL)))
    with torch.no_grad():  # attention far from uniform, so that the head count shows in the output
        for name, t in model.named_parameters():
            if name.endswith("attn.qkv.weight"):
                t.mul_(40)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    with pytest.warns(UserWarning, match=r"embed_dim=64 .* num_heads=1\. .*pass num_heads="):
        guessed = vitpose.load_model(tmp_path / "w.safetensors")
    assert guessed.config.num_heads == 1 and not same_outputs(model, guessed)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        told = vitpose.load_model(tmp_path / "w.safetensors", num_heads=4)
        assert told.config.num_heads == 4 and same_outputs(model, told)
        (tmp_path / "config.json").write_text(json.dumps({"backbone_config": {"num_attention_heads": 4}}))
        assert vitpose.load_model(tmp_path / "w.safetensors").config.num_heads == 4
        standard = randomized(vitpose.ViTPose(vitpose.vitpose_config("S", **SMALL)))
        assert vitpose.load_model(standard.state_dict()).config.num_heads == 12  # the standard S


class Unsafe:
    pass
