"""COCO keypoint evaluation: ground truth as predictions gives AP 1.0; noise lowers it, monotonically;
mmpose's rescoring and OKS-NMS."""
import json

import numpy as np
import pytest
import torch

from vitpose.evaluation.coco import coco_keypoint_eval, oks_nms, postprocess, rescore
from vitpose.data.keypoints import COCO_SKELETON
from vitpose.infer.pipeline import Pose, box_to_center_scale


def synthetic_coco(num_images=6, per_image=3, size=(480, 640), seed=0):
    """A COCO keypoint dataset of random people (all keypoints visible inside their boxes)."""
    rng = np.random.default_rng(seed)
    H, W = size
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W})
        for _ in range(per_image):
            w, h = rng.uniform(0.15, 0.3) * W, rng.uniform(0.3, 0.6) * H
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            kp = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], 1)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "bbox": [x, y, w, h], "area": w * h, "num_keypoints": 17,
                         "keypoints": kp.reshape(-1).tolist()})
    cats = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": [str(k) for k in range(17)],
             "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}]
    return {"images": images, "annotations": anns, "categories": cats}


def poses_from_gt(gt, noise_px=0.0, seed=1):
    """Ground truth as predictions, keypoints moved by noise_px times one fixed random direction."""
    rng = np.random.default_rng(seed)
    per_image = {}
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(17, 3)[:, :2]
        kp = kp + noise_px * rng.standard_normal(kp.shape)
        c, s = box_to_center_scale(torch.tensor([a["bbox"]], dtype=torch.float64), (192, 256))
        per_image.setdefault(a["image_id"], []).append(
            Pose(kp, np.full(17, 0.9), np.asarray(a["bbox"]), 1.0, "coco", c[0].numpy(), s[0].numpy()))
    return per_image


def ap_of(gt_path, gt, noise_px):
    results = []
    for image_id, poses in poses_from_gt(gt, noise_px).items():
        results += postprocess(image_id, poses)
    return coco_keypoint_eval(gt_path, results)["AP"]


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    data = synthetic_coco()
    path = tmp_path_factory.mktemp("coco") / "ann.json"
    path.write_text(json.dumps(data))
    return str(path), data


def test_ground_truth_as_predictions_scores_ap_1(gt):
    assert ap_of(*gt, 0.0) == pytest.approx(1.0)


def test_noise_lowers_ap_monotonically(gt):
    aps = [ap_of(*gt, noise) for noise in (0.0, 4.0, 8.0, 16.0, 32.0)]
    assert all(a >= b for a, b in zip(aps, aps[1:])), aps
    assert aps[-1] < aps[2] < aps[0], aps


def test_rescoring_and_oks_nms():
    s = np.array([[0.9, 0.1, 0.5], [0.1, 0.1, 0.1]])
    assert np.allclose(rescore(s, np.array([0.5, 1.0])), [0.5 * 0.7, 0.0])
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, (17, 2))
    kps = np.stack([a, a + 0.5, a + 60])  # 0 and 1 are one person
    keep = oks_nms(kps, np.array([0.8, 0.9, 0.7]), np.full(3, 100.0 * 100), thr=0.9)
    assert keep == [1, 2]


def mmpose_style_nms(kpts, scores, areas, thr, sigmas):
    """mmpose 0.x oks_nms written as a plain loop over flattened (x, y, v) rows."""
    var = (np.asarray(sigmas) * 2) ** 2
    order = scores.argsort()[::-1]
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(int(i))
        ious = []
        for j in order[1:]:
            dx, dy = kpts[j, 0::3] - kpts[i, 0::3], kpts[j, 1::3] - kpts[i, 1::3]
            e = (dx ** 2 + dy ** 2) / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            ious.append(np.sum(np.exp(-e)) / len(e))
        order = order[np.where(np.asarray(ious) <= thr)[0] + 1]
    return keep


@pytest.mark.parametrize("thr", [0.5, 0.9])
def test_oks_nms_matches_mmpose_semantics(thr):
    from vitpose.data.keypoints import COCO_SIGMAS
    rng = np.random.default_rng(thr == 0.9)
    people = rng.uniform(0, 400, (5, 17, 2))
    kps = people[rng.integers(0, 5, 40)] + rng.normal(0, 1, (40, 17, 2)) * rng.uniform(0.5, 8, (40, 1, 1))
    scores, areas = rng.uniform(0.1, 1, 40), rng.uniform(50, 150, 40) ** 2
    flat = np.concatenate([kps, rng.uniform(0, 1, (40, 17, 1))], -1).reshape(40, -1)
    want = mmpose_style_nms(flat, scores, areas, thr, COCO_SIGMAS)
    assert 5 <= len(want) < 40
    assert oks_nms(kps, scores, areas, thr) == want


def test_postprocess_rescores_and_suppresses_duplicates():
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 100, (17, 2))
    scores = np.linspace(0.05, 0.95, 17)
    c, s = np.array([50.0, 50]), np.array([75.0, 100])
    a = Pose(kp, scores, np.array([10.0, 0, 60, 100]), 0.8, "coco", c, s)
    b = Pose(kp + 0.3, scores * 0.5, np.array([11.0, 0, 60, 100]), 0.9, "coco", c, s)
    far = Pose(kp + 300, scores, np.array([310.0, 300, 60, 100]), 0.5, "coco", c, s)
    out = postprocess(7, [b, a, far])
    assert len(out) == 2 and out[0]["bbox"] == [10.0, 0, 60, 100]
    assert out[0]["score"] == pytest.approx(0.8 * scores[scores > 0.2].mean())
    assert out[1]["score"] == pytest.approx(0.5 * scores[scores > 0.2].mean())
    assert all(r["image_id"] == 7 and len(r["keypoints"]) == 51 for r in out)
