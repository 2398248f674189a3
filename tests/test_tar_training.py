"""TAR-ViTPose training on synthetic PoseTrack videos: ``vitpose synth --video`` (format,
determinism), clip samples and their augmentation (one warp for all frames), and a tiny model
trained through the trainer with the PoseTrack mAP rising, then ``vitpose predict`` on a synthetic
clip writing tracked JSON and video."""
import json
import os

import numpy as np
import pytest
import torch

import vitpose
from vitpose import cli
from vitpose.data.posetrack import PoseTrackClips, collate_clips, load_posetrack


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthvid")
    assert cli.main(["synth", str(out), "--video", "--videos", "8", "--val-videos", "2", "--frames", "12",
                     "--quiet"]) == 0
    return str(out)


def test_synth_video_is_posetrack_and_deterministic(videos, tmp_path):
    train = load_posetrack(os.path.join(videos, "annotations", "train"))
    assert len(train) == 8 and all(len(v.frames) == 12 for v in train)
    people = [p for v in train for f in v.frames for p in f.people]
    assert people and all(p.head is not None and p.bbox is not None for p in people)
    assert not any(p.annotated[3:5].any() for p in people)       # ears: never annotated, as PoseTrack
    for v in train:                                               # one id per person, kept through the video
        ids = [sorted(p.track_id for p in f.people) for f in v.frames]
        assert len({i for f in ids for i in f}) <= 3
    f0 = train[0].frames[0]
    assert os.path.exists(os.path.join(videos, f0.file_name))
    from vitpose.data.synth_video import write_video_split
    write_video_split(str(tmp_path), "val", 1, 12, seed=0)
    a = json.load(open(os.path.join(videos, "annotations", "val", "000000_synth_val.json")))
    b = json.load(open(tmp_path / "annotations" / "val" / "000000_synth_val.json"))
    assert a == b
    # the people move: the mean keypoint of a track changes over the video
    first = {p.track_id: p.keypoints[p.annotated, :2].mean(0) for p in train[0].frames[0].people}
    last = {p.track_id: p.keypoints[p.annotated, :2].mean(0) for p in train[0].frames[-1].people}
    assert any(np.abs(first[k] - last[k]).max() > 5 for k in first.keys() & last.keys())


def test_clip_samples_and_one_warp_for_all_frames(videos):
    from vitpose.train.tar import TARTask
    from vitpose.train.trainer import TrainConfig

    class One:
        rank, world_size, is_main, enabled = 0, 1, True, False
    cfg = TrainConfig(data=videos, model="tar-vitpose-s", epochs=1, batch_size=4, out="unused",
                      model_overrides=dict(embed_dim=32, depth=1, num_heads=2, img_size=[64, 48], input_size=[64, 48],
                                           deconv_channels=8, frames=3, jta_layers=1))
    task = TARTask(cfg, One())
    task.build_model(cfg.model)
    ds = task.train_set
    assert isinstance(ds, PoseTrackClips) and ds.frames == 3
    # a person in a video's first frame: its clip repeats frame 0 (the official padding)
    first = next(i for i, s in enumerate(ds.samples) if s[1] == 0)
    item = ds[(0, first)]
    assert torch.equal(item["frames"][0], item["frames"][1]) and not torch.equal(item["frames"][1], item["frames"][2])
    # a clip of one frame repeated: every frame's crop is the same warp (flip, rotation, scale)
    items = [ds[(3, i)] for i in range(4)]
    for it in items:
        it["frames"] = [it["frames"][1]] * 3
    x = task.prepare(collate_clips(items), "cpu")
    assert x["clips"].shape == (4, 3, 3, 64, 48) and x["targets"].shape == (4, 17, 16, 12)
    assert torch.equal(x["clips"][:, 0], x["clips"][:, 1]) and torch.equal(x["clips"][:, 1], x["clips"][:, 2])
    assert x["rotation"].abs().sum() > 0 or bool(x["flip"].any())  # the augmentation did something


def test_tiny_tar_vitpose_trains_and_predicts_a_tracked_clip(videos, tmp_path):
    cfg = {"arch": "tar-vitpose-s", "embed_dim": 48, "depth": 2, "num_heads": 3, "img_size": [64, 48],
           "input_size": [64, 48], "deconv_channels": 16, "drop_path_rate": 0.0, "frames": 3, "jta_layers": 1}
    (tmp_path / "tiny.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    m = vitpose.train(data=videos, model=str(tmp_path / "tiny.json"), epochs=7, batch_size=8, out=str(run),
                      workers=0, lr=3e-3, lr_steps=(1000,), eval_every=1, progress=False, log_every=1000,
                      augment=False)
    maps = [h["posetrack_map"] for h in m["history"]]
    assert m["status"] == "finished" and len(maps) == 7
    assert maps[-1] > maps[0] + 8 and max(maps) > 15, maps   # PoseTrack mAP (%) rises
    assert m["coco_ap"] == pytest.approx(maps[-1] / 100)

    # the trained model on a synthetic clip: tracked JSON Lines + a drawn video, ids kept
    val = load_posetrack(os.path.join(videos, "annotations", "val"))[0]
    folder = os.path.join(videos, os.path.dirname(val.frames[0].file_name))
    name = os.path.basename(folder)
    boxes = {f"{name}:{f.index}": [[*p.bbox, 1.0] for p in f.people] for f in val.frames}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "pred"
    assert cli.main(["predict", "--checkpoint", str(run / "model.safetensors"), "--frames", folder, "--boxes",
                     str(tmp_path / "boxes.json"), "--out", str(out), "--quiet", "--smooth"]) == 0
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(len(val.frames)))
    owner = {}  # ground-truth track -> predicted ids, matched by box
    for r, f in zip(records, val.frames):
        assert len(r["poses"]) == len(f.people)
        for p in r["poses"]:
            gt = min(f.people, key=lambda q: np.abs(np.asarray(q.bbox) - p["bbox"]).sum())
            owner.setdefault(gt.track_id, set()).add(p["track_id"])
    assert all(len(ids) == 1 for ids in owner.values())
    assert os.path.getsize(out / f"{name}_pose.mp4") > 0
