"""Nothing lost: atomic, verified checkpoints; SIGTERM writes one and exits; --resume continues to
bit-identical weights (fp32, CPU); damaged checkpoints give a clear error."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from train_helpers import bit_identical, synth_dataset, tiny_config
from vitpose.train import checkpoint as ckpt
from vitpose.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_checkpoint_roundtrip_and_damage(tmp_path):
    state = {"model": {"w": torch.randn(50, 7)}, "step": 3, "rng": [torch.get_rng_state()], "name": "x"}
    path = str(tmp_path / "a.ckpt")
    ckpt.save(state, path)
    back = ckpt.load(path)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["step"] == 3
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]  # no temporary left behind
    data = open(path, "rb").read()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[:-100])
    with pytest.raises(ckpt.CheckpointCorrupt, match="truncated"):
        ckpt.load(str(cut))
    flipped = bytearray(data)
    flipped[-50] ^= 0x01
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ckpt.CheckpointCorrupt, match="checksum mismatch"):
        ckpt.load(str(bad))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ckpt.CheckpointCorrupt, match="empty file"):
        ckpt.load(str(empty))
    with pytest.raises(ckpt.CheckpointCorrupt, match="bad magic"):
        empty.write_bytes(b"PK\x03\x04" + b"0" * 600)
        ckpt.load(str(empty))


def run_args(data, model, out, epochs):
    return dict(data=data, model=model, epochs=epochs, batch_size=4, out=str(out), workers=0, eval_every=0,
                log_every=1, checkpoint_every=1000, progress=False)


def test_sigterm_then_resume_is_bit_identical(tmp_path):
    data = synth_dataset(str(tmp_path), 8, 0, seed=1)
    model = tiny_config(str(tmp_path), drop_path_rate=0.2)  # drop path: the RNG state must come back too
    epochs = 12
    whole = train(**run_args(data, model, tmp_path / "whole", epochs))
    assert whole["status"] == "finished"
    total = whole["global_step"]

    # The same run in a subprocess, SIGTERMed at its first logged step.
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "vitpose", "train", "--data", data, "--model", model, "--epochs", str(epochs),
           "--batch-size", "4", "--out", str(out), "--workers", "0", "--eval-every", "0", "--log-every", "1",
           "--checkpoint-every", "1000", "--quiet"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch "):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "checkpoint written" in text and "Traceback" not in text, text
    stopped = ckpt.load(ckpt.resolve(str(out)))
    assert 1 <= stopped["global_step"] < total

    resumed = train(resume=str(out))  # every other argument comes from the checkpoint
    assert resumed["status"] == "finished" and resumed["global_step"] == total
    a = ckpt.load(ckpt.resolve(str(tmp_path / "whole")))
    b = ckpt.load(ckpt.resolve(str(out)))
    assert bit_identical(a["model"], b["model"]) == []
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    # the CSV log holds each step once, whatever was logged before the kill
    rows = open(out / "log.csv").read().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, total + 1))


def test_resume_refuses_a_damaged_checkpoint(tmp_path):
    data = synth_dataset(str(tmp_path), 8, 0, seed=1)
    model = tiny_config(str(tmp_path))
    out = tmp_path / "run"
    r = train(**run_args(data, model, out, 3), stop_after_steps=2)
    assert r["status"] == "interrupted" and r["global_step"] == 2
    path = ckpt.resolve(str(out))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ckpt.CheckpointCorrupt, match=os.path.basename(path)):
        train(resume=str(out))
