"""ONNX export: every ViTPose variant kind (classic and simple decoders, windows, shift, pool,
relative position, full-every-k, knowledge token, ViTPose+ experts, 1/8 features) as standard
ONNX operators with a dynamic batch, onnxruntime (CPU) equal to PyTorch within 1e-4 relative;
decoding and the flip test inside the graph; a model of another architecture (clips in, like
TAR-ViTPose) through the same path; the CLI. Full sizes under @pytest.mark.slow."""
import types

import numpy as np
import pytest
import torch
import torch.nn as nn

import vitpose
import vitpose_kernels
from vitpose import cli
from vitpose.export import PoseGraph, export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TINY = dict(embed_dim=32, depth=2, num_heads=2)
VARIANTS = {
    "classic": dict(),
    "simple": dict(head="simple"),
    "window-shift-pool": dict(window=(4, 4), shift=True, pool=True, depth=3),
    "relpos-full-knowledge-plus": dict(window=(4, 4), rel_pos=True, full_every=2, num_knowledge_tokens=1,
                                       datasets=("coco", "aic"), experts=2),
    "stride8-simple": dict(patch_stride=8, head="simple", img_size=(128, 96)),
}


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    model = vitpose.ViTPose(vitpose.vitpose_config("S", **{**TINY, **kw})).eval()
    with torch.no_grad():  # decoders that respond visibly (the default head init is tiny)
        for name, t in model.state_dict().items():
            if "head" in name and t.is_floating_point():
                t.copy_(torch.rand(t.shape) + 0.5 if name.endswith("running_var") else torch.randn(t.shape) * 0.1)
    return model


def standard_only(path):
    graph = onnx.load(str(path)).graph
    custom = {n.domain for n in graph.node} - {"", "ai.onnx"}
    assert not custom, f"custom operator domains in the graph: {custom}"
    return graph


