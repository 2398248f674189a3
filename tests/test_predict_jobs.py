"""Batch jobs of ``vitpose predict``: the plan (units, shards), JSON Lines records written as the
job goes, failures recorded and skipped, --resume after SIGKILL ending with the files of an
uninterrupted run, and torchrun with 2 CPU processes (gloo) writing the same files as one."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import vitpose
from vitpose import cli
from vitpose.infer.job import PredictJob, plan_units, resume_point, shard_units
from vitpose.infer.records import JsonlShard


# ------------------------------------------------------------------------------------------------
# Fixtures: a tiny checkpoint, a folder of images with a broken one, a short video
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=1, num_heads=2))
    with torch.no_grad():  # a visible response: the default head init is tiny
        for name, t in model.state_dict().items():
            if "keypoint_head" in name and t.is_floating_point():
                t.copy_(torch.rand(t.shape) + 0.5 if name.endswith("running_var") else torch.randn(t.shape) * 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    vitpose.save_model(model, path)
    return str(path)


def write_inputs(folder, n_images=9, video_at=6, frames=5, broken=(3,)):
    """Images 000..., one broken; a video in the middle (named so that it sorts there)."""
    from PIL import Image
    cv2 = pytest.importorskip("cv2")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_images):
        name = folder / f"{i:03d}{'b' if i >= video_at else 'a'}.png"
        if i in broken:
            name.with_suffix(".jpg").write_bytes(b"\xff\xd8 truncated")
        else:
            Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 56, 3), dtype=np.uint8)).save(name)
    writer = cv2.VideoWriter(str(folder / f"{video_at:03d}a_clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (48, 32))
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    writer.release()
    return folder


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
def test_plan_cuts_image_runs_and_keeps_videos_whole():
    inputs = [("image", f"{i}.jpg") for i in range(5)] + [("video", "v.mp4")] + [("image", "x.jpg")]
    units = plan_units(inputs, group=2)
    assert [[s.index for s in u.sources] for u in units] == [[0, 1], [2, 3], [4], [5], [6]]
    assert [u.kind for u in units] == ["image", "image", "image", "video", "image"]
    # round robin, deterministic, every unit exactly once
    shards = [shard_units(units, r, 3) for r in range(3)]
    assert sorted(u.index for s in shards for u in s) == list(range(5))
    assert [u.index for u in shards[1]] == [1, 4]
    assert units[0].sources[0].image_id == 0 and plan_units([("image", "d/000042.jpg")], 1)[0].sources[0].image_id == 42


def _rec(source, frame=None, error=None):
    r = {"source": source, "path": "p", "file_name": "p", "image_id": 0}
    if frame is not None:
        r["frame"] = frame
    r["poses"] = []
    if error:
        r["error"] = error
    return json.dumps(r) + "\n"


def test_resume_point_keeps_whole_groups(tmp_path):
    inputs = [("image", "0.jpg"), ("image", "1.jpg"), ("image", "2.jpg"), ("video", "v.mp4"), ("image", "4.jpg")]
    units = plan_units(inputs, group=2)  # [0, 1], [2], video 3, [4]
    path = tmp_path / "p.jsonl"
    shard = JsonlShard(str(path))

    def point(text):
        path.write_text(text)
        pos, frames, replay, keep = resume_point(shard, units, 2)
        return pos, frames, [r["frame"] for r in replay], path.read_bytes()[:keep].decode()

    head = _rec(0) + _rec(1) + _rec(2)
    assert point("") == (0, 0, [], "")
    assert point(_rec(0)) == (0, 0, [], "")                            # a partial run of images: redone
    assert point(head + '{"source": 3, "fr') == (2, 0, [], head)        # a partial last line: dropped
    video = "".join(_rec(3, f) for f in range(5))
    assert point(head + video) == (2, 4, [0, 1, 2, 3], head + video[: len(video) * 4 // 5])  # 2 whole groups
    assert point(head + video + _rec(4)) == (4, 0, [], head + video + _rec(4))               # all done
    assert point(head + video[: len(video) // 5]) == (2, 0, [], head)   # 1 frame: the group is redone
    assert point(head + _rec(3, error="bad") + _rec(4))[0] == 4          # unreadable video: done
    with pytest.raises(ValueError, match="does not follow this job's inputs"):
        point(_rec(1))
    with pytest.raises(ValueError, match="more records"):
        point(head + video + _rec(4) + _rec(4))


# ------------------------------------------------------------------------------------------------
# In process: records, failures, resume refuses another job
# ------------------------------------------------------------------------------------------------
def test_records_failures_and_coco_json(checkpoint, tmp_path):
    folder = write_inputs(tmp_path / "in", n_images=4, video_at=2, frames=3, broken=(1,))
    out = tmp_path / "out"
    rc = cli.main(["predict", "--checkpoint", checkpoint, str(folder), "--out", str(out), "--quiet",
                   "--batch-size", "2", "--no-flip"])
    assert rc == 1  # the broken image failed, the rest went on
    recs = [json.loads(x) for x in lines(out / "predictions.jsonl")]
    assert [(r["source"], r.get("frame")) for r in recs] == [(0, None), (1, None), (2, 0), (2, 1), (2, 2),
                                                            (3, None), (4, None)]
    assert "could not read image" in recs[1]["error"] and recs[1]["poses"] == []
    assert all(len(r["poses"]) == 1 and len(r["poses"][0]["keypoints"]) == 51 for r in recs if "error" not in r)
    coco = json.loads((out / "keypoints.json").read_text())
    assert len(coco) == 6 and [c.get("frame") for c in coco] == [None, 0, 1, 2, None, None]
    assert coco[0]["keypoints"] == recs[0]["poses"][0]["keypoints"] and coco[0]["file_name"] == "000a.png"
    assert sorted(os.listdir(out / "vis")) == ["000a.jpg", "002b.jpg", "003b.jpg"]
    assert (out / "002a_clip_pose.mp4").stat().st_size > 0 and (out / "predictions.jsonl.done").exists()
    # resuming a finished job does nothing and writes the same files
    before = (out / "keypoints.json").read_bytes()
    assert cli.main(["predict", "--checkpoint", checkpoint, str(folder), "--out", str(out), "--quiet",
                     "--batch-size", "2", "--no-flip", "--resume"]) == 1
    assert (out / "keypoints.json").read_bytes() == before
    # another job in the same folder is refused, with what differs
    assert cli.main(["predict", "--checkpoint", checkpoint, str(folder), "--out", str(out), "--quiet",
                     "--batch-size", "3", "--no-flip", "--resume"]) == 2


def test_a_failing_forward_pass_fails_its_group_only(checkpoint, tmp_path, monkeypatch):
    from vitpose.infer.pipeline import TopDownPredictor
    folder = write_inputs(tmp_path / "in", n_images=4, video_at=9, frames=0, broken=())
    os.remove(folder / "009a_clip.mp4")
    calls = []
    original = TopDownPredictor.run_boxes

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, *a, **k)

    monkeypatch.setattr(TopDownPredictor, "run_boxes", flaky)
    predictor = TopDownPredictor(vitpose.load_model(checkpoint), flip=False, batch_size=2)
    job = PredictJob(predictor, str(tmp_path / "out"), progress=False, log=lambda m: None)
    assert job.run([("image", str(p)) for p in sorted(folder.iterdir())]) == 1
    recs = [json.loads(x) for x in lines(tmp_path / "out" / "predictions.jsonl")]
    assert ["error" in r for r in recs] == [False, False, True, True]
    assert "out of memory" in recs[2]["error"]


# ------------------------------------------------------------------------------------------------
# Subprocesses: SIGKILL + --resume, and torchrun
# ------------------------------------------------------------------------------------------------
# Runs the CLI with one thread (numbers bit-identical across runs need the same thread count) and
# an optional pause per group, so that a kill lands in the middle of the job.
RUNNER = """
import sys, time, torch
torch.set_num_threads(1)
from vitpose.infer.pipeline import TopDownPredictor
pause, original = float(sys.argv[1]), TopDownPredictor.predict_batch
def slow(self, *a, **k):
    time.sleep(pause)
    return original(self, *a, **k)
