"""Tracking through crossings (identity switches counted), One-Euro smoothing of a noisy track,
TAR-ViTPose clips at the video's ends, and the video round trip through ``vitpose predict`` (frames
in = frames out, ids stable) for a video file and a folder of frames, with propagated boxes."""
import json

import numpy as np
import pytest
import torch

import vitpose
from vitpose import cli
from vitpose.infer.clips import ClipPredictor, clip_indices
from vitpose.infer.draw import draw_poses, track_color
from vitpose.infer.job import FileBoxes, PredictJob
from vitpose.infer.inputs import BoxIndex
from vitpose.infer.pipeline import Pose
from vitpose.infer.smoothing import OneEuroFilter, TrackSmoother
from vitpose.infer.tracking import (PropagatedBoxes, Tracker, TrackingHook, box_iou, boxes_from_keypoints,
                                    id_switches, pose_oks)

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
    assert clip_indices(0, 1, 0) == [0] and clip_indices(1, 3) == [0, 1, 2]


def test_clip_predictor_batches_clips_sharing_frames():
    pred = ClipPredictor(tiny_tar(), flip=False, batch_size=3)
    g = torch.Generator().manual_seed(0)
    f = [torch.rand(3, 80, 60, generator=g) * 255 for _ in range(4)]
    box = np.array([[5.0, 8.0, 40.0, 60.0, 1.0]])
    out = pred.predict_batch([[f[0], f[0], f[1]], [f[2], f[3], f[3]]], [np.concatenate([box, box]), box])
    assert [len(p) for p in out] == [2, 1]
    kp0 = pred.run_clips([f[0], f[1]], [[0, 0, 1]], box)[0].numpy()[0]
    kp3 = pred.run_clips([f[2], f[3]], [[0, 1, 1]], box)[0].numpy()[0]
    assert np.allclose(out[0][0].keypoints, kp0, atol=1e-4) and np.allclose(out[1][0].keypoints, kp3, atol=1e-4)
    unpadded = pred.run_clips([f[0], f[1], f[2]], [[0, 1, 2]], box)[0].numpy()[0]  # a different clip
    assert not np.allclose(out[0][0].keypoints, unpadded, atol=1e-3)
    with pytest.raises(ValueError, match="T=3"):
        pred.predict_batch([[f[0]]], [box])


def synthetic_video(n=12, size=(96, 128)):
    """Two bright figures on a dark background walking through each other; gt boxes per frame."""
    H, W = size
    frames, boxes = [], []
    for t in range(n):
        img = np.full((H, W, 3), 20, dtype=np.uint8)
        fb = []
        for g, (x0, vx, color) in enumerate([(10, 7, (230, 80, 80)), (88, -7, (80, 230, 80))]):
            x, y = x0 + vx * t, 20
            img[y:y + 60, max(x, 0):max(x + 30, 0)] = color
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


def check_tracks(records, gt_boxes):
    """One record per frame in order; each person keeps one id, the two ids differ."""
    assert [r["frame"] for r in records] == list(range(len(gt_boxes)))
    ids_by_gt = {}
    for r, gt in zip(records, gt_boxes):
        assert len(r["poses"]) == len(gt)
        for p in r["poses"]:
            g = int(np.argmax(box_iou(np.array([p["bbox"]]), np.array(gt))[0]))
            ids_by_gt.setdefault(g, set()).add(p["track_id"])
            assert len(p["keypoints"]) == 17 * 3
    assert all(len(v) == 1 for v in ids_by_gt.values()) and len(ids_by_gt) == 2
    assert len(set.union(*ids_by_gt.values())) == 2


def test_predict_video_round_trip_with_tar(tmp_path):
    pytest.importorskip("cv2")
    frames, gt = synthetic_video()
    write_video(tmp_path / "walk.mp4", frames)
    (tmp_path / "dets.json").write_text(json.dumps({f"walk.mp4:{t}": b for t, b in enumerate(gt)}))
    ckpt = tmp_path / "tar.safetensors"
    vitpose.save_model(tiny_tar(), ckpt)
    out = tmp_path / "out"
    status = cli.main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "walk.mp4"), "--boxes",
                       str(tmp_path / "dets.json"), "--out", str(out), "--quiet", "--batch-size", "5",
                       "--track-metric", "iou", "--smooth"])
    assert status == 0
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    check_tracks(records, gt)
    assert read_count(out / "walk_pose.mp4") == len(frames)
    coco = json.loads((out / "keypoints.json").read_text())
    assert len(coco) == 2 * len(frames) and all("track_id" in r for r in coco)


