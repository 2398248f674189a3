"""torchrun on 2 CPU processes (gloo): after a few steps the weights equal a single-process run on the
same global batch (fp32, 1e-6); evaluation is sharded and gathered; rank 0 writes the files."""
import os
import subprocess
import sys

import torch

from train_helpers import checkpoint_model, max_abs_diff, synth_dataset, tiny_config
from vitpose.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    data = synth_dataset(str(tmp_path), 12, 3, seed=2)
    # The simple decoder: the classic one's BatchNorm normalizes per process (as the official
    # multi-GPU training does, no SyncBN), so its statistics differ from one process's by design.
    model = tiny_config(str(tmp_path), head="simple")
    common = ["--data", data, "--model", model, "--epochs", "1", "--workers", "1", "--log-every", "1",
              "--eval-every", "1", "--quiet", "--lr", "2e-3"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vitpose", "train", *common, "--batch-size", "4", "--out", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("done:") == 1  # rank 0 alone reports

    one = train(data=data, model=model, epochs=1, batch_size=8, out=str(tmp_path / "one"), workers=0,
                log_every=1, eval_every=1, progress=False, lr=2e-3)
    import json
    two_metrics = json.loads((two / "metrics.json").read_text())
    assert two_metrics["world_size"] == 2 and one["world_size"] == 1
    assert two_metrics["global_step"] == one["global_step"] >= 2
    a = checkpoint_model(os.path.join(two, "checkpoints", f"step_{one['global_step']:09d}.ckpt"))
    b = checkpoint_model(os.path.join(tmp_path, "one", "checkpoints", f"step_{one['global_step']:09d}.ckpt"))
    assert max_abs_diff(a, b) < 1e-6
    # the evaluation saw every val image once, across both ranks
    fin_two, fin_one = two_metrics["final"], one["final"]
    assert fin_two["num_images"] == fin_one["num_images"] == 3 and fin_two["num_failed"] == 0
    assert abs(fin_two["coco_ap"] - fin_one["coco_ap"]) < 1e-3
    assert not any(n.startswith("rank") for n in os.listdir(two))
