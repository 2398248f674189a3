"""The dataset interface: what a model family gives the trainer besides its recipe.

The trainer (``vitpose.train.trainer``) owns the loop, optimizer, schedule, precision, DDP,
checkpoints and logs; a Task owns everything that depends on the data and the kind of model. A
family registers ``task=SomeTask`` with ``vitpose.train.register_family``; the trainer calls:

    task = SomeTask(config, dist)              # read the data (keypoint sets, samples)
    model = task.build_model(config.model)     # the model for that data (and its input size)
    task.train_set, task.collate               # a map-style Dataset indexed by (epoch, i) and its collate
    x = task.prepare(batch, device)            # device-side augmentation and targets (no grad)
    loss, logs = task.loss(model, x)           # under autocast; logs: {name: 0-d tensor}
    task.evaluate(model, dist, device)         # -> {"coco_ap": ..., ...} on every rank
    task.num_layers(model)                     # depth for layer-wise lr decay
    task.train_mode(model)                     # before each epoch (default: model.train())
    task.finish(model, run_dir)                # extra files (e.g. a trained knowledge token)

A TAR-ViTPose task would return clips (B, T, 3, H, W) from ``prepare``; a TokenPose task its own
targets; the trainer never looks inside.
"""
from __future__ import annotations

import torch


class Task:
    train_set: torch.utils.data.Dataset

    def __init__(self, config, dist):
        self.config, self.dist = config, dist

    @staticmethod
    def collate(items):
        return torch.utils.data.default_collate(items)

    def build_model(self, spec: str) -> torch.nn.Module:
        raise NotImplementedError

    def prepare(self, batch, device) -> dict:
        raise NotImplementedError

    def loss(self, model, prepared: dict):
        raise NotImplementedError

    def evaluate(self, model, dist, device, progress: bool = False) -> dict:
        raise NotImplementedError

    def num_layers(self, model) -> int:
        return 0

    def train_mode(self, model) -> None:
        model.train()

    def finish(self, model, run_dir: str) -> None:
        pass
