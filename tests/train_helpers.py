"""Shared by the training tests: a small synthetic dataset and tiny model configs."""
import json
import os

import torch

from vitpose.data.synth import write_dataset


def synth_dataset(root, train_images=12, val_images=3, seed=0) -> str:
    out = os.path.join(root, f"synth_{train_images}_{val_images}_{seed}")
    if not os.path.exists(os.path.join(out, "annotations", "train.json")):
        write_dataset(out, train_images, val_images, seed=seed)
    return out


def tiny_config(root, name="tiny", **overrides) -> str:
    """A 2-layer ViTPose at 64x48 (a few thousand parameters) as a --model JSON file."""
    cfg = {"arch": "vitpose-s", "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": [64, 48],
           "deconv_channels": 16, "drop_path_rate": 0.0}
    cfg.update(overrides)
    path = os.path.join(root, f"{name}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def checkpoint_model(path) -> dict:
    from vitpose.train import checkpoint
    return checkpoint.load(path)["model"]


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def bit_identical(a: dict, b: dict) -> list:
    """Names of the tensors that differ in any bit."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]
