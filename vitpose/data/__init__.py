"""Data: keypoint sets (names, flip pairs, skeletons, OKS sigmas) of the datasets the models serve;
``coco`` (COCO-format keypoint datasets for training), ``augment`` (the official augmentation,
batched on the device), ``synth`` (rendered people, ``vitpose synth``)."""
from .keypoints import COCO_FLIP_INDICES, COCO_SIGMAS, COCO_SKELETON, DATASETS, KeypointSet, keypoint_set, register_dataset

__all__ = ["COCO_FLIP_INDICES", "COCO_SIGMAS", "COCO_SKELETON", "DATASETS", "KeypointSet", "keypoint_set",
           "register_dataset"]
