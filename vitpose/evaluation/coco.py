"""COCO keypoint AP: top-down predictions on detector boxes, mmpose's rescoring and OKS-NMS, then
pycocotools' COCOeval. As in the ViTPose evaluation (mmpose 0.x TopDownCocoDataset):

- instance score = box score x mean of the keypoint scores above 0.2 (0 when none is);
- per image, OKS-NMS at 0.9 with the padded box area as the instance area;
- the results JSON in COCO format, then COCOeval(iouType="keypoints").
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections import defaultdict

import numpy as np

from ..data.keypoints import COCO_SIGMAS

STAT_NAMES = ("AP", "AP .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)")


def rescore(keypoint_scores: np.ndarray, box_scores: np.ndarray, vis_thr: float = 0.2) -> np.ndarray:
    """(n, K), (n,) -> (n,): box score x mean keypoint score over keypoints above vis_thr."""
    s = np.asarray(keypoint_scores, dtype=np.float64)
    valid = s > vis_thr
    n = valid.sum(1)
    mean = np.where(n > 0, (s * valid).sum(1) / np.maximum(n, 1), 0.0)
    return np.asarray(box_scores, dtype=np.float64) * mean


def oks_iou(ref: np.ndarray, others: np.ndarray, ref_area: float, areas: np.ndarray, sigmas) -> np.ndarray:
    """OKS between one pose (K, 2) and n poses (n, K, 2), mmpose's oks_iou (mean of exp(-e))."""
    var = (2 * np.asarray(sigmas)) ** 2
    d2 = ((others - ref[None]) ** 2).sum(-1)
    e = d2 / var[None] / ((ref_area + areas)[:, None] / 2 + np.spacing(1)) / 2
    return np.exp(-e).mean(1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float = 0.9,
            sigmas=COCO_SIGMAS) -> list[int]:
    """Greedy NMS by OKS: keep the best, drop the rest with OKS > thr to it, repeat. Kept indices."""
    order = list(np.argsort(np.asarray(scores))[::-1])  # mmpose's order, ties included
    keep = []
    while order:
        i, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(i))
        if rest.size == 0:
            break
        ovr = oks_iou(keypoints[i], keypoints[rest], areas[i], areas[rest], sigmas)
        order = list(rest[ovr <= thr])
    return keep


def postprocess(image_id, poses, *, vis_thr=0.2, nms_thr=0.9, sigmas=COCO_SIGMAS) -> list[dict]:
    """Poses of one image -> COCO result dicts after rescoring and OKS-NMS."""
    if not poses:
        return []
    kps = np.stack([p.keypoints for p in poses])
    scores = rescore(np.stack([p.scores for p in poses]), np.array([p.box_score for p in poses]), vis_thr)
    areas = np.array([p.area for p in poses])
    keep = oks_nms(kps, scores, areas, nms_thr, sigmas) if nms_thr is not None and kps.shape[1] == len(sigmas) \
        else range(len(poses))
    out = []
    for i in keep:
        r = poses[i].to_coco(image_id)
        r["score"] = float(scores[i])
        out.append(r)
    return out


def coco_keypoint_eval(ann, results, *, quiet: bool = True, sigmas=None) -> dict:
    """pycocotools keypoint AP. ann: annotation path or COCO; results: list of dicts or a JSON path.
    sigmas: the OKS sigmas of a keypoint set other than COCO's 17 (pycocotools' default)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    sink = io.StringIO() if quiet else sys.stdout
    with contextlib.redirect_stdout(sink):
        gt = ann if isinstance(ann, COCO) else COCO(os.fspath(ann))
        if isinstance(results, (str, os.PathLike)):
            with open(results) as f:
                results = json.load(f)
        if not results:
            return {name: 0.0 for name in STAT_NAMES}
        dt = gt.loadRes(list(results))
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.params.useSegm = None
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def load_detections(dets_file, *, det_thr: float = 0.0, category_id: int = 1) -> dict:
    """COCO detection results JSON -> {image_id: (n, 5) xywh + score}, people above det_thr."""
    with open(dets_file) as f:
        dets = json.load(f)
    if isinstance(dets, dict) and "annotations" in dets:
        dets = dets["annotations"]
    if not isinstance(dets, list):
        raise ValueError(f"{dets_file}: expected a list of COCO detections (image_id, bbox, score)")
    per_image = defaultdict(list)
    for d in dets:
        if d.get("category_id", category_id) != category_id or d.get("score", 1.0) < det_thr:
            continue
        per_image[d["image_id"]].append([*d["bbox"][:4], d.get("score", 1.0)])
    return {k: np.asarray(v, dtype=np.float64) for k, v in per_image.items()}


def predict_results(predictor, items, *, total=None, progress: bool = False, on_error=None,
                    sigmas=COCO_SIGMAS) -> tuple[list[dict], int]:
    """items (image_id, image, boxes) through a TopDownPredictor -> (COCO results after rescoring
    and OKS-NMS, number of failed images). A failed image goes to ``on_error(key, exc)``."""
    results, failed = [], 0
    report = on_error or (lambda key, e: print(f"image {key}: {e}", file=sys.stderr))
    stream = predictor.iter_predict(items, errors="yield")
    if progress:
        from tqdm import tqdm
        stream = tqdm(stream, total=total, desc="evaluate", unit="img")
    for image_id, poses in stream:
        if isinstance(poses, Exception):
            failed += 1
            report(image_id, poses)
            continue
        results += postprocess(image_id, poses, sigmas=sigmas)
    return results, failed


def evaluate(model, ann_file, dets_file, image_dir, *, out_file=None, det_thr: float = 0.0,
             batch_size: int = 32, flip: bool = True, device=None, progress: bool = True,
             max_images: int | None = None, on_error=None) -> dict:
    """Top-down COCO keypoint evaluation of a model (or checkpoint path) on detector boxes.

    Images that fail (missing, unreadable) are reported through ``on_error(key, exc)`` (default:
    printed) and the rest go on. Returns the COCOeval stats plus ``num_images``/``num_failed``."""
    from pycocotools.coco import COCO
    from ..infer.pipeline import TopDownPredictor

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.fspath(ann_file))
    dets = load_detections(dets_file, det_thr=det_thr)
    image_ids = [i for i in sorted(gt.getImgIds()) if i in dets]
    if max_images:
        image_ids = image_ids[:max_images]
    predictor = TopDownPredictor(model, device=device, flip=flip, batch_size=batch_size)
    items = ((i, os.path.join(image_dir, gt.imgs[i]["file_name"]), dets[i]) for i in image_ids)
    results, failed = predict_results(predictor, items, total=len(image_ids), progress=progress,
                                      on_error=on_error)
    if out_file:
        with open(out_file, "w") as f:
            json.dump(results, f)
    stats = coco_keypoint_eval(gt, results)
    stats.update(num_images=len(image_ids), num_failed=failed, num_results=len(results))
    return stats
