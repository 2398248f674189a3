"""Pose estimators for video: one frame (ViTPose) or a clip around it (TAR-ViTPose).

Both take the frames held so far, the frames to estimate and one box per person, and return
keypoints in image pixels; each batches its boxes across frames and people (``batch_size``
people per forward pass). A TAR-ViTPose clip for a person at frame t is frames t - T//2 ..
t - T//2 + T - 1, all cropped with the person's box at frame t (as the official inference does);
past either end of the video the nearest frame is repeated, as the official PoseTrack evaluation
pads its windows.
"""
from __future__ import annotations

import numpy as np
import torch

import vitpose_kernels

from ..data.keypoints import keypoint_set
from .pipeline import TopDownPredictor, box_to_center_scale, crop_batch, normalize


def clip_indices(t: int, frames: int, last: int | None = None) -> list[int]:
    """Frame indices of the clip centred on t (centre slot frames // 2), clamped to [0, last]."""
    start = t - frames // 2
    hi = last if last is not None else start + frames - 1
    return [min(max(i, 0), hi) for i in range(start, start + frames)]


def _device_dtype(device, dtype):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


class FrameEstimator:
    """ViTPose on each frame alone (``TopDownPredictor`` underneath)."""

    half = 0

    def __init__(self, model, **predictor_args):
        self.predictor = TopDownPredictor(model, **predictor_args)
        self.keypoints = self.predictor.keypoints
        self.batch_size = self.predictor.batch_size

    def __call__(self, buffer: dict, last, frame_ids, boxes) -> tuple[np.ndarray, np.ndarray]:
        """buffer: frame index -> (3, H, W) tensor; frame_ids (n,); boxes (n, 4+) -> kp, scores."""
        kps, scs = [], []
        for s in range(0, len(frame_ids), self.batch_size):
            ids = list(frame_ids[s:s + self.batch_size])
            used = sorted(set(ids))
            kp, sc, _, _ = self.predictor.run_boxes([buffer[i] for i in used], [used.index(i) for i in ids],
                                                    np.asarray(boxes[s:s + self.batch_size]))
            kps.append(kp.cpu().numpy())
            scs.append(sc.cpu().numpy())
        return _stack(kps, scs, self.keypoints.num_keypoints)


class ClipEstimator:
    """TAR-ViTPose on the clip around each frame. model: a TARViTPose or a checkpoint path."""

    def __init__(self, model, *, device=None, dtype=None, flip: bool = True, batch_size: int = 16,
                 fold_batchnorm: bool = True):
        from ..models.checkpoints import load_model
        from ..models.tar_vitpose import TARViTPose
        if not isinstance(model, TARViTPose):
            model = load_model(model)
            if not isinstance(model, TARViTPose):
                raise TypeError("ClipEstimator needs a TAR-ViTPose model or checkpoint")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.dtype = _device_dtype(device, dtype)
        model = model.eval().to(self.device)
        if fold_batchnorm:  # on a copy of the decoder, as TopDownPredictor does
            import copy
            twin = copy.copy(model)
            twin._modules = dict(model._modules)
            twin.keypoint_head = copy.deepcopy(model.keypoint_head)
            model = twin.fold_batchnorm()
        self.model = model.to(self.dtype)
        cfg = model.config
        self.frames, self.half = cfg.frames, cfg.frames // 2
        self.keypoints = keypoint_set(cfg.vit.datasets[0])
        self.flip = flip and self.keypoints.flip_indices is not None
        self.batch_size = batch_size
        self.input_size = (cfg.input_size[1], cfg.input_size[0])  # (W, H)
        self.backend = cfg.backend

    @torch.inference_mode()
    def run_clips(self, images, clip_index, boxes):
        """images: list of (3, H, W); clip_index (n, T) into images; boxes (n, 4) -> kp, sc (device)."""
        dev, T = self.device, self.frames
        images = [im.to(dev, non_blocking=True) for im in images]
        boxes = torch.as_tensor(np.asarray(boxes)[:, :4], dtype=torch.float32, device=dev)
        centers, scales = box_to_center_scale(boxes, self.input_size)
        index = torch.as_tensor(clip_index, device=dev, dtype=torch.long).reshape(-1)
        crops = crop_batch(images, index, centers.repeat_interleave(T, 0), scales.repeat_interleave(T, 0),
                           self.input_size)
        x = normalize(crops).to(self.dtype).unflatten(0, (len(boxes), T))
        n = len(boxes)
        if self.flip:
            x = torch.cat([x, x.flip(-1)])
        heatmaps = self.model(x).float()
        flipped = None
        if self.flip:
            heatmaps, flipped = heatmaps[:n], heatmaps[n:]
        return vitpose_kernels.decode_heatmaps(
            heatmaps, flip_heatmaps=flipped, flip_indices=self.keypoints.flip_indices if self.flip else None,
            input_size=self.input_size, bbox_centers=centers, bbox_scales=scales, backend=self.backend)

    def __call__(self, buffer: dict, last, frame_ids, boxes) -> tuple[np.ndarray, np.ndarray]:
        """As FrameEstimator; ``last`` is the video's last frame index once known (clips past it
        repeat it) and None while frames t + T//2 are all in the buffer."""
        kps, scs = [], []
        for s in range(0, len(frame_ids), self.batch_size):
            clips = [clip_indices(t, self.frames, last) for t in frame_ids[s:s + self.batch_size]]
            used = sorted({i for c in clips for i in c})
            where = {f: j for j, f in enumerate(used)}
            kp, sc = self.run_clips([buffer[i] for i in used], [[where[i] for i in c] for c in clips],
                                    np.asarray(boxes[s:s + self.batch_size]))
            kps.append(kp.cpu().numpy())
            scs.append(sc.cpu().numpy())
        return _stack(kps, scs, self.keypoints.num_keypoints)


def _stack(kps, scs, K):
    if not kps:
        return np.zeros((0, K, 2)), np.zeros((0, K))
    return np.concatenate(kps), np.concatenate(scs)


def make_estimator(model, **kwargs):
    """ClipEstimator for a TAR-ViTPose, FrameEstimator for a ViTPose (model or checkpoint path)."""
    from ..models.checkpoints import load_model
    from ..models.tar_vitpose import TARViTPose
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_model(model)
    if isinstance(model, TARViTPose):
        return ClipEstimator(model, **kwargs)
    return FrameEstimator(model, **kwargs)
