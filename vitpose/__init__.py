"""vitpose: the ViTPose model family on vitpose_kernels, checkpoint loading, batched top-down
inference, COCO evaluation and a CLI (``vitpose predict``, ``vitpose evaluate``).

    model = vitpose.load_model("vitpose-b.pth")                      # official, ViTPose+, HF, ours
    poses = vitpose.predict(model, ["img.jpg"], [[[x, y, w, h, score]]])
    poses[0][0].keypoints, poses[0][0].scores                          # (17, 2) image pixels, (17,)
"""
from .checkpoints import load_model, save_model
from .configs import SIZES, TABLE5, TABLE5_PAPER, ViTPoseConfig, vitpose_config
from .keypoints import COCO_FLIP_INDICES, COCO_SKELETON, DATASETS, register_dataset
from .knowledge import attach_knowledge_token, freeze_knowledge_token, prepare_token_training
from .model import ViTPose, freeze
from .pipeline import Pose, TopDownPredictor, predict

__all__ = [
    "ViTPose", "ViTPoseConfig", "vitpose_config", "SIZES", "TABLE5", "TABLE5_PAPER", "COCO_FLIP_INDICES",
    "COCO_SKELETON", "DATASETS", "register_dataset", "load_model", "save_model", "freeze",
    "attach_knowledge_token", "freeze_knowledge_token", "prepare_token_training", "Pose",
    "TopDownPredictor", "predict",
]
