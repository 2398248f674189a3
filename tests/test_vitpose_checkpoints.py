"""Checkpoints: official (mmpose 0.x) and ViTPose+ files round-trip, HF format, our own format,
position-embedding resize, and errors that list what is wrong."""
import json
import pickle

import pytest
import torch

import vitpose
from vitpose.checkpoints import CheckpointError, hf_state_dict

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


class Unsafe:
    pass
