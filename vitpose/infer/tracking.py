"""Person tracking across video frames: identities by optimal assignment of OKS / IoU similarities.

``vitpose predict --track``: ``TrackingHook`` gives each video its ``Tracker`` (and optional
One-Euro smoother) inside the batch job; ``PropagatedBoxes`` takes the boxes of frame t from the
tracks' keypoints at t - 1 and consults the detector (or boxes file) every N frames.

Each frame's poses are matched to the live tracks with ``scipy.optimize.linear_sum_assignment`` on
their similarity to where each track is expected now (its last pose moved by its smoothed
velocity, so that two people crossing keep their identities); a match needs a similarity of at
least ``min_similarity``. Unmatched poses start new tracks; a track unseen for more than
``max_age`` frames ends. Poses whose boxes came from a track (propagated from its previous
keypoints) keep that track's id without matching.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .job import JobHook

DEFAULT_SIGMA = 0.079  # OKS sigma for keypoint sets without their own (COCO's shoulders)


# ------------------------------------------------------------------------------------------------
# Similarities
# ------------------------------------------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes a (n, 4+) and b (m, 4+) -> (n, m)."""
    a, b = np.asarray(a, dtype=np.float64)[:, :4], np.asarray(b, dtype=np.float64)[:, :4]
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y2 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def pose_oks(kp_a, sc_a, kp_b, sc_b, areas, sigmas=None, score_thr: float = 0.2) -> np.ndarray:
    """Object keypoint similarity of poses a (n, K, 2) and b (m, K, 2) -> (n, m).

    COCO's formula, exp(-d^2 / (2 * area * (2 sigma)^2)) averaged over the keypoints scored above
    ``score_thr`` in both poses; ``areas`` (n,) are the reference scales of the a poses (their box
    areas). A pair with no keypoint confident in both has similarity 0."""
    kp_a, kp_b = np.asarray(kp_a, dtype=np.float64), np.asarray(kp_b, dtype=np.float64)
    K = kp_a.shape[1]
    sig = np.full(K, DEFAULT_SIGMA) if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    d2 = ((kp_a[:, None] - kp_b[None]) ** 2).sum(-1)                              # (n, m, K)
    e = d2 / (2.0 * np.maximum(np.asarray(areas, dtype=np.float64), 1.0)[:, None, None] * (2 * sig) ** 2)
    both = (np.asarray(sc_a)[:, None] > score_thr) & (np.asarray(sc_b)[None] > score_thr)
    count = both.sum(-1)
    return np.where(count > 0, (np.exp(-e) * both).sum(-1) / np.maximum(count, 1), 0.0)


def boxes_from_keypoints(kp: np.ndarray, sc: np.ndarray, score_thr: float = 0.2, grow: float = 1.2,
                         min_keypoints: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4) xywh around each pose's confident keypoints, grown by ``grow`` about their
    centre, and whether each pose had ``min_keypoints`` confident keypoints (else its box is 0)."""
    kp, sc = np.asarray(kp, dtype=np.float64), np.asarray(sc)
    ok = (sc > score_thr).sum(-1) >= min_keypoints
    boxes = np.zeros((len(kp), 4))
    for i in np.flatnonzero(ok):
        pts = kp[i][sc[i] > score_thr]
        lo, hi = pts.min(0), pts.max(0)
        c, wh = (lo + hi) / 2, np.maximum(hi - lo, 1.0) * grow
        boxes[i] = [c[0] - wh[0] / 2, c[1] - wh[1] / 2, wh[0], wh[1]]
    return boxes, ok


# ------------------------------------------------------------------------------------------------
# The tracker
# ------------------------------------------------------------------------------------------------
@dataclass
class Track:
    track_id: int
    box: np.ndarray          # (4,) xywh, last seen
    keypoints: np.ndarray    # (K, 2), last seen
    scores: np.ndarray       # (K,)
    last_frame: int
    velocity: np.ndarray = field(default=None)   # (K, 2) px per frame, smoothed
    hits: int = 1

    def predicted(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints and box expected at ``frame`` (constant velocity from the last sighting)."""
        dt = frame - self.last_frame
        if self.velocity is None or dt <= 0:
            return self.keypoints, self.box
        shift = self.velocity * dt
        box = self.box.copy()
        box[:2] += shift[self.scores > 0].mean(0) if (self.scores > 0).any() else 0.0
        return self.keypoints + shift, box


