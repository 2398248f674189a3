"""Inference: batched top-down prediction (crops by one ``grid_sample`` per batch, flip test,
heatmap decoding on the device), drawing, and video frames in and out."""
from .draw import draw_poses
from .pipeline import Pose, TopDownPredictor, load_image, predict

__all__ = ["draw_poses", "Pose", "TopDownPredictor", "load_image", "predict"]