TopDownPredictor.predict_batch = slow
from vitpose.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(vitpose.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _predict_args(checkpoint, folder, out):
    return ["predict", "--checkpoint", checkpoint, str(folder), "--out", str(out), "--quiet", "--batch-size", "2"]


@pytest.fixture(scope="module")
def uninterrupted(checkpoint, tmp_path_factory):
    """9 images (one broken) and a 5-frame video, 14 records, in one uninterrupted process."""
    root = tmp_path_factory.mktemp("job")
    folder, out = write_inputs(root / "in"), root / "whole"
    done = subprocess.run([sys.executable, "-c", RUNNER, "0"] + _predict_args(checkpoint, folder, out),
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr  # 1: the broken image
    assert len(lines(out / "predictions.jsonl")) == 14
    return folder, out


def test_sigkill_then_resume_ends_with_the_uninterrupted_output(checkpoint, uninterrupted, tmp_path):
    folder, whole = uninterrupted
    cut = tmp_path / "cut"
    run = [sys.executable, "-c", RUNNER]
    proc = subprocess.Popen(run + ["0.4"] + _predict_args(checkpoint, folder, cut), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while len(lines(cut / "predictions.jsonl")) < 9 and time.time() < deadline:  # into the video
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = len(lines(cut / "predictions.jsonl"))
    assert 9 <= done < 14 and not (cut / "keypoints.json").exists()
    with open(cut / "predictions.jsonl", "a") as f:  # and as if the kill had torn a write
        f.write('{"source": 6, "path": "')

    resumed = subprocess.run(run + ["0"] + _predict_args(checkpoint, folder, cut) + ["--resume"], env=_env(),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr, resumed.stderr
    assert "resuming:" in resumed.stderr
    for name in ("predictions.jsonl", "keypoints.json"):
        assert (cut / name).read_bytes() == (whole / name).read_bytes(), name
    assert sorted(os.listdir(cut / "vis")) == sorted(os.listdir(whole / "vis"))
    assert (cut / "006a_clip_pose.mp4").stat().st_size > 0


def test_torchrun_two_processes_write_the_single_process_files(checkpoint, uninterrupted, tmp_path):
    folder, one = uninterrupted
    two = tmp_path / "two"
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "-m", "vitpose"] + _predict_args(checkpoint, folder, two),
                             env=_env(), capture_output=True, text=True, timeout=180)
    assert (two / "keypoints.json").exists(), sharded.stderr[-3000:]
    for name in ("predictions.jsonl", "keypoints.json"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    per_rank = [lines(two / "shards" / f"predictions.rank-{r}-of-2.jsonl") for r in range(2)]
    assert all(per_rank) and sum(map(len, per_rank)) == 14
    assert sorted(os.listdir(two / "vis")) == sorted(os.listdir(one / "vis"))
