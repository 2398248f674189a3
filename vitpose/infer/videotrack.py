"""Poses with identities through a video: boxes -> pose estimation (frame or clip) -> tracking ->
optional One-Euro smoothing, frame by frame, with outputs in frame order.

Boxes come from a per-frame source (a detection file, a detector), or are propagated from each
track's previous keypoints; with ``detect_every=N`` the source is consulted every N frames and
the frames between use propagated boxes. When every frame's boxes come from the source, poses are
estimated in batches across frames and people; with propagation, frame t needs the poses of
frame t - 1, so batches hold one frame's people. A TAR-ViTPose frame is estimated once the T//2
frames after it have been read (or the video has ended).
"""
from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .pipeline import Pose, as_boxes
from .tracking import Tracker


@dataclass
class TrackedPose:
    track_id: int
    pose: Pose

    def to_json(self) -> dict:
        p = self.pose
        kps = np.concatenate([p.keypoints, p.scores[:, None]], axis=1).reshape(-1)
        return {"track_id": self.track_id, "bbox": [round(float(v), 2) for v in p.box],
                "box_score": round(float(p.box_score), 4), "score": round(p.score(), 4),
                "keypoints": [round(float(v), 2) for v in kps]}


BoxSource = Callable[[int, np.ndarray], "np.ndarray | None"]


class VideoPoseTracker:
    """``VideoPoseTracker(estimator, boxes=...).run(frames)`` yields (index, rgb, [TrackedPose]).

    estimator: a ``clips.FrameEstimator`` / ``ClipEstimator``. boxes: frame index, rgb ->
    (n, 4|5) xywh(+score) or None (nothing known for that frame); None: propagation only, with
    the whole frame as one box whenever nothing is tracked. detect_every: consult ``boxes``
    every N frames (1: every frame, no propagation). smoother: e.g. a TrackSmoother, applied to
    the keypoints written out (tracking uses the raw ones)."""

    def __init__(self, estimator, *, boxes: BoxSource | None = None, detect_every: int = 1,
                 tracker: Tracker | None = None, smoother=None, min_box_score: float = 0.0):
        if not isinstance(detect_every, int) or detect_every < 1:
            raise ValueError(f"detect_every must be a positive int (frames), got {detect_every!r}")
        self.estimator, self.boxes, self.detect_every = estimator, boxes, detect_every
        self.tracker = tracker or Tracker(sigmas=estimator.keypoints.sigmas)
        self.smoother, self.min_box_score = smoother, min_box_score

    @property
    def independent(self) -> bool:
        """Every frame's boxes known without the previous poses: batches may span frames."""
        return self.boxes is not None and self.detect_every == 1

    def run(self, frames: Iterable) -> Iterator[tuple[int, np.ndarray, list[TrackedPose]]]:
        """frames: (index, (H, W, 3) uint8 RGB) in order, indices 0, 1, 2, ..."""
        half = self.estimator.half
        buffer: dict[int, torch.Tensor] = {}
        waiting: deque[int] = deque()          # read, not yet estimated
        self._known: dict[int, np.ndarray] = {}  # boxes of waiting frames (independent mode)
        newest, expected = -1, 0
        for i, rgb in frames:
            if i != expected:
                raise ValueError(f"frames must come in order from 0: expected frame {expected}, got {i}")
            expected += 1
            buffer[i] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
            if self.independent:  # the source is asked once per frame (it may be a detector)
                self._known[i] = self._source_boxes(i, buffer)
            waiting.append(i)
            newest = i
            ready = [t for t in waiting if t + half <= newest]
            yield from self._process(buffer, waiting, ready, last=None, final=False)
        yield from self._process(buffer, waiting, list(waiting), last=newest, final=True)

    # ---- one step: estimate the ready frames, track, emit -------------------------------------
    def _process(self, buffer, waiting, ready, last, final):
        if not ready:
            return
        if self.independent:
            count = sum(len(self._known[t]) for t in ready)
            if count < self.estimator.batch_size and not final and len(ready) < self.estimator.batch_size:
                return  # wait for more frames to fill the batch
            yield from self._emit(buffer, ready, last)
        else:
            for t in ready:
                yield from self._emit(buffer, [t], last)
        for t in ready:
            waiting.remove(t)
        keep_from = (waiting[0] if waiting else ready[-1] + 1) - self.estimator.half
        for k in [k for k in buffer if k < keep_from]:
            del buffer[k]

    def _source_boxes(self, t, buffer) -> np.ndarray:
        rgb = buffer[t].permute(1, 2, 0).numpy()
        if self.boxes is None:
            return np.array([[0.0, 0.0, rgb.shape[1], rgb.shape[0], 1.0]])
        found = self.boxes(t, rgb)
        arr = as_boxes(found if found is not None else np.zeros((0, 5)), f" of frame {t}")
        return arr[arr[:, 4] >= self.min_box_score]

    def _frame_boxes(self, t, buffer):
        """(boxes (n, 5), known track ids per box or None) for frame t."""
        if self.independent:
            return self._known.pop(t), None
        ids, boxes = self.tracker.propagated_boxes(t)
        detect = t % self.detect_every == 0 if self.boxes is not None else not len(ids)
        if detect:
            return self._source_boxes(t, buffer), None
        return boxes, ids

    def _emit(self, buffer, frame_ids, last):
        per_frame = [self._frame_boxes(t, buffer) for t in frame_ids]
        flat_t = [t for t, (b, _) in zip(frame_ids, per_frame) for _ in range(len(b))]
        flat_b = np.concatenate([b for b, _ in per_frame]) if flat_t else np.zeros((0, 5))
        kp, sc = self.estimator(buffer, last, flat_t, flat_b)
        start = 0
        for t, (boxes, known) in zip(frame_ids, per_frame):
            n = len(boxes)
            fkp, fsc = kp[start:start + n], sc[start:start + n]
            start += n
            ids = self.tracker.update(t, boxes, fkp, fsc, known_ids=known)
            poses = []
            for j, tid in enumerate(ids):
                k = fkp[j] if self.smoother is None else self.smoother(tid, t, fkp[j])
                poses.append(TrackedPose(tid, Pose(k.astype(np.float32), fsc[j], boxes[j, :4].copy(),
                                                   float(boxes[j, 4]), self.estimator.keypoints.name)))
            yield t, buffer[t].permute(1, 2, 0).numpy(), poses


