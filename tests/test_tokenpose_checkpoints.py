"""TokenPose checkpoints through vitpose.load_model: official-format state dicts of every variant are
recognised and built (variant, heads, patch, input size, position embedding), arch= where the tensors
cannot tell, our format keeps the config, bad checkpoints are clear errors."""
import pytest
import torch

import vitpose
from vitpose.models.checkpoints import CheckpointError
from vitpose.models.tokenpose import ARCHITECTURES, TokenPose, tokenpose_config
from vitpose.models.tokenpose_checkpoints import infer_config


def official_state_dict(variant, **overrides):
    """Zeros under the official names and shapes (the sine embedding as the official code builds it)."""
    with torch.device("meta"):
        model = TokenPose(tokenpose_config(variant, **overrides))
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    pos = [k for k in sd if k.endswith("pos_embedding")][0]
    if model.config.pos_embedding != "learnable":
        from vitpose.models.tokenpose import sine_position_embedding
        sd[pos] = sine_position_embedding(model.config.grid, model.config.dim)
    return sd


def tiny(**kw):
    cfg = dict(img_size=(64, 48), patch_size=(8, 6), dim=48, heads=4, depth=2, hidden_heatmap_dim=96)
    cfg.update(kw)
    torch.manual_seed(0)
    return TokenPose(tokenpose_config("T", **cfg)).eval()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_official_state_dict_of_every_variant_is_recognised(name):
    """What load_model builds from the tensors alone (infer_config), and with arch= naming it."""
    variant = ARCHITECTURES[name]
    want = tokenpose_config(variant)
    sd = official_state_dict(variant)
    for c in (infer_config(sd), infer_config(sd, arch=name)):
        assert (c.name, c.heads, c.patch_size, c.img_size, c.pos_embedding, c.scale_with_head, c.two_layer_head,
                c.depth, c.stacks, c.hrnet_width if c.backbone == "hrnet" else None) == \
            (want.name, want.heads, want.patch_size, want.img_size, "sine-full", want.scale_with_head,
             want.two_layer_head, want.depth, want.stacks, want.hrnet_width if want.backbone == "hrnet" else None)


def test_official_hrnet_checkpoint_loads():
    model = vitpose.load_model(official_state_dict("B"))
    assert isinstance(model, TokenPose) and not model.training and model.config.name == "TokenPose-B"
    assert model.pre_feature.stage3[3].fuse_layers is not None and len(model.pre_feature.stage3[3].fuse_layers) == 1


def test_official_384x288_l_d24_and_wrapped_files(tmp_path):
    c = infer_config(official_state_dict("L/D24", img_size=(384, 288)))
    assert (c.img_size, c.patch_size, c.heads, c.depth, c.stacks, c.hidden_heatmap_dim) == \
        ((384, 288), (6, 4), 12, 8, 3, 384)
    model = tiny()
    path = tmp_path / "checkpoint.pth"  # the official training script's file: wrapped, DataParallel names
    torch.save({"epoch": 300, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = vitpose.load_model(str(path), heads=4, patch_size=(8, 6))
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_learnable_embedding_is_told_by_its_shape_and_sine_by_override():
    sd = official_state_dict("S-v1", pos_embedding="learnable")
    assert infer_config(sd).pos_embedding == "learnable"
    assert infer_config(official_state_dict("S-v1"), pos_embedding="sine").pos_embedding == "sine"


def test_arch_names_a_variant_the_tensors_cannot_tell():
    sd = official_state_dict("L/D24", depth=4)  # three transformers of 4 layers: not in Table 1
    with pytest.raises(CheckpointError, match=r"matches no Table 1 variant; pass arch="):
        vitpose.load_model(sd)
    c = infer_config(sd, arch="tokenpose-l-d24")
    assert (c.depth, c.heads, c.name) == (4, 12, "TokenPose-L/D24")
    with pytest.raises(CheckpointError, match=r"arch='tokenpose-b' is TokenPose-B .* this checkpoint has a none backbone"):
        vitpose.load_model(official_state_dict("T"), arch="tokenpose-b")
    with pytest.raises(CheckpointError, match=r"arch='vitpose-b', but state dict is not a ViTPose checkpoint"):
        vitpose.load_model(official_state_dict("T"), arch="vitpose-b")
    with pytest.raises(CheckpointError, match=r"arch='tokenpose-t', but state dict is not a TokenPose checkpoint"):
        vitpose.load_model({"conv1.weight": torch.zeros(64, 3, 7, 7)}, arch="tokenpose-t")
    with pytest.raises(ValueError, match="arch must be one of"):
        vitpose.load_model(official_state_dict("T"), arch="tokenpose-xl")


def test_missing_unknown_and_misshapen_keys_are_listed():
    sd = official_state_dict("T")
    del sd["transformer.transformer.layers.3.0.fn.fn.to_qkv.weight"]
    sd["transformer.transformer.layers.3.0.fn.fn.mystery.weight"] = torch.zeros(3)
    sd["transformer.mlp_head.3.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as e:
        vitpose.load_model(sd)
    msg = str(e.value)
    assert "does not match TokenPose-T" in msg
    assert "unknown keys (1): transformer.transformer.layers.3.0.fn.fn.mystery.weight" in msg
    assert "missing keys (1): transformer.transformer.layers.3.0.fn.fn.to_qkv.weight" in msg
    assert "transformer.mlp_head.3.bias: checkpoint (5,) vs model (3072,)" in msg
    bad = official_state_dict("T")
    del bad["transformer.mlp_head.3.weight"], bad["transformer.mlp_head.1.weight"]
    with pytest.raises(CheckpointError, match="no transformer.mlp_head.1.weight"):
        vitpose.load_model(bad)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_own_format_keeps_the_config(tmp_path, suffix):
    model = tiny(pos_embedding="sine", num_keypoints=14)
    path = tmp_path / f"tp{suffix}"
    vitpose.save_model(model, path)
    loaded = vitpose.load_model(str(path))
    assert loaded.config == model.config and loaded.config.pos_embedding == "sine"
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_state_dict_input_is_copied_and_build_model_names():
    model = tiny()
    loaded = vitpose.load_model(model.state_dict(), heads=4, patch_size=(8, 6))
    assert loaded.transformer.keypoint_token.data_ptr() != model.transformer.keypoint_token.data_ptr()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for name in ARCHITECTURES:
        assert name in vitpose.architectures()
