"""The serving path (vitpose/infer/serving.py): batch-size buckets, static buffers reused across
calls, padding rows dropped, results equal to eager; on a GPU, CUDA-graph capture and replay
(GPU-owed here: those tests skip without CUDA)."""
import numpy as np
import pytest
import torch

import vitpose
from vitpose.infer.pipeline import TopDownPredictor
from vitpose.infer.serving import StaticRunner, buckets_up_to


def blob(h, w, cx, cy, sigma=5.0):
    y, x = np.mgrid[0:h, 0:w]
    g = 255 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    return np.repeat(g[..., None], 3, axis=2).astype(np.float32)


class Probe:
    """A stand-in for the network: its 17 heatmaps are the crop itself on the heatmap lattice, so
    a bright blob decodes to its own centre; records the batch sizes it sees."""

    def __init__(self):
        self.sizes = []

    def __call__(self, x, dataset_index=0):
        self.sizes.append(len(x))
        h = torch.nn.functional.interpolate(x[:, :1].float(), size=(64, 48), mode="bilinear", align_corners=True)
        h = h - h.amin(dim=(2, 3), keepdim=True)
        return (h / h.amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)).repeat(1, 17, 1, 1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=1, num_heads=2)).eval()


CENTRES = [(123.4, 87.6), (40.3, 150.8), (70.7, 30.2)]
SHAPES = [(200, 300), (240, 100), (90, 160)]
BOXES = [[[90, 40, 70, 100, 0.9], [100, 60, 50, 60, 0.5]], [[10, 100, 60, 90]], [[40, 5, 60, 50]]]


def test_buckets():
    assert buckets_up_to(32) == (1, 2, 4, 8, 16, 32)
    assert buckets_up_to(24) == (1, 2, 4, 8, 16, 24) and buckets_up_to(1) == (1,)


def test_static_buckets_pad_reuse_and_match_eager(model):
    images = [blob(h, w, *c) for (h, w), c in zip(SHAPES, CENTRES)]
    eager = TopDownPredictor(model, batch_size=8)
    static = TopDownPredictor(model, batch_size=8, mode="static")
    eager.model, static.model = Probe(), Probe()
    want, got = eager(images, BOXES), static(images, BOXES)
    # 4 boxes, flip: eager runs 8 crops; static runs bucket 4 (already full) -> 8 as well
    assert eager.model.sizes == static.model.sizes == [8]
    for a, b, (cx, cy) in zip(want, got, CENTRES):
        assert len(a) == len(b)
        for p, q in zip(a, b):
            assert np.abs(q.keypoints - [cx, cy]).max() < 0.01
            assert np.abs(p.keypoints - q.keypoints).max() < 1e-3 and np.allclose(p.scores, q.scores, atol=1e-5)
    runner = static.runner
    assert isinstance(runner, StaticRunner) and len(runner.slots) == 1
    slot = next(iter(runner.slots.values()))
    canvas_ptr, box_ptr = slot.canvas.data_ptr(), slot.boxes.data_ptr()
    # 3 boxes -> bucket 4 with one padding row, dropped; same canvas bucket -> the same buffers
    three = static(images, [BOXES[0][:1], BOXES[1], BOXES[2]])
    assert static.model.sizes[-1] == 8 and [len(p) for p in three] == [1, 1, 1]
    assert len(runner.slots) == 1 and slot.replays == 2
    assert slot.canvas.data_ptr() == canvas_ptr and slot.boxes.data_ptr() == box_ptr
    assert slot.boxes[3].tolist() == [0.0, 0.0, 1.0, 1.0]  # the padding box
    for p, q in zip(three[0] + three[1] + three[2], got[0][:1] + got[1] + got[2]):
        assert np.abs(p.keypoints - q.keypoints).max() < 1e-3
    # 1 box -> bucket 1: a slot of its own
    one = static([images[2]], [BOXES[2]])
    assert static.model.sizes[-1] == 2 and len(runner.slots) == 2
    assert np.abs(one[0][0].keypoints - got[2][0].keypoints).max() < 1e-3


def test_canvas_buckets_and_eviction(model):
    predictor = TopDownPredictor(model, batch_size=4, mode="static", flip=False)
    predictor.model = Probe()
    runner = StaticRunner(predictor, "static", canvas_step=128, max_graphs=2)
    predictor.runner = runner
    small, tall, wide = blob(100, 120, 50, 50), blob(300, 120, 60, 200), blob(100, 500, 300, 50)
    predictor([small], [[[10, 10, 80, 80]]])
    predictor([small * 0.5], [[[10, 10, 80, 80]]])     # same bucket and canvas: reused
    assert list(runner.slots) == [(1, (128, 128))]
    predictor([tall], [[[20, 150, 80, 120]]])
    predictor([wide], [[[250, 10, 100, 80]]])          # a third (bucket, canvas): the oldest goes
    assert list(runner.slots) == [(1, (384, 128)), (1, (128, 512))]
    out = predictor([wide], [[[250, 10, 100, 80]]])
    assert np.abs(out[0][0].keypoints - [300, 50]).max() < 0.01


def test_static_matches_eager_on_a_vitpose(model):
    images = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8) for i, (h, w) in enumerate(SHAPES)]
    want = TopDownPredictor(model, batch_size=4)(images, BOXES)
    got = TopDownPredictor(model, batch_size=4, mode="static")(images, BOXES)
    for a, b in zip(want, got):
        for p, q in zip(a, b):  # the heatmaps' maxima: crops and the model agree to rounding
            assert np.allclose(p.scores, q.scores, rtol=1e-5, atol=1e-6)


def test_modes_are_checked(model):
    with pytest.raises(ValueError, match="mode must be one of"):
        TopDownPredictor(model, mode="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            TopDownPredictor(model, mode="graph", device="cpu")
    predictor = TopDownPredictor(model, batch_size=4, mode="static")
    with pytest.raises(ValueError, match="exceed the largest bucket"):
        predictor.runner.bucket_for(5)


# ------------------------------------------------------------------------------------------------
# GPU-owed: capture and replay (skipped without CUDA)
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("mode", ["graph", "compile"])
def test_cuda_graph_replays_match_eager(model, mode):
    import copy
    images = [torch.from_numpy(blob(h, w, *c)).permute(2, 0, 1).cuda() for (h, w), c in zip(SHAPES, CENTRES)]
    eager = TopDownPredictor(copy.deepcopy(model), device="cuda", batch_size=8)
    served = TopDownPredictor(copy.deepcopy(model), device="cuda", batch_size=8, mode=mode)
    want = eager(images, BOXES)
    for _ in range(3):
        got = served(images, BOXES)
    slot = next(iter(served.runner.slots.values()))
    assert slot.graph is not None and slot.replays == 3 and len(served.runner.slots) == 1
    for a, b in zip(want, got):
        for p, q in zip(a, b):
            assert np.allclose(p.scores, q.scores, rtol=0.05, atol=1e-3)  # bf16 on the GPU
            assert np.abs(p.keypoints - q.keypoints).max() < 2.0
