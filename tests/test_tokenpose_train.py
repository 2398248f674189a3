"""TokenPose through the trainer: the official recipe (Adam 1e-3, no weight decay, steps at 200 and
260 of 300 epochs, no warmup/clipping), the official "gaussian" targets (a NumPy port of
JointsDataset.generate_target with the HRNet affine), the family dispatch, and a tiny TokenPose
trained on the synthetic set with COCO AP rising."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import vitpose
import vitpose_kernels as vk
from vitpose.infer.pipeline import box_to_center_scale, image_to_crop
from vitpose.models.tokenpose import VARIANTS, TokenPose, tokenpose_config
from vitpose.train import family_for, train
from vitpose.train.optim import Schedule, build_optimizer
from vitpose.train.tokenpose import AUGMENT, TOKENPOSE_TABLE, TokenPoseAugment, tokenpose_recipe, tokenpose_targets

from train_helpers import synth_dataset


def test_recipe_is_the_official_one():
    for v in VARIANTS:
        with torch.device("meta"):
            model = TokenPose(tokenpose_config(v))
        r = tokenpose_recipe(model)
        assert (r.optimizer, r.lr, r.weight_decay, r.layer_decay, r.grad_clip, r.warmup_iters) == \
            ("adam", 1e-3, 0.0, None, None, 0)
        assert (r.schedule, r.lr_steps, r.lr_gamma, r.epochs, r.sigma) == ("step", (200, 260), 0.1, 300, 2.0)
        assert r.batch_size == TOKENPOSE_TABLE[v][1]
    with torch.device("meta"):
        l384 = TokenPose(tokenpose_config("L/D24", img_size=(384, 288)))
    r = tokenpose_recipe(l384)
    assert (r.sigma, r.batch_size) == (3.0, 32) and "384_288" in r.source
    model = TokenPose(tokenpose_config("T", img_size=(64, 48), patch_size=(8, 6), dim=32, heads=2, depth=1))
    opt = build_optimizer(model, tokenpose_recipe(model), 0)
    assert type(opt) is torch.optim.Adam and all(g["weight_decay"] == 0 and g["lr"] == 1e-3 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))  # no sine buffer
    s = Schedule(r, steps_per_epoch=10)
    assert [s.factor(e * 10, e) for e in (0, 199, 200, 259, 260)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert (AUGMENT.rot_factor, AUGMENT.scale_factor, AUGMENT.rot_prob, AUGMENT.half_body_prob,
            AUGMENT.center_jitter_prob) == (45.0, 0.35, 0.6, 0.3, 0.0)


def official_targets(joints_hm, vis, W, H, sigma):
    """JointsDataset.generate_target + adjust_target_weight of the official code, one instance."""
    K = len(joints_hm)
    target, weight = np.zeros((K, H, W), np.float32), vis.astype(np.float32).copy()
    tmp = sigma * 3
    x, y = np.arange(0, W, 1, np.float32), np.arange(0, H, 1, np.float32)[:, None]
    for j in range(K):
        mx, my = joints_hm[j]
        ul, br = [int(mx - tmp), int(my - tmp)], [int(mx + tmp + 1), int(my + tmp + 1)]
        if ul[0] >= W or ul[1] >= H or br[0] < 0 or br[1] < 0:
            weight[j] = 0
        if weight[j] > 0.5:
            target[j] = np.exp(-((x - mx) ** 2 + (y - my) ** 2) / (2 * sigma ** 2))
    return target, weight


def test_targets_are_the_official_gaussian():
    cv2 = pytest.importorskip("cv2")
    g = np.random.default_rng(0)
    boxes = torch.tensor([[30., 40, 80, 150], [100, 20, 120, 90]])
    c, s = box_to_center_scale(boxes, (192, 256), method="dark")
    points = torch.from_numpy(g.uniform(-60, 300, (2, 17, 2)).astype(np.float32))  # some off the crop
    vis = torch.from_numpy((g.random((2, 17)) > 0.2).astype(np.float32))
    crop = image_to_crop(points, c, s, (192, 256), method="dark")
    got, w = tokenpose_targets(crop, vis, (48, 64), (192, 256), 2.0)
    for n in range(2):  # official: image -> heatmap by get_affine_transform(c, s, 0, heatmap_size)
        cc, sw = c[n].numpy(), float(s[n, 0])
        src = np.float32([cc, cc + [0, (sw - 1) * -0.5], cc + [(sw - 1) * -0.5, (sw - 1) * -0.5]])
        mid = np.float32([23.5, 31.5])
        dst = np.float32([mid, mid + [0, -23.5], mid + [-23.5, -23.5]])
        trans = cv2.getAffineTransform(src, dst)
        hm = np.concatenate([points[n].numpy(), np.ones((17, 1))], 1) @ trans.T
        want, want_w = official_targets(hm, vis[n].numpy(), 48, 64, 2.0)
        assert np.array_equal(w[n].numpy(), want_w)
        assert np.abs(got[n].numpy() - want).max() < 1e-4
    assert 0 < w.sum() < vis.sum()  # some labelled keypoints miss the map


def test_augmented_batch_decodes_back(tmp_path):
    """Crops and targets of the augmentation (HRNet geometry, rotation and flip included) agree:
    decoding a target gives its keypoint, in crop pixels."""
    from vitpose.data.coco import TopDownDataset, collate, find_split
    data = synth_dataset(str(tmp_path), 4, 0, seed=2)
    ds = TopDownDataset(find_split(data, "train"), augment=AUGMENT)
    batch = collate([ds[(0, i)] for i in range(min(8, len(ds)))])
    for train_mode in (False, True):
        a = TokenPoseAugment([ds.keypoints], input_size=(192, 256), heatmap_size=(48, 64),
                             config=dataclasses.replace(AUGMENT, sigma=2.0), train=train_mode, canvas_size=(352, 352))
        x = a(batch, "cpu")
        kp, _ = vk.decode_heatmaps(x["targets"], input_size=(192, 256), method="dark")
        hm = x["keypoints"] * (47 / 191)
        inner = (x["weights"] > 0) & (hm > 3).all(-1) & (hm[..., 0] < 44) & (hm[..., 1] < 60)
        assert inner.sum() > 10
        assert (kp - x["keypoints"]).norm(dim=-1)[inner].max() < 0.5, train_mode


def test_family_dispatch(tmp_path):
    assert family_for("tokenpose-t").name == "tokenpose" and family_for("vitpose-s").name == "vitpose"
    spec = tmp_path / "tp.json"
    spec.write_text(json.dumps({"arch": "tokenpose-b", "hrnet_width": 8}))
    assert family_for(str(spec)).name == "tokenpose"


def repeated_people(root, copies: int) -> str:
    """A synthetic set whose training split repeats its people ``copies`` times (fewer, longer
    epochs) and whose val split is the training people: a tiny model learns them in seconds."""
    src = synth_dataset(root, 6, 0, seed=1)
    out = os.path.join(root, "repeated")
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    if not os.path.exists(os.path.join(out, "images")):
        os.symlink(os.path.join(src, "images"), os.path.join(out, "images"))
    with open(os.path.join(src, "annotations", "train.json")) as f:
        d = json.load(f)
    with open(os.path.join(out, "annotations", "val.json"), "w") as f:
        json.dump(d, f)
    d["annotations"] = [{**a, "id": r * len(d["annotations"]) + i + 1} for r in range(copies)
                        for i, a in enumerate(d["annotations"])]
    with open(os.path.join(out, "annotations", "train.json"), "w") as f:
        json.dump(d, f)
    return out


def test_tiny_tokenpose_trains_with_ap_rising(tmp_path):
    """The recipe as it is (Adam 1e-3, the step schedule scaled to 10 epochs), a 2-layer TokenPose-T
    at 64x48, TokenPose targets and loss, evaluation through the pipeline's DARK decoding. For CI
    time: no augmentation, no flip test, and the model is scored on the people it trains on."""
    data = repeated_people(str(tmp_path), 8)
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps({"arch": "tokenpose-t", "img_size": [64, 48], "patch_size": [8, 6], "dim": 64,
                                "heads": 4, "depth": 2, "hidden_heatmap_dim": 128}))
    m = train(data=data, model=str(spec), epochs=10, batch_size=8, out=str(tmp_path / "run"), workers=0,
              progress=False, log_every=1000, eval_every=5, augment=False, flip_test=False)
    aps = [h["coco_ap"] for h in m["history"]]
    assert m["status"] == "finished" and m["recipe"]["optimizer"] == "adam" and list(m["recipe"]["lr_steps"]) == [7, 9]
    assert aps[-1] > aps[0] and aps[-1] > 0.05, aps
    model = vitpose.load_model(str(tmp_path / "run" / "model.safetensors"))
    assert isinstance(model, TokenPose) and model.config.patch_size == (8, 6)