class PerfectPredictor:
    """Knows where everyone is: the stick figure of the person whose box is nearest to each box
    (the job's tracking logic without a model's mistakes). Takes clips of 3 frames, like a
    TAR-ViTPose with T = 3, and checks that each clip's centre is the frame asked for."""

    clip_frames, batch_size = 3, 4
    keypoints = vitpose.data.keypoints.keypoint_set("coco")

    def __init__(self, gt, frames):
        self.gt, self.frames, self.calls = gt, [torch.from_numpy(f).permute(2, 0, 1) for f in frames], []

    def frame_of(self, image):
        return next(i for i, f in enumerate(self.frames) if torch.equal(f, image))

    def predict_batch(self, clips, boxes, errors="raise"):
        out, centres = [], []
        for clip, bxs in zip(clips, boxes):
            t = self.frame_of(clip[1])
            centres.append(t)
            assert [self.frame_of(c) for c in clip] == clip_indices(t, 3, len(self.frames) - 1)
            poses = []
            for b in bxs:
                g = np.array(self.gt[t])
                near = np.argmin(np.abs(g[:, :2] + g[:, 2:4] / 2 - (b[:2] + b[2:4] / 2)).sum(1))
                x, y, w, h = g[near, :4]
                kp = (FIGURE * (h / 100) + [x + w / 2, y + h]).astype(np.float32)
                poses.append(Pose(kp, np.full(17, 0.9, dtype=np.float32), b[:4].copy(), float(b[4])))
            out.append(poses)
        self.calls.append(centres)
        return out


def test_folder_of_frames_with_propagated_boxes(tmp_path):
    from PIL import Image
    frames, gt = synthetic_video(n=7)
    folder = tmp_path / "seq"
    folder.mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{t:06d}.png")
    (tmp_path / "dets.json").write_text(json.dumps({f"seq:{t}": b for t, b in enumerate(gt)}))
    asked = []

    class Spy(FileBoxes):
        def __call__(self, items):
            asked.extend(it.frame for it in items)
            return super().__call__(items)
    hook = TrackingHook()
    predictor = PerfectPredictor(gt, frames)
    job = PredictJob(predictor, str(tmp_path / "out"), boxes=PropagatedBoxes(Spy(BoxIndex(tmp_path / "dets.json")),
                     hook, every=3), hooks=[hook], group=1, progress=False, log=lambda m: None)
    assert job.run([("video", str(folder))]) == 0
    records = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    check_tracks(records, gt)
    assert asked == [0, 3, 6] and predictor.calls == [[t] for t in range(7)]
    # every frame's boxes from the file: groups of 4 frames, clips across the group boundaries
    hook, predictor = TrackingHook(), PerfectPredictor(gt, frames)
    job = PredictJob(predictor, str(tmp_path / "out2"), boxes=FileBoxes(BoxIndex(tmp_path / "dets.json")),
                     hooks=[hook], group=4, progress=False, log=lambda m: None)
    assert job.run([("video", str(folder))]) == 0
    check_tracks([json.loads(x) for x in (tmp_path / "out2" / "predictions.jsonl").read_text().splitlines()], gt)
    assert predictor.calls == [[0, 1, 2, 3], [4, 5, 6]]


def test_draw_poses_colours_tracked_poses_by_id():
    img = np.zeros((60, 80, 3), dtype=np.uint8)
    pose = Pose(FIGURE.astype(np.float32) * 0.3 + [40, 50], np.ones(17, dtype=np.float32),
                np.array([25.0, 20.0, 30.0, 32.0]), track_id=3)
    out = draw_poses(img, [pose])
    assert out.shape == img.shape and not np.array_equal(out, img)
    colors = {tuple(c) for c in out.reshape(-1, 3)}
    assert track_color(3) in colors and track_color(3) != track_color(4)
