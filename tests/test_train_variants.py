"""The paper's training variants through the trainer: partial fine-tuning (Table 6), knowledge
token (Eq. 5, then Eq. 6) with output distillation (Table 8), ViTPose+ on two datasets with
different keypoint counts (mixed batches, a loss per dataset)."""
import json
import os
import shutil

import torch

from train_helpers import synth_dataset, tiny_config
from vitpose.train import checkpoint as ckpt
from vitpose.train import train

FAST = dict(epochs=1, batch_size=4, workers=0, log_every=1, progress=False)


def final_weights(run):
    return ckpt.load(ckpt.resolve(str(run)))["model"]


def test_freeze_mhsa_trains_only_the_rest(tmp_path):
    data = synth_dataset(str(tmp_path), 8, 0, seed=3)
    model = tiny_config(str(tmp_path))
    base = train(data=data, model=model, out=str(tmp_path / "base"), eval_every=0, stop_after_steps=1, lr=0.0, **FAST)
    assert base["status"] == "interrupted"
    init = final_weights(tmp_path / "base")  # lr 0: the initial weights of this seed
    train(data=data, model=model, out=str(tmp_path / "frozen"), eval_every=0, freeze="mhsa", stop_after_steps=2,
          lr=1e-2, **FAST)
    after = final_weights(tmp_path / "frozen")
    for k in init:
        moved = not torch.equal(init[k], after[k])
        if ".attn." in k or ".norm1." in k:
            assert not moved, k
        elif k.endswith(("mlp.fc1.weight", "final_layer.weight", "deconv_layers.0.weight")):
            assert moved, k


def test_knowledge_token_then_distillation(tmp_path):
    data = synth_dataset(str(tmp_path), 8, 2, seed=3)
    model = tiny_config(str(tmp_path))
    teacher = tmp_path / "teacher"
    train(data=data, model=model, out=str(teacher), eval_every=0, **FAST)
    # Eq. 5: the teacher frozen, one new token trained
    tok = tmp_path / "token"
    train(data=data, model=model, out=str(tok), init=str(teacher / "model.safetensors"), train_knowledge_token=1,
          eval_every=0, lr=1e-2, **FAST)
    t_sd, k_sd = final_weights(teacher), final_weights(tok)
    assert all(torch.equal(t_sd[k], k_sd[k]) for k in t_sd)  # nothing of the teacher moved
    token_file = tok / "knowledge_token.safetensors"
    from vitpose.models.knowledge import load_knowledge_token
    token = load_knowledge_token(str(token_file))
    assert token.shape == (1, 1, 32) and torch.equal(token, k_sd["backbone.knowledge_token"])
    # Eq. 6 + output distillation (L^tod): the student with the frozen token, regressing the teacher too
    student = tmp_path / "student"
    m = train(data=data, model=model, out=str(student), knowledge_token=str(token_file),
              teacher=str(teacher / "model.safetensors"), eval_every=1, **FAST)
    assert m["status"] == "finished" and m["coco_ap"] is not None
    assert torch.equal(final_weights(student)["backbone.knowledge_token"], token)  # frozen
    header = open(student / "log.csv").readline().strip().split(",")
    assert "loss_distill" in header and "loss_gt" in header


def keep_body(src, dst, name="body13"):
    """A copy of a synthetic set with 13 keypoints (nose and body) under other names: K, flip pairs
    (found from the names) and sigmas come from its own metadata."""
    keep = [0] + list(range(5, 17))
    shutil.copytree(os.path.join(src, "images"), os.path.join(dst, "images"))
    for split in ("train", "val"):
        d = json.load(open(os.path.join(src, "annotations", f"{split}.json")))
        cat = d["categories"][0]
        cat.update(name=name, keypoints=["head"] + [n.replace("left_", "l_").replace("right_", "r_")
                                                    for n in cat["keypoints"][5:]],
                   sigmas=[cat["sigmas"][i] for i in keep], skeleton=[])
        cat.pop("flip_pairs")
        for a in d["annotations"]:
            k = [a["keypoints"][3 * i: 3 * i + 3] for i in keep]
            a["keypoints"] = [v for t in k for v in t]
            a["num_keypoints"] = sum(t[2] > 0 for t in k)
        d["annotations"] = [a for a in d["annotations"] if a["num_keypoints"] > 0]
        os.makedirs(os.path.join(dst, "annotations"), exist_ok=True)
        json.dump(d, open(os.path.join(dst, "annotations", f"{split}.json"), "w"))
    return dst


def test_vitpose_plus_on_two_datasets(tmp_path):
    coco_like = synth_dataset(str(tmp_path), 8, 2, seed=4)
    body = keep_body(synth_dataset(str(tmp_path), 8, 2, seed=5), str(tmp_path / "body13"))
    model = tiny_config(str(tmp_path))
    m = train(data=[coco_like, body], model=model, out=str(tmp_path / "plus"), eval_every=1, **FAST)
    cfg = m["model"]
    assert cfg["datasets"] == ["coco", "body13_13"] and cfg["experts"] == 2
    assert "coco_ap" in m["final"] and "coco_ap/body13_13" in m["final"]
    header = open(tmp_path / "plus" / "log.csv").readline().strip().split(",")
    assert "loss_coco" in header and "loss_body13_13" in header
    sd = final_weights(tmp_path / "plus")
    assert sd["associate_keypoint_heads.0.final_layer.weight"].shape[0] == 13
    assert "backbone.blocks.1.mlp.experts.1.weight" in sd