class Tracker:
    """``Tracker().update(frame, boxes, keypoints, scores) -> track ids`` for one frame's poses.

    metric: "oks" (keypoints; box IoU for pairs without shared confident keypoints), "iou" (boxes
    only). motion: predict each track forward with its smoothed keypoint velocity (``momentum`` of
    the exponential average) before matching."""

    def __init__(self, metric: str = "oks", min_similarity: float = 0.3, max_age: int = 30,
                 motion: bool = True, momentum: float = 0.5, sigmas=None, score_thr: float = 0.2):
        if metric not in ("oks", "iou"):
            raise ValueError(f"metric must be 'oks' or 'iou', got {metric!r}")
        if not 0.0 <= min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in [0, 1], got {min_similarity}")
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0 frames, got {max_age}")
        self.metric, self.min_similarity, self.max_age = metric, min_similarity, max_age
        self.motion, self.momentum, self.sigmas, self.score_thr = motion, momentum, sigmas, score_thr
        self.tracks: dict[int, Track] = {}
        self.next_id = 0

    def similarity(self, frame: int, tracks: list[Track], boxes, keypoints, scores) -> np.ndarray:
        """(len(tracks), n) similarities of the tracks' expected poses to the new ones."""
        if not tracks or not len(boxes):
            return np.zeros((len(tracks), len(boxes)))
        pred = [t.predicted(frame) if self.motion else (t.keypoints, t.box) for t in tracks]
        tboxes = np.stack([b for _, b in pred])
        iou = box_iou(tboxes, boxes)
        if self.metric == "iou":
            return iou
        tkp = np.stack([k for k, _ in pred])
        tsc = np.stack([t.scores for t in tracks])
        oks = pose_oks(tkp, tsc, keypoints, scores, tboxes[:, 2] * tboxes[:, 3], self.sigmas, self.score_thr)
        shared = ((tsc[:, None] > self.score_thr) & (np.asarray(scores)[None] > self.score_thr)).any(-1)
        return np.where(shared, oks, iou)

    def update(self, frame: int, boxes, keypoints, scores, known_ids=None) -> list[int]:
        """Assign ids to one frame's poses (boxes (n, 4+) xywh, keypoints (n, K, 2), scores (n, K)).
        known_ids: per pose a track id it must continue (propagated boxes) or None."""
        from scipy.optimize import linear_sum_assignment

        boxes = np.asarray(boxes, dtype=np.float64).reshape(len(boxes), -1)[:, :4] if len(boxes) else np.zeros((0, 4))
        keypoints, scores = np.asarray(keypoints, dtype=np.float64), np.asarray(scores, dtype=np.float64)
        n = len(boxes)
        ids: list[int | None] = list(known_ids) if known_ids is not None else [None] * n
        if len(ids) != n:
            raise ValueError(f"known_ids must have one entry per pose ({n}), got {len(ids)}")
        taken = {i for i in ids if i is not None}
        free = [j for j in range(n) if ids[j] is None]
        tracks = [t for t in self.tracks.values() if t.track_id not in taken]
        if free and tracks:
            sim = self.similarity(frame, tracks, boxes[free], keypoints[free], scores[free])
            rows, cols = linear_sum_assignment(-sim)
            for r, c in zip(rows, cols):
                if sim[r, c] >= self.min_similarity:
                    ids[free[c]] = tracks[r].track_id
        for j in range(n):
            if ids[j] is None:
                ids[j] = self.next_id
                self.next_id += 1
            self._observe(ids[j], frame, boxes[j], keypoints[j], scores[j])
        for tid in [t for t, tr in self.tracks.items() if frame - tr.last_frame > self.max_age]:
            del self.tracks[tid]
        return [int(i) for i in ids]

    def _observe(self, tid, frame, box, kp, sc):
        track = self.tracks.get(tid)
        if track is None:
            self.next_id = max(self.next_id, tid + 1)
            self.tracks[tid] = Track(tid, box.copy(), kp.copy(), sc.copy(), frame)
            return
        dt = frame - track.last_frame
        if dt > 0:
            v = (kp - track.keypoints) / dt
            track.velocity = v if track.velocity is None else (
                self.momentum * track.velocity + (1 - self.momentum) * v)
        track.box, track.keypoints, track.scores = box.copy(), kp.copy(), sc.copy()
        track.last_frame, track.hits = frame, track.hits + 1

    def propagated_boxes(self, frame: int, grow: float = 1.2) -> tuple[list[int], np.ndarray]:
        """Boxes for ``frame`` from the tracks seen in the previous frame: around their keypoints
        (moved by their velocity when motion is on). Returns (track ids, boxes (n, 5) with score 1)."""
        ids, boxes = [], []
        for t in self.tracks.values():
            if t.last_frame != frame - 1:
                continue
            kp = t.predicted(frame)[0] if self.motion else t.keypoints
            box, ok = boxes_from_keypoints(kp[None], t.scores[None], self.score_thr, grow)
            if ok[0]:
                ids.append(t.track_id)
                boxes.append([*box[0], 1.0])
        return ids, np.asarray(boxes, dtype=np.float64).reshape(-1, 5)


