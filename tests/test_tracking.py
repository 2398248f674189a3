"""Tracking through crossings (identity switches counted), One-Euro smoothing of a noisy track,
TAR-ViTPose clip assembly at the video's ends, and the video round trip (frames in = frames out,
ids stable) for a video file and a folder of frames."""
import json
import os

import numpy as np
import pytest
import torch

import vitpose
from vitpose.infer.clips import ClipEstimator, clip_indices
from vitpose.infer.draw import draw_tracked_poses, track_color
from vitpose.infer.inputs import BoxIndex
from vitpose.infer.smoothing import OneEuroFilter, TrackSmoother
from vitpose.infer.tracking import Tracker, box_iou, boxes_from_keypoints, id_switches, pose_oks
from vitpose.infer.videotrack import TrackedPose, VideoPoseTracker, track_video

# a 17-keypoint stick figure, 100 px tall, origin at its feet's midpoint (x right, y down)
FIGURE = np.array([[0, -92], [-3, -95], [3, -95], [-6, -93], [6, -93], [-12, -80], [12, -80],
                   [-16, -62], [16, -62], [-18, -45], [18, -45], [-8, -48], [8, -48],
                   [-9, -24], [9, -24], [-10, 0], [10, 0]], dtype=np.float64)


def crossing_scene(n_people=3, frames=60, seed=0, noise=1.5):
    """People walking across each other on nearly the same line; returns per frame the list of
    (gt id, keypoints (17, 2)), in a shuffled order."""
    rng = np.random.default_rng(seed)
    starts = np.linspace(40, 360, n_people)
    speeds = np.array([6.0, -5.0, 3.5, -7.0, 4.5])[:n_people]
    out = []
    for t in range(frames):
        people = []
        for g in range(n_people):
            feet = np.array([starts[g] + speeds[g] * t, 150 + 3 * np.sin(0.3 * t + g)])
            kp = FIGURE * (1 + 0.05 * g) + feet + rng.normal(0, noise, FIGURE.shape)
            people.append((g, kp))
        rng.shuffle(people)
        out.append(people)
    return out


def run_tracker(tracker, scene):
    gt, pred = [], []
    for t, people in enumerate(scene):
        kp = np.stack([k for _, k in people])
        sc = np.full(kp.shape[:2], 0.9)
        boxes, _ = boxes_from_keypoints(kp, sc)
        gt.append([g for g, _ in people])
        pred.append(tracker.update(t, boxes, kp, sc))
    return gt, pred


def test_identities_kept_through_crossings():
    scene = crossing_scene()
    # the people do cross: their boxes overlap heavily at some frames
    overlaps = []
    for people in scene:
        kp = np.stack([k for _, k in people])
        b, _ = boxes_from_keypoints(kp, np.ones(kp.shape[:2]))
        iou = box_iou(b, b)
        overlaps.append(iou[~np.eye(len(b), dtype=bool)].max())
    assert max(overlaps) > 0.7
    gt, pred = run_tracker(Tracker(), scene)
    assert id_switches(gt, pred) == 0
    assert len({i for p in pred for i in p}) == 3
    # without the motion model the same scene switches identities: the test can fail
    gt, pred = run_tracker(Tracker(motion=False), scene)
    assert id_switches(gt, pred) > 0


def test_tracks_end_after_max_age_and_new_people_get_new_ids():
    tracker = Tracker(max_age=2)
    kp = FIGURE[None] + [100, 150]
    sc = np.ones((1, 17))
    box, _ = boxes_from_keypoints(kp, sc)
    assert tracker.update(0, box, kp, sc) == [0]
    assert tracker.update(1, np.zeros((0, 4)), np.zeros((0, 17, 2)), np.zeros((0, 17))) == []
    assert tracker.update(3, box, kp, sc) == [0]          # unseen for 2 frames: still alive
    for t in range(4, 8):
        tracker.update(t, np.zeros((0, 4)), np.zeros((0, 17, 2)), np.zeros((0, 17)))
    assert tracker.update(8, box, kp, sc) == [1]          # gone for 5 frames: a new identity
    far = kp + [300, 0]
    assert tracker.update(9, np.concatenate([box, boxes_from_keypoints(far, sc)[0]]),
                          np.concatenate([kp, far]), np.ones((2, 17))) == [1, 2]


