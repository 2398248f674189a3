"""GPU-owed: the trainer on a CUDA device (bf16 autocast, the fused kernels chosen by dispatch),
against the same run on the reference ops."""
import pytest
import torch

from train_helpers import checkpoint_model, synth_dataset, tiny_config
from vitpose.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU-owed)")]


def test_trainer_on_cuda_bf16_fused_kernels_track_the_reference(tmp_path):
    data = synth_dataset(str(tmp_path), 24, 4, seed=7)
    runs = {}
    for backend in (None, "reference"):  # None: CUDA, else Triton kernels
        model = tiny_config(str(tmp_path), name=f"tiny_{backend}", embed_dim=64, num_heads=2, img_size=[128, 96],
                            patch_stride=8, window=[8, 6], shift=True, pool=True, backend=backend)
        out = tmp_path / f"run_{backend}"
        m = train(data=data, model=model, epochs=2, batch_size=8, out=str(out), device="cuda", precision="bf16",
                  workers=2, eval_every=2, progress=False, lr=1e-3, seed=1)
        assert m["status"] == "finished" and m["coco_ap"] is not None
        runs[backend] = checkpoint_model(str(out / "checkpoints" / f"step_{m['global_step']:09d}.ckpt"))
        first = open(out / "log.csv").read().splitlines()[1].split(",")
        assert float(first[2]) > 0 and float(first[5]) > 0  # loss, peak memory logged
    # bf16 on different kernels: close, not equal
    a, b = runs[None], runs["reference"]
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 0.05