# ------------------------------------------------------------------------------------------------
# In the batch job (vitpose predict)
# ------------------------------------------------------------------------------------------------
class TrackingHook(JobHook):
    """Sets ``Pose.track_id`` on every video frame's poses (still images are left alone) and, with
    ``smooth``, One-Euro-smooths the keypoints written out; tracking uses the model's keypoints.

    On --resume the frames already done are replayed with their recorded ids and keypoints, so the
    tracks go on as they were. The smoother's state is rebuilt from the recorded (smoothed)
    keypoints, which it cannot tell from raw ones: the few frames after the resume point may differ
    slightly from an uninterrupted run when smoothing."""

    def __init__(self, tracker_args: dict | None = None, smooth: bool = False, smoother_args: dict | None = None):
        Tracker(**(tracker_args or {}))  # bad arguments fail now, not at the first video
        self.tracker_args, self.smooth, self.smoother_args = dict(tracker_args or {}), smooth, dict(smoother_args or {})
        self.state: dict[int, tuple] = {}

    def begin_source(self, source) -> None:
        if source.kind != "video":
            return
        smoother = None
        if self.smooth:
            from .smoothing import TrackSmoother
            from .video import video_fps
            smoother = TrackSmoother(fps=video_fps(source.path), **self.smoother_args)
        self.state[source.index] = (Tracker(**self.tracker_args), smoother)

    def tracker(self, source) -> Tracker | None:
        st = self.state.get(source.index)
        return st[0] if st else None

    def after_pose(self, item, poses):
        st = self.state.get(item.source.index)
        if st is None or item.frame is None:
            return poses
        tracker, smoother = st
        n = len(poses)
        boxes = np.array([p.box[:4] for p in poses], dtype=np.float64).reshape(n, 4)
        kp = np.stack([p.keypoints for p in poses]) if n else np.zeros((0, 1, 2))
        sc = np.stack([p.scores for p in poses]) if n else np.zeros((0, 1))
        known = [p.track_id for p in poses] if item.replay else item.extra.pop("track_ids", None)
        ids = tracker.update(item.frame, boxes, kp, sc, known_ids=known)
        out = []
        for p, tid in zip(poses, ids):
            k = p.keypoints
            if smoother is not None:
                smoothed = smoother(tid, item.frame, k)
                if not item.replay:
                    k = smoothed.astype(np.float32)
            out.append(dataclasses.replace(p, keypoints=k, track_id=tid))
        return out

    def end_source(self, source) -> None:
        self.state.pop(source.index, None)


class PropagatedBoxes:
    """A box provider for the batch job: at video frames t with t % every != 0, the boxes of the
    people tracked at t - 1 (around their keypoints, moved by their velocity), each tied to its
    track; at the other frames, when nothing is tracked, and for still images, ``base`` (a boxes
    file, a detector, whole images). Needs groups of one frame (t - 1 tracked before t's boxes)."""

    def __init__(self, base, hook: TrackingHook, every: int):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (frames), got {every!r}")
        self.base, self.hook, self.every = base, hook, every

    def __call__(self, items) -> list:
        out, ask = [None] * len(items), []
        for j, it in enumerate(items):
            tracker = self.hook.tracker(it.source)
            ids, boxes = tracker.propagated_boxes(it.frame) if tracker is not None and it.frame is not None else ([], None)
            if it.frame is None or it.frame % self.every == 0 or not ids:
                ask.append(j)
            else:
                out[j] = boxes
                it.extra["track_ids"] = ids
        if ask:
            for j, b in zip(ask, self.base([items[j] for j in ask])):
                out[j] = b
        return out


# ------------------------------------------------------------------------------------------------
# Counting identity switches (tests, evaluation)
# ------------------------------------------------------------------------------------------------
def id_switches(gt_ids, pred_ids) -> int:
    """Identity switches: per frame, the ground-truth ids and the predicted ids of the same
    detections (two equal-length sequences per frame). A switch is counted whenever a ground-truth
    identity is given a different predicted id than the last time it was seen."""
    last, switches = {}, 0
    for g_frame, p_frame in zip(gt_ids, pred_ids):
        if len(g_frame) != len(p_frame):
            raise ValueError(f"each frame needs as many predicted as ground-truth ids, got "
                             f"{len(p_frame)} vs {len(g_frame)}")
        for g, p in zip(g_frame, p_frame):
            if g in last and last[g] != p:
                switches += 1
            last[g] = p
    return switches