def test_similarities():
    a = np.array([[0, 0, 10, 10], [20, 20, 10, 10]])
    iou = box_iou(a, np.array([[5, 0, 10, 10]]))
    assert np.allclose(iou[:, 0], [50 / 150, 0])
    kp = FIGURE[None]
    sc = np.ones((1, 17))
    assert pose_oks(kp, sc, kp, sc, [1e4])[0, 0] == pytest.approx(1.0)
    # COCO's OKS by hand for one keypoint moved by d: exp(-d^2 / (2 * area * (2 sigma)^2))
    moved = kp.copy()
    moved[0, 0, 0] += 5.0
    only0 = np.zeros((1, 17))
    only0[0, 0] = 1.0
    assert pose_oks(kp, only0, moved, only0, [1e4], sigmas=[0.1] * 17)[0, 0] == pytest.approx(
        np.exp(-25 / (2 * 1e4 * 0.04)))
    assert pose_oks(kp, np.zeros((1, 17)), kp, sc, [1e4])[0, 0] == 0.0  # nothing to compare


def test_id_switch_count():
    assert id_switches([[0, 1], [0, 1], [1, 0]], [[5, 6], [5, 6], [6, 5]]) == 0
    assert id_switches([[0, 1], [0, 1], [0, 1]], [[5, 6], [6, 5], [6, 5]]) == 2


def test_one_euro_reduces_jitter():
    rng = np.random.default_rng(1)
    fps, n = 30.0, 120
    t = np.arange(n) / fps
    walk = np.stack([200 + 60 * np.sin(2 * np.pi * 0.4 * t), 150 + 30 * np.cos(2 * np.pi * 0.3 * t)], -1)

    def jitter(x):  # frame-to-frame acceleration: what a viewer sees as shaking
        return np.abs(np.diff(x, n=2, axis=0)).mean()

    for path, max_jitter, max_error in ((walk, 0.6, 0.9), (np.full_like(walk, 100.0), 0.3, 0.6)):
        truth = path[:, None] + FIGURE[None]                                          # (n, 17, 2)
        noisy = truth + rng.normal(0, 3.0, truth.shape)
        smoother = TrackSmoother(fps=fps)
        smooth = np.stack([smoother(7, i, noisy[i]) for i in range(n)])
        rmse = [np.sqrt(((x[10:] - truth[10:]) ** 2).mean()) for x in (smooth, noisy)]
        assert jitter(smooth) < max_jitter * jitter(noisy)
        assert rmse[0] < max_error * rmse[1]
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0)


# ------------------------------------------------------------------------------------------------
# Clips and the video round trip (a tiny TAR-ViTPose with random weights)
# ------------------------------------------------------------------------------------------------
TINY_TAR = dict(embed_dim=32, depth=1, num_heads=2, deconv_channels=8, img_size=(64, 48), frames=3,
                jta_layers=1, input_size=(64, 48))


def tiny_tar():
    torch.manual_seed(0)
    return vitpose.build_model("tar-vitpose-s", **TINY_TAR).eval()


def test_clip_indices_pad_with_the_end_frames():
    assert clip_indices(0, 5, 9) == [0, 0, 0, 1, 2]
    assert clip_indices(1, 5, 9) == [0, 0, 1, 2, 3]
    assert clip_indices(9, 5, 9) == [7, 8, 9, 9, 9]
    assert clip_indices(4, 4, 9) == [2, 3, 4, 5]   # even T: the centre slot is T // 2
    assert clip_indices(0, 1, 0) == [0]


def test_clip_estimator_uses_the_padded_clip():
    est = ClipEstimator(tiny_tar(), flip=False, batch_size=4)
    g = torch.Generator().manual_seed(0)
    frames = {i: (torch.rand(3, 80, 60, generator=g) * 255) for i in range(4)}
    box = np.array([[5.0, 8.0, 40.0, 60.0, 1.0]])
    kp, sc = est(frames, 3, [0, 3], np.concatenate([box, box]))
    # frame 0's clip is (0, 0, 1), frame 3's (2, 3, 3): the same as running those clips directly
    kp0, _ = est.run_clips([frames[0], frames[1]], [[0, 0, 1]], box)
    kp3, _ = est.run_clips([frames[2], frames[3]], [[0, 1, 1]], box)
    assert np.allclose(kp[0], kp0.numpy(), atol=1e-5) and np.allclose(kp[1], kp3.numpy(), atol=1e-5)
    other, _ = est.run_clips([frames[0], frames[1], frames[2]], [[0, 1, 2]], box)  # unpadded: differs
    assert not np.allclose(kp[0], other.numpy(), atol=1e-3)


def synthetic_video(n=12, size=(96, 128)):
    """Two bright figures on a dark background moving towards each other; gt boxes per frame."""
    H, W = size
    frames, boxes = [], []
    for t in range(n):
        img = np.full((H, W, 3), 20, dtype=np.uint8)
        fb = []
        for g, (x0, vx, color) in enumerate([(10, 4, (230, 80, 80)), (80, -4, (80, 230, 80))]):
            x, y = x0 + vx * t, 20
            img[y:y + 60, x:x + 30] = color
            fb.append([float(x), float(y), 30.0, 60.0, 0.9])
        frames.append(img)
        boxes.append(fb)
    return frames, boxes


