"""vitpose: the ViTPose model family on vitpose_kernels, checkpoint loading, batched top-down
inference, COCO evaluation and a CLI (``vitpose predict``, ``vitpose evaluate``).

    model = vitpose.load_model("vitpose-b.pth")                      # official, ViTPose+, HF, ours
    poses = vitpose.predict(model, ["img.jpg"], [[[x, y, w, h, score]]])
    poses[0][0].keypoints, poses[0][0].scores                          # (17, 2) image pixels, (17,)
    vitpose.train(data="synth/", model="vitpose-s", epochs=30, batch_size=32, out="runs/s")

Subpackages by stage: ``models`` (architectures, configs, checkpoints), ``data`` (keypoint sets),
``infer`` (top-down pipeline, drawing, video), ``evaluation`` (COCO AP), ``train`` (trainer), ``cli``.
"""
from .data import COCO_FLIP_INDICES, COCO_SKELETON, DATASETS, register_dataset
from .infer import Pose, TopDownPredictor, predict
from . import train  # the package is callable: vitpose.train(data=..., model=..., ...)
from .models import (SIZES, TABLE5, TABLE5_PAPER, ViTPose, ViTPoseConfig, architectures, attach_knowledge_token,
                     build_model, freeze, freeze_knowledge_token, load_model, prepare_token_training, save_model,
                     vitpose_config)

__all__ = [
    "ViTPose", "ViTPoseConfig", "vitpose_config", "SIZES", "TABLE5", "TABLE5_PAPER", "COCO_FLIP_INDICES",
    "COCO_SKELETON", "DATASETS", "register_dataset", "load_model", "save_model", "build_model", "architectures",
    "freeze", "attach_knowledge_token", "freeze_knowledge_token", "prepare_token_training", "Pose",
    "TopDownPredictor", "predict", "train",
]