# ------------------------------------------------------------------------------------------------
# Sources and sinks
# ------------------------------------------------------------------------------------------------
def open_frames(path) -> tuple[Iterator, float | None, int]:
    """A video file or a folder of frames (sorted by name) -> (frames, fps or None, count or 0)."""
    from .inputs import IMAGE_EXTS
    from .pipeline import load_image
    from .video import video_frames
    path = os.fspath(path)
    if not os.path.isdir(path):
        return video_frames(path)
    names = sorted(n for n in os.listdir(path) if os.path.splitext(n)[1].lower() in IMAGE_EXTS)
    if not names:
        raise ValueError(f"no image files in the folder {path}")

    def frames():
        for i, n in enumerate(names):
            yield i, load_image(os.path.join(path, n)).permute(1, 2, 0).numpy()

    return frames(), None, len(names)


def frame_names(path) -> list[str] | None:
    from .inputs import IMAGE_EXTS
    if not os.path.isdir(path):
        return None
    return sorted(n for n in os.listdir(path) if os.path.splitext(n)[1].lower() in IMAGE_EXTS)


class TrackJSONWriter:
    """{"video", "fps", "keypoint_set", "frames": [{"frame", "file_name"?, "poses": [...]}]}, one
    entry per frame in order (frames without people included)."""

    def __init__(self, path, video: str, fps, keypoint_set: str, names=None):
        self.path, self.names = path, names
        self.doc = {"video": video, "fps": fps, "keypoint_set": keypoint_set, "frames": []}

    def add(self, frame: int, poses: list[TrackedPose]):
        entry = {"frame": frame, "poses": [p.to_json() for p in poses]}
        if self.names is not None:
            entry["file_name"] = self.names[frame]
        self.doc["frames"].append(entry)

    def close(self):
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f)
        os.replace(tmp, self.path)


def boxes_source_from_file(boxes_index, path) -> BoxSource:
    """Per-frame boxes from a ``BoxIndex``: "video.mp4:FRAME" / frame index keys for a video, the
    frame's file name for a folder of frames."""
    names = frame_names(path)
    if names is None:
        return lambda t, rgb: boxes_index.lookup(path, frame=t)
    return lambda t, rgb: boxes_index.lookup(os.path.join(path, names[t]))


def track_video(model_or_estimator, source, out_dir, *, boxes=None, detect_every: int = 1, smooth: bool = False,
                draw: bool = True, kpt_thr: float = 0.3, progress: bool = True, tracker=None,
                estimator_args=None, smoother_args=None) -> dict:
    """Track a video file or folder of frames into out_dir/<name>_tracks.json and (draw=True)
    out_dir/<name>_tracks.mp4 with ids and skeletons. boxes: a BoxIndex, a BoxSource or None.
    Returns a summary (frames, poses, tracks, paths)."""
    from tqdm import tqdm

    from .clips import make_estimator
    from .draw import draw_tracked_poses
    from .inputs import BoxIndex
    from .smoothing import TrackSmoother
    from .video import VideoWriter

    from .clips import ClipEstimator, FrameEstimator
    estimator = (model_or_estimator if isinstance(model_or_estimator, (ClipEstimator, FrameEstimator)) else
                 make_estimator(model_or_estimator, **(estimator_args or {})))
    source = os.fspath(source)
    frames, fps, total = open_frames(source)
    fps = fps or 25.0
    if isinstance(boxes, BoxIndex):
        boxes = boxes_source_from_file(boxes, source)
    smoother = TrackSmoother(fps=fps, **(smoother_args or {})) if smooth else None
    runner = VideoPoseTracker(estimator, boxes=boxes, detect_every=detect_every, tracker=tracker, smoother=smoother)
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.splitext(os.path.basename(source.rstrip(os.sep)))[0]
    json_path = os.path.join(out_dir, f"{name}_tracks.json")
    video_path = os.path.join(out_dir, f"{name}_tracks.mp4") if draw else None
    sink = TrackJSONWriter(json_path, os.path.basename(source.rstrip(os.sep)), fps, estimator.keypoints.name,
                           frame_names(source))
    writer = VideoWriter(video_path, fps) if draw else None
    ids, n_frames, n_poses = set(), 0, 0
    bar = tqdm(total=total or None, desc=name, unit="frame", disable=not progress or None)
    try:
        for t, rgb, poses in runner.run(frames):
            sink.add(t, poses)
            if writer is not None:
                writer.write(draw_tracked_poses(rgb, poses, kpt_thr=kpt_thr))
            ids.update(p.track_id for p in poses)
            n_frames, n_poses = n_frames + 1, n_poses + len(poses)
            bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        sink.close()
    return {"frames": n_frames, "poses": n_poses, "tracks": len(ids), "json": json_path, "video": video_path}
