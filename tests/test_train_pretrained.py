"""Initialisation from the real file formats, on tensors shaped like the real files: the official MAE
ViT-B release (encoder-only and with its decoder) and an official ViTPose-B checkpoint, fine-tuned
with a new head when the keypoint count differs."""
import pytest
import torch
import torch.nn.functional as F

import vitpose
from vitpose.models.checkpoints import CheckpointError
from vitpose.models.pretrained import format_report, load_pretrained

C, DEPTH = 768, 12


def mae_vit_base(with_decoder=False) -> dict:
    """The key names and shapes of facebookresearch/mae's mae_pretrain_vit_base.pth ('model' dict);
    with_decoder: those of mae_visualize_vit_base.pth (mask token, decoder). Each tensor holds its
    own constant (cheap, and shows which went where); pos_embed and fc2 vary, to check the resize
    and the expert split."""
    sd, n = {}, [0]

    def t(*shape):
        n[0] += 1
        return torch.full(shape, float(n[0]))
    sd.update({"cls_token": t(1, 1, C), "pos_embed": torch.randn(1, 197, C, generator=torch.Generator().manual_seed(0)),
               "patch_embed.proj.weight": t(C, 3, 16, 16), "patch_embed.proj.bias": t(C)})
    for i in range(DEPTH):
        b = f"blocks.{i}."
        for name, shape in (("norm1.weight", (C,)), ("norm1.bias", (C,)), ("attn.qkv.weight", (3 * C, C)),
                            ("attn.qkv.bias", (3 * C,)), ("attn.proj.weight", (C, C)), ("attn.proj.bias", (C,)),
                            ("norm2.weight", (C,)), ("norm2.bias", (C,)), ("mlp.fc1.weight", (4 * C, C)),
                            ("mlp.fc1.bias", (4 * C,)), ("mlp.fc2.bias", (C,))):
            sd[b + name] = t(*shape)
        sd[b + "mlp.fc2.weight"] = torch.arange(C, dtype=torch.float32)[:, None].expand(C, 4 * C) + 1000 * i
    sd["norm.weight"], sd["norm.bias"] = t(C), t(C)
    if with_decoder:
        sd.update({"mask_token": t(1, 1, 512), "decoder_embed.weight": t(512, C), "decoder_embed.bias": t(512),
                   "decoder_pos_embed": t(1, 197, 512), "decoder_blocks.0.norm1.weight": t(512),
                   "decoder_norm.weight": t(512), "decoder_pred.weight": t(768, 512), "decoder_pred.bias": t(768)})
    return {"model": sd}


def uninitialised(name, **kw):
    """The model's real tensors, allocated but not initialised (initialising ViT-B costs seconds)."""
    with torch.device("meta"):
        model = vitpose.build_model(name, **kw)
    return model.to_empty(device="cpu")


def test_mae_checkpoint_into_vitpose_b():
    ckpt = mae_vit_base(with_decoder=True)
    model = uninitialised("vitpose-b")
    head_before = model.keypoint_head.final_layer.weight.clone()
    report = load_pretrained(model, ckpt)
    sd, mae = model.state_dict(), ckpt["model"]
    for k in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "blocks.5.norm1.weight"):
        assert torch.equal(sd["backbone." + k], mae[k]), k
    # 14x14 grid -> 16x12 (256x192 / 16), bicubic, the class-token slot kept
    grid = mae["pos_embed"][:, 1:].reshape(1, 14, 14, C).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(16, 12), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, C)
    assert torch.allclose(sd["backbone.pos_embed"][:, 1:], want, atol=1e-5)
    assert torch.equal(sd["backbone.pos_embed"][:, :1], mae["pos_embed"][:, :1])
    assert report["format"] == "mae" and report["resized"] == ["backbone.pos_embed: 14x14 -> 16x12"]
    unused = set(report["unused"])
    assert {"backbone.cls_token", "backbone.norm.weight", "backbone.norm.bias", "backbone.mask_token",
            "backbone.decoder_pred.weight"} <= unused
    assert "backbone.last_norm.weight" in report["missing"] and "keypoint_head.final_layer.weight" in report["missing"]
    assert torch.equal(model.keypoint_head.final_layer.weight, head_before)  # the decoder keeps its init
    assert report["loaded"] == 2 + 1 + 12 * 12  # patch embed, pos embed, 12 tensors per block
    assert "unused" in format_report(report)


