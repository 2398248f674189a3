"""Data: keypoint sets (names, flip pairs, skeletons, OKS sigmas) of the datasets the models serve."""
from .keypoints import COCO_FLIP_INDICES, COCO_SIGMAS, COCO_SKELETON, DATASETS, KeypointSet, keypoint_set, register_dataset

__all__ = ["COCO_FLIP_INDICES", "COCO_SIGMAS", "COCO_SKELETON", "DATASETS", "KeypointSet", "keypoint_set",
           "register_dataset"]
