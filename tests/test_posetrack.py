"""PoseTrack: the keypoint mAP against a hand-computed example, and the 2017 / 2018 JSON formats."""
import json
import math

import numpy as np
import pytest

from vitpose.data.posetrack import Frame, Person, Video, gt_frames, load_posetrack, pred_frames, save_posetrack18
from vitpose.evaluation.posetrack import GTFrame, PredFrame, in_polygon, posetrack_map, voc_ap


def joints(points: dict, n=15):
    """{joint id: (x, y)} -> (n, 2) array and the (n,) mask of the given ones."""
    arr, mask = np.zeros((n, 2)), np.zeros(n, bool)
    for j, xy in points.items():
        arr[j], mask[j] = xy, True
    return arr, mask


def pred(points: dict, scores: dict):
    arr, mask = joints(points)
    sc = np.zeros(15)
    for j, s in scores.items():
        sc[j] = s
    return arr, sc, mask


def frame_of_preds(*preds):
    return PredFrame(np.stack([p[0] for p in preds]), np.stack([p[1] for p in preds]),
                     np.stack([p[2] for p in preds]))


def hand_example():
    # Frame 1. Person A: head box 30 x 40 (diagonal 50, head size 30, radius 15), joints 0, 1, 2.
    # Person B: head box 60 x 80 (diagonal 100, head size 60, radius 30), joints 0, 1.
    a, am = joints({0: (10, 10), 1: (20, 20), 2: (30, 30)})
    b, bm = joints({0: (100, 100), 1: (110, 110)})
    f1 = GTFrame(np.stack([a, b]), np.stack([am, bm]), np.array([[0, 0, 30, 40], [0, 0, 60, 80]], float))
    # P1 ~ A: joint 0 off by 2 (right), joint 1 off by 20 > 15 (wrong), joint 2 exact: PCKh 2/3.
    # P2 ~ B: joint 0 off by 25, joint 1 off by exactly 30 (<= 30: right): PCKh 1.
    # P3: a duplicate of A's joint 0 (PCKh 1/3 < P1's 2/3: left unassigned, a false positive).
    p1 = pred({0: (12, 10), 1: (20, 40), 2: (30, 30)}, {0: 0.9, 1: 0.8, 2: 0.7})
    p2 = pred({0: (100, 125), 1: (140, 110)}, {0: 0.6, 1: 0.95})
    p3 = pred({0: (11, 11)}, {0: 0.5})
    # Frame 2. Person C: joint 0, head size 30. Person D: joint 1 inside the ignore region (dropped,
    # not counted). P4 right on C; P5 inside the ignore region with a high score (dropped).
    c, cm = joints({0: (50, 50)})
    d, dm = joints({1: (210, 210)})
    square = np.array([[190, 190], [260, 190], [260, 260], [190, 260]], float)
    f2 = GTFrame(np.stack([c, d]), np.stack([cm, dm]), np.array([[0, 0, 30, 40], [0, 0, 30, 40]], float), [square])
    p4 = pred({0: (52, 50)}, {0: 0.4})
    p5 = pred({0: (205, 205), 1: (215, 215)}, {0: 0.99, 1: 0.99})
    # Frame 3: nobody annotated: not evaluated (its prediction is ignored).
    f3 = GTFrame(np.zeros((0, 15, 2)), np.zeros((0, 15), bool), np.zeros((0, 4)))
    p6 = pred({0: (1, 1)}, {0: 1.0})
    gt = {1: f1, 2: f2, 3: f3}
    prs = {1: frame_of_preds(p1, p2, p3), 2: frame_of_preds(p4, p5), 3: frame_of_preds(p6)}
    return gt, prs


def test_posetrack_map_by_hand():
    gt, prs = hand_example()
    r = posetrack_map(gt, prs)
    # joint 0 (right ankle): detections by score 0.9 TP (P1-A), 0.6 TP (P2-B), 0.5 FP (P3), 0.4 TP
    # (P4-C); 3 annotated. recall 1/3, 2/3, 2/3, 1; precision 1, 1, 2/3, 3/4; monotone precision
    # 1, 1, 3/4, 3/4 -> AP = 1/3 * 1 + 1/3 * 1 + 1/3 * 3/4 = 11/12.
    # joint 1 (right knee): 0.95 TP (P2-B), 0.8 FP (P1's, 20 px from A's); 2 annotated -> 1/2.
    # joint 2 (right hip): 0.7 TP; 1 annotated -> 1. Other joints: none annotated -> not counted.
    assert r["frames"] == 2 and r["annotated"][:3] == [3, 2, 1] and sum(r["annotated"]) == 6
    assert r["ap"][0] == pytest.approx(100 * 11 / 12)
    assert r["ap"][1] == pytest.approx(50.0) and r["ap"][2] == pytest.approx(100.0)
    assert all(math.isnan(v) for v in r["ap"][3:])
    assert r["total"] == pytest.approx((100 * 11 / 12 + 50 + 100) / 3)
    assert r["groups"]["Ankle"] == pytest.approx(100 * 11 / 12) and r["groups"]["Knee"] == pytest.approx(50)
    assert math.isnan(r["groups"]["Head"])
    # without the ignore region, P5's two confident joints are false positives (and D counts)
    gt[2].ignore = []
    r = posetrack_map(gt, prs)
    assert r["annotated"][:2] == [3, 3] and r["ap"][0] < 100 * 11 / 12