@pytest.mark.parametrize("variant", VARIANTS)
def test_heatmaps_match_onnxruntime(variant, tmp_path):
    model = tiny(**VARIANTS[variant])
    dataset_index = 1 if "plus" in variant else 0
    info = export_onnx(model, tmp_path / "m.onnx", dataset_index=dataset_index)
    assert info["max_rel_error"] <= 1e-4 and info["outputs"] == ["heatmaps"]
    graph = standard_only(tmp_path / "m.onnx")
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    # and against the model itself, folded BatchNorm and the wrapper out of the way, at batch 5
    H, W = model.config.img_size
    x = torch.randn(5, 3, H, W)
    with torch.no_grad():
        want = model(x, dataset_index).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"pixel_values": x.numpy()})[0]
    assert got.shape == want.shape == (5, 14 if "plus" in variant else 17, H // 4, W // 4)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_fused_backends_are_traced_as_their_reference(tmp_path):
    """A model configured for the Triton (or CUDA) kernels exports the same standard graph."""
    model = tiny(window=(4, 4), shift=True, pool=True, head="simple", backend="triton")
    info = export_onnx(model, tmp_path / "t.onnx", verify=False)
    standard_only(tmp_path / "t.onnx")
    assert "Softmax" in info["ops"] and "Resize" in info["ops"]
    reference = tiny(window=(4, 4), shift=True, pool=True, head="simple")
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        want = reference(x).numpy()  # same seed, same weights; the reference ops run eagerly
    got = ort.InferenceSession(str(tmp_path / "t.onnx")).run(None, {"pixel_values": x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_decode_and_flip_in_the_graph(tmp_path):
    model = tiny()
    info = export_onnx(model, tmp_path / "d.onnx", decode=True, flip=True)
    assert info["inputs"] == ["pixel_values", "bbox_centers", "bbox_scales"]
    assert info["outputs"] == ["keypoints", "scores", "heatmaps"] and info["max_rel_error"] <= 1e-4
    standard_only(tmp_path / "d.onnx")
    # the flip test as TopDownPredictor runs it: model on crops and mirrored crops, decode merges
    x = torch.randn(3, 3, 256, 192)
    centers, scales = torch.tensor([[100., 120], [50, 60], [300, 200]]), torch.tensor([[90., 120], [60, 80], [150, 200]])
    with torch.no_grad():
        both = model(torch.cat([x, x.flip(-1)])).float()
    flip = vitpose.COCO_FLIP_INDICES
    _, scores = vitpose_kernels.decode_heatmaps(both[:3], flip_heatmaps=both[3:], flip_indices=flip,
                                                bbox_centers=centers, bbox_scales=scales)
    kp, sc, hm = ort.InferenceSession(str(tmp_path / "d.onnx")).run(
        None, {"pixel_values": x.numpy(), "bbox_centers": centers.numpy(), "bbox_scales": scales.numpy()})
    assert kp.shape == (3, 17, 2) and np.abs(sc - scores.numpy()).max() <= 1e-4 * np.abs(scores.numpy()).max()


class BlobClips(nn.Module):
    """Another architecture's interface, as TAR-ViTPose's: clips (B, T, 3, H, W) in, the centre
    frame's heatmaps out. Here each keypoint is a Gaussian peak (sigma 2, as UDP targets) placed by
    a linear map of the centre frame's mean colour: the peaked heatmaps of a trained model, so the
    DARK step of the decoding is well conditioned everywhere."""

    def __init__(self, frames=3):
        super().__init__()
        self.config = types.SimpleNamespace(img_size=(64, 48), datasets=("coco",))
        self.frames = frames
        self.place = nn.Linear(3, 34)

    def example_inputs(self, batch):
        return {"clips": torch.randn(batch, self.frames, 3, *self.config.img_size)}

    def forward(self, clips):
        centre = clips[:, self.frames // 2].mean(dim=(2, 3))                 # (B, 3)
        xy = torch.sigmoid(self.place(centre)).view(-1, 17, 2) * torch.tensor([9.0, 13.0]) + 1.0
        ys, xs = torch.arange(16.0).view(16, 1), torch.arange(12.0).view(1, 12)
        d2 = (xs - xy[..., 0, None, None]) ** 2 + (ys - xy[..., 1, None, None]) ** 2
        return torch.exp(-d2 / 8.0)


def test_another_architecture_through_the_same_path(tmp_path):
    torch.manual_seed(0)
    model = BlobClips().eval()
    info = export_onnx(model, tmp_path / "c.onnx", decode=True)
    assert info["inputs"] == ["clips", "bbox_centers", "bbox_scales"] and info["max_rel_error"] <= 1e-4
    clips = torch.randn(4, 3, 3, 64, 48)
    centers, scales = torch.rand(4, 2) * 300, torch.rand(4, 2) * 100 + 50
    graph = PoseGraph(model, decode=True, flip=False).eval()
    with torch.no_grad():
        kp, sc, hm = graph(clips, centers, scales)
    got = ort.InferenceSession(str(tmp_path / "c.onnx")).run(
        None, {"clips": clips.numpy(), "bbox_centers": centers.numpy(), "bbox_scales": scales.numpy()})
    # every keypoint here is in the well-conditioned regime: 1e-4 of the box, all of them
    assert np.abs(got[0] - kp.numpy()).max() <= 1e-4 * float(scales.max())
    assert np.abs(got[2] - hm.numpy()).max() <= 1e-5
    H, W = hm.shape[-2:]
    lattice = dict(input_size=(W - 1, H - 1))
    step = (vitpose_kernels.decode_heatmaps(hm, **lattice)[0] - vitpose_kernels.decode_heatmaps(hm, method="argmax", **lattice)[0])
    assert step.abs().max() <= 0.5  # ... which the DARK step's size confirms


def test_cli_export(tmp_path):
    vitpose.save_model(tiny(head="simple"), tmp_path / "m.safetensors")
    out = tmp_path / "o" / "m.onnx"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--format", "onnx", str(out),
                     "--decode"]) == 0
    names = [i.name for i in onnx.load(str(out)).graph.input]
    assert names == ["pixel_values", "bbox_centers", "bbox_scales"]
    assert cli.main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), str(tmp_path / "b.onnx"),
                     "--batch", "2", "--no-verify"]) == 0
    dims = onnx.load(str(tmp_path / "b.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 256, 192]


@pytest.fixture
def asked_for_slow(request):
    """Minutes per size on a CPU (ViTPose-H: ~6): run with `pytest -m slow tests/test_export_onnx.py`."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("full-size exports run only when asked for: pytest -m slow")


@pytest.mark.slow
@pytest.mark.parametrize("size,kw", [("S", {}), ("B", {}), ("B", dict(head="simple")),
                                     ("B", dict(patch_stride=8, window=(8, 8), shift=True, pool=True)),
                                     ("L", {}), ("H", {})])
def test_full_sizes(size, kw, tmp_path, asked_for_slow):
    with torch.device("cpu"):
        model = vitpose.ViTPose(vitpose.vitpose_config(size, **kw)).eval()
    info = export_onnx(model, tmp_path / f"{size}.onnx", decode=True, flip=True)
    assert info["max_rel_error"] <= 1e-4