def write_video(path, frames, fps=10):
    from vitpose.infer.video import VideoWriter
    w = VideoWriter(str(path), fps)
    for f in frames:
        w.write(f)
    w.close()


def read_count(path):
    import cv2
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def check_tracks(doc, gt_boxes):
    assert [f["frame"] for f in doc["frames"]] == list(range(len(gt_boxes)))
    ids_by_gt = {}
    for f, gt in zip(doc["frames"], gt_boxes):
        assert len(f["poses"]) == len(gt)
        for p in f["poses"]:
            g = int(np.argmax(box_iou(np.array([p["bbox"]]), np.array(gt))[0]))
            ids_by_gt.setdefault(g, set()).add(p["track_id"])
            assert len(p["keypoints"]) == 17 * 3
    assert all(len(v) == 1 for v in ids_by_gt.values()) and len(ids_by_gt) == 2  # stable, distinct
    return ids_by_gt


def test_video_round_trip(tmp_path):
    pytest.importorskip("cv2")
    frames, gt = synthetic_video()
    video = tmp_path / "walk.mp4"
    write_video(video, frames)
    boxes_file = tmp_path / "dets.json"
    boxes_file.write_text(json.dumps({f"walk.mp4:{t}": b for t, b in enumerate(gt)}))
    summary = track_video(tiny_tar(), video, tmp_path / "out", boxes=BoxIndex(boxes_file), smooth=True,
                          tracker=Tracker(metric="iou"), progress=False,
                          estimator_args=dict(batch_size=5, flip=True))
    assert summary["frames"] == len(frames) and summary["tracks"] == 2
    doc = json.loads(open(summary["json"]).read())
    check_tracks(doc, gt)
    assert read_count(summary["video"]) == len(frames)


class PerfectEstimator:
    """Knows where everyone is: returns the stick figure of the person whose box is nearest to the
    requested one (the loop's logic without a model's mistakes). Looks one frame ahead, like a
    TAR-ViTPose with T = 3."""

    half, batch_size = 1, 4
    keypoints = vitpose.data.keypoints.keypoint_set("coco")

    def __init__(self, gt):
        self.gt, self.calls = gt, []

    def __call__(self, buffer, last, frame_ids, boxes):
        self.calls.append(list(frame_ids))
        kps = []
        for t, b in zip(frame_ids, boxes):
            assert t + self.half in buffer or t == last
            g = np.array(self.gt[t])
            near = np.argmin(np.abs(g[:, :2] + g[:, 2:4] / 2 - (b[:2] + b[2:4] / 2)).sum(1))
            x, y, w, h = g[near, :4]
            kps.append(FIGURE * (h / 100) + [x + w / 2, y + h])
        return np.array(kps).reshape(-1, 17, 2), np.full((len(kps), 17), 0.9)


def test_folder_of_frames_with_propagated_boxes(tmp_path):
    from PIL import Image
    from vitpose.infer.videotrack import open_frames
    frames, gt = synthetic_video(n=7)
    folder = tmp_path / "seq"
    folder.mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{t:06d}.png")
    boxes_file = tmp_path / "dets.json"
    boxes_file.write_text(json.dumps({f"{t:06d}.png": b for t, b in enumerate(gt)}))
    index, asked = BoxIndex(boxes_file), []

    def detector(t, rgb):
        asked.append(t)
        return index.lookup(str(folder / f"{t:06d}.png"))
    estimator = PerfectEstimator(gt)
    runner = VideoPoseTracker(estimator, boxes=detector, detect_every=3)
    out = list(runner.run(open_frames(folder)[0]))
    assert [t for t, _, _ in out] == list(range(7)) and asked == [0, 3, 6]
    assert [sorted(set(c)) for c in estimator.calls] == [[t] for t in range(7)]  # one frame per batch
    check_tracks({"frames": [{"frame": t, "poses": [p.to_json() for p in poses]} for t, _, poses in out]}, gt)
    # with a box for every frame from the source, batches span frames
    estimator = PerfectEstimator(gt)
    out = list(VideoPoseTracker(estimator, boxes=lambda t, rgb: gt[t]).run(open_frames(folder)[0]))
    assert len(out) == 7 and max(len(set(c)) for c in estimator.calls) == 2


def test_draw_tracked_poses_colours_by_id():
    img = np.zeros((60, 80, 3), dtype=np.uint8)
    pose = vitpose.Pose(FIGURE.astype(np.float32) * 0.3 + [40, 50], np.ones(17, dtype=np.float32),
                        np.array([25.0, 20.0, 30.0, 32.0]))
    out = draw_tracked_poses(img, [TrackedPose(3, pose)])
    assert out.shape == img.shape and not np.array_equal(out, img)
    colors = {tuple(c) for c in out.reshape(-1, 3)}
    assert track_color(3) in colors and track_color(3) != track_color(4)
