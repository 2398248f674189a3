"""TAR-ViTPose on video: clips of T frames around each frame, batched across frames and people.

A person's clip at frame t is frames t - T//2 .. t - T//2 + T - 1, all cropped with the person's
box at frame t (as the official inference does), the box's UDP crop of each frame taken by the
same ``grid_sample`` as single-frame inference. Past either end of the video the nearest frame is
repeated, as the official PoseTrack evaluation pads its windows (``clip_indices``); a still image
is a clip of itself repeated. ``ClipPredictor`` has ``TopDownPredictor``'s batch interface, with
clips in place of images, so the batch job (``job.PredictJob``) runs it like a frame model.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.keypoints import keypoint_set
from .pipeline import (
    box_to_center_scale,
    castable,
    crop_batch,
    forward_and_decode,
    inference_device,
    normalize,
    predict_in_batches,
    with_folded_heads,
)


def clip_indices(t: int, frames: int, last: int | None = None) -> list[int]:
    """Frame indices of the clip centred on t (centre slot frames // 2), clamped to [0, last]
    (``last`` None: every later frame exists)."""
    start = t - frames // 2
    hi = last if last is not None else start + frames - 1
    return [min(max(i, 0), hi) for i in range(start, start + frames)]


class ClipPredictor:
    """``ClipPredictor(tar_model).predict_batch(clips, boxes) -> [[Pose] per clip]``.

    model: a TARViTPose or a checkpoint path. device: default CUDA when available; dtype: bf16 on
    CUDA, fp32 on the CPU. flip: the flip test (every frame of a clip mirrored). batch_size:
    person clips per forward pass (the flipped ones not counted)."""

    def __init__(self, model, *, device=None, dtype=None, flip: bool = True, batch_size: int = 16,
                 fold_batchnorm: bool = True):
        from ..models.checkpoints import load_model
        from ..models.tar_vitpose import TARViTPose
        owned = not isinstance(model, TARViTPose)  # a model made here: cast in place
        if owned:
            model = load_model(model)
            if not isinstance(model, TARViTPose):
                raise TypeError(f"ClipPredictor needs a TAR-ViTPose model or checkpoint, got {type(model).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.dtype = inference_device(device, dtype)
        model = castable(model.eval().to(self.device), self.dtype, owned)  # the caller's model keeps its dtype
        if fold_batchnorm:  # on a copy of the (small) decoder: the caller's model stays as it is
            model = with_folded_heads(model)
        self.model = model.to(self.dtype)
        cfg = model.config
        self.clip_frames = cfg.frames
        self.keypoints = keypoint_set(cfg.vit.datasets[0])
        self.flip = flip and self.keypoints.flip_indices is not None
        self.batch_size = batch_size
        self.input_size = (cfg.input_size[1], cfg.input_size[0])  # (W, H)
        self.backend = cfg.backend

    @torch.inference_mode()
    def run_clips(self, images: list[torch.Tensor], clip_index, boxes) -> tuple[torch.Tensor, ...]:
        """images (3, H, W); clip_index (n, T) into images; boxes (n, 4+) xywh -> keypoints (n, K, 2),
        scores (n, K), centers (n, 2), scales (n, 2), float32 on the device."""
        dev, T = self.device, self.clip_frames
        images = [im.to(dev, non_blocking=True) for im in images]
        boxes = torch.as_tensor(np.asarray(boxes)[:, :4], dtype=torch.float32, device=dev)
        centers, scales = box_to_center_scale(boxes, self.input_size)
        index = torch.as_tensor(clip_index, device=dev, dtype=torch.long).reshape(-1)
        crops = crop_batch(images, index, centers.repeat_interleave(T, 0), scales.repeat_interleave(T, 0),
                           self.input_size)
        x = normalize(crops).to(self.dtype).unflatten(0, (len(boxes), T))
        kp, sc = forward_and_decode(self.model, x, centers, scales, self.input_size,
                                    flip_indices=self.keypoints.flip_indices if self.flip else None,
                                    backend=self.backend)
        return kp, sc, centers, scales

    def predict_batch(self, clips: list, boxes: list, errors: str = "raise") -> list:
        """``TopDownPredictor.predict_batch`` with a clip (a list of T (3, H, W) tensors, centre
        frame at T // 2) per item; an entry None in boxes marks a failed item (its clip slot is
        passed through). Frames shared by several clips are cropped from one copy."""
        for clip, arr in zip(clips, boxes):
            if arr is not None and len(clip) != self.clip_frames:
                raise ValueError(f"each clip must hold T={self.clip_frames} frames, got {len(clip)}")
        return predict_in_batches(clips, boxes, self.batch_size, self._run_chunk, self.keypoints.name, errors)

    def _run_chunk(self, chunk, boxes):
        """run_clips for a chunk of (slot, clip) per box: each frame cropped from once."""
        frames, where, index = [], {}, []
        for _, clip in chunk:
            for im in clip:
                if id(im) not in where:
                    where[id(im)] = len(frames)
                    frames.append(im)
            index.append([where[id(im)] for im in clip])
        return self.run_clips(frames, index, boxes)


def make_predictor(model, **kwargs):
    """ClipPredictor for a TAR-ViTPose, TopDownPredictor for a ViTPose (a model or checkpoint)."""
    from ..models.checkpoints import load_model
    from ..models.tar_vitpose import TARViTPose
    from .pipeline import TopDownPredictor
    if not isinstance(model, torch.nn.Module):
        model = load_model(model)
    if isinstance(model, TARViTPose):
        kwargs.pop("dataset_index", None)
        return ClipPredictor(model, **kwargs)
    return TopDownPredictor(model, **kwargs)
