"""The recipe: layer-wise lr decay groups against a hand-written table (what mmcv_custom's
LayerDecayOptimizerConstructor of the official ViTPose gives for a 2-layer ViT), the warmup + step
schedule against mmcv's formulas, and the per-size numbers against the model sizes."""
import pytest
import torch

import vitpose
from vitpose.models.configs import SIZES
from vitpose.train.optim import Schedule, build_optimizer, layer_decay_param_groups
from vitpose.train.recipe import VITPOSE_PLUS_TABLE, VITPOSE_TABLE, Recipe, vitpose_recipe


def two_layer(**kw):
    return vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=2, num_heads=2, img_size=(64, 48),
                                                  deconv_channels=16, **kw))


def block(i):
    b = f"backbone.blocks.{i}."
    no = [b + n for n in ("norm1.weight", "norm1.bias", "attn.qkv.bias", "attn.proj.bias", "norm2.weight",
                          "norm2.bias", "mlp.fc1.bias", "mlp.fc2.bias")]
    yes = [b + n for n in ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")]
    return no, yes


# The table by hand: LayerDecayOptimizerConstructor with num_layers=2 (so 4 "layers"), rate 0.75,
# lr 5e-4, weight decay 0.1. layer 0: embeddings (scale 0.75^3); 1, 2: the blocks (0.75^2, 0.75);
# 3: last norm and decoder (1). No decay: 1-D tensors, biases, pos_embed. In first-seen order.
LR, WD = 5e-4, 0.1
HAND = [
    ("layer_0_no_decay", 0.421875, 0.0, ["backbone.pos_embed", "backbone.patch_embed.proj.bias"]),
    ("layer_0_decay", 0.421875, 0.1, ["backbone.patch_embed.proj.weight"]),
    ("layer_1_no_decay", 0.5625, 0.0, block(0)[0]),
    ("layer_1_decay", 0.5625, 0.1, block(0)[1]),
    ("layer_2_no_decay", 0.75, 0.0, block(1)[0]),
    ("layer_2_decay", 0.75, 0.1, block(1)[1]),
    ("layer_3_no_decay", 1.0, 0.0, ["backbone.last_norm.weight", "backbone.last_norm.bias",
                                     "keypoint_head.deconv_layers.1.weight", "keypoint_head.deconv_layers.1.bias",
                                     "keypoint_head.deconv_layers.4.weight", "keypoint_head.deconv_layers.4.bias",
                                     "keypoint_head.final_layer.bias"]),
    ("layer_3_decay", 1.0, 0.1, ["keypoint_head.deconv_layers.0.weight", "keypoint_head.deconv_layers.3.weight",
                                  "keypoint_head.final_layer.weight"]),
]


def as_table(groups):
    return {g["group_name"]: (g["lr_scale"], g["lr"], g["weight_decay"], sorted(g["param_names"])) for g in groups}


def test_layer_decay_groups_equal_the_hand_written_table():
    groups = layer_decay_param_groups(two_layer(), LR, WD, 0.75, num_layers=2)
    want = {name: (scale, LR * scale, wd, sorted(names)) for name, scale, wd, names in HAND}
    got = as_table(groups)
    assert list(got) == [name for name, *_ in HAND]  # mmcv's groups appear in first-seen order
    for name in want:
        s, lr, wd, names = got[name]
        assert names == want[name][3], name
        assert s == pytest.approx(want[name][0], rel=1e-12) and lr == pytest.approx(want[name][1], rel=1e-12)
        assert wd == want[name][2], name
    named = dict(two_layer().named_parameters())
    assert sum(len(n) for *_, n in HAND) == len(named)  # every parameter in exactly one group


def test_layer_decay_skips_frozen_and_places_our_extra_parameters():
    m = two_layer(window=(4, 3), rel_pos=True, num_knowledge_tokens=1)
    vitpose.freeze(m, "ffn")
    got = as_table(layer_decay_param_groups(m, LR, WD, 0.75, num_layers=2))
    names = {n for v in got.values() for n in v[3]}
    assert not any(".mlp." in n or "patch_embed" in n or n == "backbone.pos_embed" for n in names)
    assert "backbone.blocks.0.attn.rel_pos_h" in got["layer_1_no_decay"][3]   # no decay, its block's lr
    assert "backbone.knowledge_token" in got["layer_3_no_decay"][3]           # no decay, full lr
    opt = build_optimizer(m, Recipe("vitpose", "test", lr=LR, layer_decay=0.75), num_layers=2)
    assert all(g["initial_lr"] == g["lr"] for g in opt.param_groups)


def test_schedule_is_mmcv_linear_warmup_then_step():
    r = Recipe("vitpose", "test")  # warmup 500 from 0.001, steps at 170 and 200, gamma 0.1
    s = Schedule(r, steps_per_epoch=100)
    assert s.factor(0, 0) == pytest.approx(0.001)
    assert s.factor(250, 2) == pytest.approx(1 - 0.5 * 0.999)
    assert s.factor(499, 4) == pytest.approx(1 - (1 / 500) * 0.999)
    assert s.factor(500, 5) == 1.0 and s.factor(16999, 169) == 1.0
    assert s.factor(17000, 170) == pytest.approx(0.1) and s.factor(20000, 200) == pytest.approx(0.01)
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2e-4, "initial_lr": 2e-4}])
    assert s.apply(opt, 17000, 170) == pytest.approx(5e-5) and opt.param_groups[0]["lr"] == pytest.approx(2e-5)
    cos = Schedule(Recipe("tokenpose", "test", schedule="cosine", warmup_iters=0, epochs=10), steps_per_epoch=10)
    assert cos.factor(0, 0) == 1.0 and cos.factor(50, 5) == pytest.approx(0.5) and cos.factor(100, 10) == pytest.approx(0)


def test_recipe_for_a_shorter_run():
    r = Recipe("vitpose", "test").for_run(21, steps_per_epoch=10)
    assert r.lr_steps == (17, 20) and r.warmup_iters == 42 and r.epochs == 21
    kept = Recipe("vitpose", "test").for_run(21, 1000, lr_steps=[5, 9], lr=1e-3)
    assert kept.lr_steps == (5, 9) and kept.warmup_iters == 500 and kept.lr == 1e-3
    with pytest.raises(ValueError, match="unknown recipe field"):
        Recipe("vitpose", "test").for_run(2, 2, lrr=1)


def test_recipe_numbers_per_size():
    for size, (source, lr, decay, drop, batch) in VITPOSE_TABLE.items():
        r = vitpose_recipe(_meta(f"vitpose-{size.lower()}"))
        assert (r.lr, r.layer_decay, r.drop_path, r.batch_size) == (5e-4, decay, drop, 64)
        assert r.source.endswith(source) and SIZES[size]["drop_path_rate"] == drop
        assert (r.weight_decay, r.betas, r.grad_clip, r.warmup_iters, r.lr_steps, r.epochs) == \
            (0.1, (0.9, 0.999), 1.0, 500, (170, 200), 210)
    plus = vitpose_recipe(_meta("vitpose-b", plus=True))
    assert (plus.lr, plus.layer_decay, plus.batch_size) == (1e-3, 0.75, 128) and "vitPose+_base" in plus.source
    assert VITPOSE_PLUS_TABLE["H"][2] == 0.80 and VITPOSE_TABLE["H"][2] == 0.85


def _meta(name, **kw):
    with torch.device("meta"):
        return vitpose.build_model(name, **kw)