def test_voc_ap_and_polygons():
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    assert voc_ap(np.array([0.5, 0.5]), np.array([1.0, 0.5])) == pytest.approx(0.5)
    tri = np.array([[0, 0], [10, 0], [0, 10]], float)
    assert in_polygon(np.array([[1, 1], [6, 6], [-1, 2]], float), tri).tolist() == [True, False, False]


PT18 = {
    "images": [
        {"file_name": "images/val/000001_mpii/000000.jpg", "id": 10000010000, "frame_id": 10000010000,
         "vid_id": "000001", "nframes": 2, "is_labeled": True,
         "ignore_regions_x": [[190, 260, 260, 190]], "ignore_regions_y": [[190, 190, 260, 260]]},
        {"file_name": "images/val/000001_mpii/000001.jpg", "id": 10000010001, "frame_id": 10000010001,
         "vid_id": "000001", "nframes": 2, "is_labeled": False},
    ],
    "annotations": [
        {"image_id": 10000010000, "id": 1, "track_id": 4, "category_id": 1, "bbox": [5, 5, 50, 100],
         "bbox_head": [10, 5, 30, 40],
         "keypoints": [20, 10, 1, 21, 30, 1, 22, 6, 1, 0, 0, 0, 0, 0, 0] + [30, 50, 1] * 12},
    ],
}
PT17 = {"annolist": [
    {"image": [{"name": "images/bonn/000001_mpii/00000001.jpg"}], "imgnum": [1], "is_labeled": [1],
     "ignore_regions": [{"point": [{"x": [190], "y": [190]}, {"x": [260], "y": [190]}, {"x": [260], "y": [260]},
                                   {"x": [190], "y": [260]}]}],
     "annorect": [{"x1": [10], "y1": [5], "x2": [40], "y2": [45], "track_id": [4], "annopoints": [{"point": [
         {"id": [13], "x": [20], "y": [10], "is_visible": [1]}, {"id": [12], "x": [21], "y": [30], "is_visible": [1]},
         {"id": [14], "x": [22], "y": [6], "is_visible": [1]}] + [
         {"id": [j], "x": [30], "y": [50], "is_visible": [1]} for j in range(12)]}]}]},
    {"image": [{"name": "images/bonn/000001_mpii/00000002.jpg"}], "imgnum": [2], "is_labeled": [0], "annorect": []},
]}


def test_posetrack17_and_18_load_alike(tmp_path):
    (tmp_path / "a18.json").write_text(json.dumps(PT18))
    (tmp_path / "b17.json").write_text(json.dumps(PT17))
    v18, = load_posetrack(tmp_path / "a18.json")
    v17, = load_posetrack(tmp_path / "b17.json")
    for v in (v18, v17):
        assert len(v.frames) == 2 and [f.labeled for f in v.frames] == [True, False]
        p, = v.frames[0].people
        assert p.track_id == 4 and p.head.tolist() == [10, 5, 40, 45]
        assert p.annotated.tolist() == [True] * 3 + [False] * 2 + [True] * 12
        assert len(v.frames[0].ignore) == 1 and v.frames[0].ignore[0].shape == (4, 2)
    assert np.array_equal(v18.frames[0].people[0].keypoints, v17.frames[0].people[0].keypoints)
    # 2018 round trip, and the ground truth scored as its own prediction: 100 on every joint
    save_posetrack18([v18], tmp_path / "again.json")
    again, = load_posetrack(tmp_path / "again.json")
    assert np.array_equal(again.frames[0].people[0].keypoints, v18.frames[0].people[0].keypoints)
    gts = gt_frames([v18])
    assert list(gts) == [("000001", 0)]
    preds = pred_frames({("000001", 0): [(p.keypoints[:, :2], np.ones(17)) for p in v18.frames[0].people]})
    r = posetrack_map(gts, preds)
    assert r["total"] == pytest.approx(100.0) and r["frames"] == 1
    # predictions written as results (scores) read back the same
    pr_video = Video("000001", [Frame(f.file_name, f.index, f.labeled, [Person(
        np.concatenate([p.keypoints[:, :2], np.full((17, 1), 0.7)], 1), p.track_id) for p in f.people])
        for f in v18.frames])
    save_posetrack18([pr_video], tmp_path / "pred.json", predictions=True)
    back, = load_posetrack(tmp_path / "pred.json")
    assert np.allclose(back.frames[0].people[0].keypoints[:, 2], 0.7)


def test_not_posetrack(tmp_path):
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="not PoseTrack"):
        load_posetrack(tmp_path / "x.json")
