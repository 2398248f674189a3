"""PoseTrack keypoint mAP (the PoseTrack 2017/2018 benchmark's multi-person pose AP), written from
its definition (Andriluka et al., CVPR 2018; the reference implementation is ``poseval``'s
evaluateAP):

1. Frames: the labelled frames with at least one annotated person. A joint is annotated unless it
   is stored as (0, 0) with visibility 0. Joints (ground truth and predicted) inside a frame's
   ignore regions are removed, then people left without joints.
2. Per frame, a predicted joint is correct for a ground-truth person when it lies within
   0.5 x head size of that person's joint (PCKh@0.5), head size = 0.6 x the diagonal of the
   person's head box. Each prediction and ground truth person are compared by the fraction of the
   person's annotated joints the prediction gets right; each prediction keeps only its best person,
   then each person keeps only its best remaining prediction (first on ties), if above 0.
3. Per joint type, every predicted joint is a detection with its score: a true positive when its
   pose is assigned to a person and it is correct for that person, else a false positive. The
   joint's AP is the area under the interpolated precision-recall curve (precision made
   monotone, VOC style) with recall over the annotated joints of that type.
4. mAP = mean of the 15 joints' APs (those with any annotated joint), in percent; the usual table
   groups Head (head top, neck, nose), Shoulder, Elbow, Wrist, Hip, Knee, Ankle.

Ties between equal detection scores are ranked in input order (poseval leaves their order to
NumPy's unstable sort).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The 15 PoseTrack joints, in the benchmark's ids
JOINTS = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
          "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "neck", "nose", "head_top")
# PoseTrack18 / our 17-keypoint layout (nose, head_bottom, head_top, ears, COCO body) -> the 15
FROM_17 = (16, 14, 12, 11, 13, 15, 10, 8, 6, 5, 7, 9, 1, 0, 2)
GROUPS = {"Head": (14, 12, 13), "Shoulder": (8, 9), "Elbow": (7, 10), "Wrist": (6, 11), "Hip": (2, 3),
          "Knee": (1, 4), "Ankle": (0, 5)}
PCKH_THRESHOLD = 0.5
HEAD_SIZE_FACTOR = 0.6


@dataclass
class GTFrame:
    """Ground truth of one frame: joints (n, 15, 2), annotated (n, 15) bool, head boxes (n, 4)
    x1, y1, x2, y2, ignore regions (polygons (m, 2))."""

    joints: np.ndarray
    annotated: np.ndarray
    heads: np.ndarray
    ignore: list = field(default_factory=list)


@dataclass
class PredFrame:
    """Predictions of one frame: joints (p, 15, 2) and their scores (p, 15); present (p, 15) bool
    (default: every joint)."""

    joints: np.ndarray
    scores: np.ndarray
    present: np.ndarray | None = None


def to_15(keypoints17) -> np.ndarray:
    """(..., 17, C) PoseTrack18-order keypoints -> (..., 15, C) benchmark order."""
    return np.asarray(keypoints17)[..., FROM_17, :]


def in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(n, 2) points strictly inside a polygon (m, 2) (even-odd rule, by ray casting)."""
    x, y = points[:, 0:1], points[:, 1:2]
    px, py = polygon[:, 0][None], polygon[:, 1][None]
    qx, qy = np.roll(px, -1, axis=1), np.roll(py, -1, axis=1)
    crosses = (py > y) != (qy > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = px + (y - py) * (qx - px) / (qy - py)
    return ((crosses & (x < xint)).sum(1) % 2) == 1


def _drop_ignored(joints, present, regions):
    present = present.copy()
    for poly in regions:
        poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(poly) < 3 or not len(joints):
            continue
        inside = in_polygon(joints.reshape(-1, 2), poly).reshape(present.shape)
        present &= ~inside
    return present


def _frame_detections(gt: GTFrame, pr: PredFrame, n_joints: int):
    """Scores and true-positive labels per joint type for one frame, and its annotated counts."""
    annotated = _drop_ignored(gt.joints, gt.annotated.astype(bool), gt.ignore)
    keep = annotated.any(1)
    g_joints, annotated, heads = gt.joints[keep], annotated[keep], gt.heads[keep]
    present = np.ones(pr.scores.shape, bool) if pr.present is None else pr.present.astype(bool)
    present = _drop_ignored(pr.joints, present, gt.ignore)
    pkeep = present.any(1)
    p_joints, p_scores, present = pr.joints[pkeep], pr.scores[pkeep], present[pkeep]
    n_gt, n_pr = len(g_joints), len(p_joints)
    match = np.zeros((n_pr, n_gt, n_joints), bool)
    if n_gt and n_pr:
        head = HEAD_SIZE_FACTOR * np.linalg.norm(heads[:, 2:4] - heads[:, 0:2], axis=1)        # (n_gt,)
        dist = np.linalg.norm(p_joints[:, None] - g_joints[None], axis=-1) / head[None, :, None]
        match = (dist <= PCKH_THRESHOLD) & present[:, None] & annotated[None]
    pck = match.sum(2) / np.maximum(annotated.sum(1), 1)[None]                                  # (n_pr, n_gt)
    assigned = np.full(n_pr, -1)
    if n_gt and n_pr:
        best = pck.argmax(1)
        only_best = np.zeros_like(pck)
        only_best[np.arange(n_pr), best] = pck[np.arange(n_pr), best]
        for g in range(n_gt):
            p = only_best[:, g].argmax()
            if only_best[p, g] > 0:
                assigned[p] = g
    scores = [[] for _ in range(n_joints)]
    labels = [[] for _ in range(n_joints)]
    for p in range(n_pr):
        for j in np.flatnonzero(present[p]):
            scores[j].append(float(p_scores[p, j]))
            labels[j].append(bool(assigned[p] >= 0 and match[p, assigned[p], j]))
    return scores, labels, annotated.sum(0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision-recall curve with precision made monotone (VOC, all points)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(((mrec[i] - mrec[i - 1]) * mpre[i]).sum())


def posetrack_map(gt_frames: dict, pred_frames: dict, n_joints: int = 15) -> dict:
    """PoseTrack AP per joint, per group and in total (percent).

    gt_frames: {key: GTFrame} of the labelled frames; pred_frames: {key: PredFrame} (a frame
    missing from it has no predictions). Returns {"ap": [15 floats], "groups": {name: AP},
    "total": mAP, "frames": frames evaluated, "annotated": [15 counts]}."""
    scores = [[] for _ in range(n_joints)]
    labels = [[] for _ in range(n_joints)]
    n_gt = np.zeros(n_joints, dtype=np.int64)
    frames = 0
    empty = PredFrame(np.zeros((0, n_joints, 2)), np.zeros((0, n_joints)))
    for key, gt in gt_frames.items():
        if not np.asarray(gt.annotated, bool).any():  # no annotated person: not evaluated
            continue
        frames += 1
        s, lab, count = _frame_detections(gt, pred_frames.get(key, empty), n_joints)
        for j in range(n_joints):
            scores[j] += s[j]
            labels[j] += lab[j]
        n_gt += count
    ap = []
    for j in range(n_joints):
        if n_gt[j] == 0:
            ap.append(float("nan"))
            continue
        if not scores[j]:
            ap.append(0.0)
            continue
        order = np.argsort(-np.asarray(scores[j]), kind="stable")
        tp = np.cumsum(np.asarray(labels[j])[order])
        recall = tp / n_gt[j]
        precision = tp / np.arange(1, len(order) + 1)
        ap.append(100.0 * voc_ap(recall, precision))
    ap_arr = np.asarray(ap)
    groups = {name: float(np.nanmean(ap_arr[list(idx)])) if np.isfinite(ap_arr[list(idx)]).any() else float("nan")
              for name, idx in GROUPS.items()} if n_joints == 15 else {}
    total = float(np.nanmean(ap_arr)) if np.isfinite(ap_arr).any() else float("nan")
    return {"ap": ap, "groups": groups, "total": total, "frames": frames, "annotated": n_gt.tolist()}


def format_table(result: dict) -> str:
    names = list(GROUPS) + ["Mean"]
    vals = [result["groups"][n] for n in GROUPS] + [result["total"]]
    return " | ".join(f"{n:>8}" for n in names) + "\n" + " | ".join(f"{v:8.1f}" for v in vals)
