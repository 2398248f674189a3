"""Evaluation: COCO keypoint AP with mmpose's rescoring and OKS-NMS."""
from .coco import coco_keypoint_eval, evaluate, oks_nms, postprocess, rescore

__all__ = ["coco_keypoint_eval", "evaluate", "oks_nms", "postprocess", "rescore"]