def test_mae_checkpoint_into_vitpose_plus_b_splits_fc2_into_experts():
    ckpt = mae_vit_base()
    model = uninitialised("vitpose-b", plus=True)  # 6 experts of 192 channels
    report = load_pretrained(model, ckpt)
    fc2 = ckpt["model"]["blocks.3.mlp.fc2.weight"]
    block = model.backbone.blocks[3].mlp
    assert torch.equal(block.fc2.weight, fc2[:-192]) and all(torch.equal(e.weight, fc2[-192:]) for e in block.experts)
    assert torch.equal(block.experts[5].bias, ckpt["model"]["blocks.3.mlp.fc2.bias"][-192:])
    assert "backbone.blocks.3.mlp.fc2: last 192 rows -> 6 experts" in report["resized"]
    # the five non-COCO decoders are new as well: nothing of a head comes from MAE
    assert "associate_keypoint_heads.0.final_layer.weight" in report["missing"]


def official_vitpose_b() -> dict:
    """Key names and shapes of the official ViTPose-B release (mmpose 0.x 'state_dict'), each tensor
    its own constant."""
    model = uninitialised("vitpose-b")
    sd = {k: (torch.full(v.shape, float(i)) if v.is_floating_point() else torch.zeros_like(v))
          for i, (k, v) in enumerate(model.state_dict().items())}
    assert sd["backbone.pos_embed"].shape == (1, 193, C)
    sd["backbone.pos_embed"] = torch.randn(1, 193, C)
    sd["backbone.cls_token"] = torch.zeros(1, 1, C)  # some official files carry it
    return {"meta": {}, "state_dict": sd}


def test_official_vitpose_checkpoint_fine_tunes_with_a_new_head():
    ckpt = official_vitpose_b()
    sd = ckpt["state_dict"]
    same = uninitialised("vitpose-b")
    rep = load_pretrained(same, ckpt)  # the whole file's dict: {"meta", "state_dict"}
    assert rep["format"] == "vitpose" and rep["new_heads"] == [] and rep["missing"] == []
    assert all(torch.equal(v, sd[k]) for k, v in same.state_dict().items())
    assert rep["unused"] == ["backbone.cls_token"]

    aic = uninitialised("vitpose-b", datasets=("aic",))  # 14 keypoints: a new head
    fresh = aic.keypoint_head.final_layer.weight.clone()
    deconv = aic.keypoint_head.deconv_layers[0].weight.clone()
    rep = load_pretrained(aic, sd)
    assert rep["new_heads"] == ["keypoint_head"]
    assert torch.equal(aic.keypoint_head.final_layer.weight, fresh)
    # the whole head is new, deconvolutions included; the backbone is the checkpoint's
    assert torch.equal(aic.keypoint_head.deconv_layers[0].weight, deconv)
    assert torch.equal(aic.backbone.blocks[7].attn.proj.weight, sd["backbone.blocks.7.attn.proj.weight"])
    assert "keypoint_head.final_layer.weight" in rep["missing"]

    big = uninitialised("vitpose-b", img_size=(384, 288))  # position embedding resized 16x12 -> 24x18
    rep = load_pretrained(big, sd)
    assert rep["resized"] == ["backbone.pos_embed: 16x12 -> 24x18"]

    small = uninitialised("vitpose-s")
    with pytest.raises(CheckpointError, match=r"backbone\.pos_embed is \(1, 193, 768\), the model's \(1, 193, 384\)"):
        load_pretrained(small, sd)
