"""Top-down pipeline: boxes, UDP crops, decode back to the image, end to end on random weights,
bad input, and the CLI (a folder with a broken image, a video, evaluate)."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vitpose
import vitpose_kernels
from vitpose import cli
from vitpose.infer.pipeline import (TopDownPredictor, box_to_center_scale, crop_batch, crop_to_image,
                              image_to_crop)

IN = (192, 256)  # crop (W, H)


def test_box_to_center_scale_pads_to_3_4():
    c, s = box_to_center_scale(torch.tensor([[10., 20, 30, 80], [0, 0, 90, 40]]), IN)
    assert torch.allclose(c, torch.tensor([[25., 60], [45, 20]]))
    # tall box: width grows to 3/4 of the height; wide box: height grows to 4/3 of the width
    assert torch.allclose(s, torch.tensor([[60., 80], [90, 120]]) * 1.25)


def coordinate_images(sizes):
    """Images whose channels hold their own pixel coordinates (x, y) and a constant."""
    out = []
    for h, w in sizes:
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                              indexing="ij")
        out.append(torch.stack([x, y, torch.full_like(x, 7.0)]))
    return out


def test_crop_samples_the_warped_point_and_decodes_back():
    g = torch.Generator().manual_seed(0)
    images = coordinate_images([(300, 400), (120, 90), (480, 640)])
    boxes = torch.tensor([[50., 40, 120, 200], [10, 5, 60, 100], [300, 100, 200, 300], [-20, -30, 100, 90]])
    image_index = torch.tensor([0, 1, 2, 0])
    centers, scales = box_to_center_scale(boxes, IN)
    crops = crop_batch(images, image_index, centers, scales, IN)
    assert crops.shape == (4, 3, 256, 192)

    # Every crop pixel holds the image coordinates the UDP warp sends it to (zeros off the image).
    v, u = torch.meshgrid(torch.arange(256.), torch.arange(192.), indexing="ij")
    pixels = crop_to_image(torch.stack([u, v], -1).reshape(1, -1, 2).expand(4, -1, -1), centers, scales, IN)
    for n in range(4):
        h, w = images[image_index[n]].shape[1:]
        got, want = crops[n, :2].reshape(2, -1).T, pixels[n]
        on = (want[:, 0] >= 0) & (want[:, 0] <= w - 1) & (want[:, 1] >= 0) & (want[:, 1] <= h - 1)
        off = (want[:, 0] <= -1) | (want[:, 1] <= -1) | (want[:, 0] >= w) | (want[:, 1] >= h)
        assert on.any() and (got[on] - want[on]).abs().max() < 1e-3
        assert (crops[n].reshape(3, -1)[:, off] == 0).all()  # outside the image: zeros, as cv2's border

    # Image points warped into the crop onto the heatmap lattice (64x48) decode back to themselves.
    Hh, Wh = 64, 48
    loc = torch.stack([torch.randint(0, Wh, (4, 17), generator=g), torch.randint(0, Hh, (4, 17), generator=g)], -1)
    uv = loc.float() * torch.tensor([(IN[0] - 1) / (Wh - 1), (IN[1] - 1) / (Hh - 1)])
    points = crop_to_image(uv, centers, scales, IN)
    assert torch.allclose(image_to_crop(points, centers, scales, IN), uv, atol=1e-4)
    heatmaps = torch.zeros(4, 17, Hh, Wh)
    heatmaps[torch.arange(4)[:, None], torch.arange(17), loc[..., 1], loc[..., 0]] = 1.0
    decoded, scores = vitpose_kernels.decode_heatmaps(heatmaps, input_size=IN, bbox_centers=centers,
                                                      bbox_scales=scales, method="argmax")
    assert (decoded - points).abs().max() < 1e-3 and (scores == 1).all()


def test_imagenet_normalization():
    from vitpose.infer.pipeline import normalize
    mean, std = torch.tensor([0.485, 0.456, 0.406]) * 255, torch.tensor([0.229, 0.224, 0.225]) * 255
    crops = torch.stack([mean, mean + std]).view(2, 3, 1, 1).expand(2, 3, 4, 4)
    out = normalize(crops)
    assert torch.allclose(out[0], torch.zeros(3, 4, 4), atol=1e-5)
    assert torch.allclose(out[1], torch.ones(3, 4, 4), atol=1e-5)


def test_image_files_are_read_upright(tmp_path):
    from PIL import Image
    from vitpose.infer.pipeline import load_image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    assert tuple(load_image(str(tmp_path / "phone.jpg")).shape) == (3, 30, 20)
    cv2 = pytest.importorskip("cv2")
    assert cv2.imread(str(tmp_path / "phone.jpg")).shape[:2] == (30, 20)  # what mmpose would see


def blob_image(h, w, cx, cy, sigma=5.0):
    y, x = np.mgrid[0:h, 0:w]
    g = 255 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    return np.repeat(g[..., None], 3, axis=2).astype(np.float32)


class UDPProbe:
    """A stand-in for the network whose 17 heatmaps are the crop itself, sampled on the UDP heatmap
    lattice (heatmap pixel j <-> crop pixel j (W-1)/(Wh-1)): a bright blob in the image must decode to
    its own center. Records every batch it is called on."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, dataset_index=0):
        self.batches.append(x.detach().clone())
        h = torch.nn.functional.interpolate(x[:, :1].float(), size=(64, 48), mode="bilinear",
                                            align_corners=True)
        h = h - h.amin(dim=(2, 3), keepdim=True)
        return (h / h.amax(dim=(2, 3), keepdim=True)).repeat(1, 17, 1, 1)


def test_flip_test_batches_mirrored_crops_and_lands_on_the_blob(small_model, monkeypatch):
    calls = []
    grid_sample = torch.nn.functional.grid_sample
    monkeypatch.setattr(torch.nn.functional, "grid_sample",
                        lambda *a, **k: calls.append(1) or grid_sample(*a, **k))
    centers = [(123.4, 87.6), (40.3, 150.8), (70.7, 30.2)]
    images = [blob_image(h, w, *c) for (h, w), c in zip([(200, 300), (240, 100), (90, 160)], centers)]
    boxes = [[[90, 40, 70, 100, 0.9], [100, 60, 50, 60, 0.5]], [[10, 100, 60, 90], [20, 120, 40, 70]],
             [[40, 5, 60, 50]]]
    results = {}
    for flip in (True, False):
        predictor = TopDownPredictor(small_model, flip=flip, batch_size=4)
        probe = predictor.model = UDPProbe()
        results[flip] = predictor(images, boxes)
        # boxes of different images share a forward pass, never more than batch_size of them; with
        # flip the mirrored crops ride in the same pass, right after their originals
        assert [len(b) for b in probe.batches] == ([8, 2] if flip else [4, 1])
        if flip:
            for b in probe.batches:
                n = len(b) // 2
                assert torch.equal(b[n:], b[:n].flip(-1))
    assert len(calls) == 4  # one grid_sample per forward pass
    for poses_flip, poses, (cx, cy) in zip(results[True], results[False], centers):
        for p, q in zip(poses_flip, poses):
            assert np.abs(p.keypoints - [cx, cy]).max() < 0.01, (p.keypoints[0], cx, cy)
            assert np.abs(p.keypoints - q.keypoints).max() < 1e-2
            assert np.allclose(p.scores, q.scores, atol=1e-3)


def test_items_without_boxes_do_not_pile_up(small_model):
    consumed = []

    def items():
        for i in range(10):
            consumed.append(i)
            yield i, np.zeros((20, 30, 3), np.uint8), np.zeros((0, 5))

    stream = TopDownPredictor(small_model, batch_size=3).iter_predict(items())
    assert next(stream) == (0, []) and len(consumed) <= 3
    assert [k for k, _ in stream] == list(range(1, 10))


def test_fp32_on_cpu():
    model = vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=1, num_heads=2))
    predictor = TopDownPredictor(model, device="cpu")
    assert predictor.dtype == torch.float32
    assert predictor.model.keypoint_head.final_layer.weight.dtype == torch.float32


def test_the_callers_model_keeps_its_dtype():
    """A low-precision predictor (bf16 is the default on GPUs) casts a copy: a model in training,
    evaluated on the way, stays float32; its BatchNorm stays unfolded."""
    for model in (vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=1, num_heads=2)),
                  vitpose.build_model("tokenpose-t", depth=1)):
        before = {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()}
        predictor = TopDownPredictor(model, device="cpu", dtype=torch.bfloat16)
        assert next(predictor.model.parameters()).dtype == torch.bfloat16
        for k, v in model.state_dict().items():
            assert v.dtype == before[k][0] and torch.equal(v, before[k][1]), k
    from vitpose.infer.clips import ClipPredictor
    tar = vitpose.build_model("tar-vitpose-s", embed_dim=48, depth=1, num_heads=3, frames=3, jta_layers=1,
                              deconv_channels=16)
    before = {k: (v.dtype, v.clone()) for k, v in tar.state_dict().items()}
    predictor = ClipPredictor(tar, device="cpu", dtype=torch.bfloat16)
    assert next(predictor.model.parameters()).dtype == torch.bfloat16
    for k, v in tar.state_dict().items():
        assert v.dtype == before[k][0] and torch.equal(v, before[k][1]), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_gpu_matches_fp32_on_cpu(small_model):
    images, boxes = synthetic_images(), [[[10, 10, 50, 80, 0.9]], [[-10, -10, 200, 200]], [[5, 5, 60, 60]]]
    model = copy.deepcopy(small_model)  # the predictor moves the model it is given
    cpu = vitpose.predict(model, images, boxes, device="cpu")
    gpu_predictor = TopDownPredictor(model, device="cuda")
    assert gpu_predictor.dtype == torch.bfloat16
    assert gpu_predictor.model.backbone.pos_embed.dtype == torch.bfloat16
    gpu = gpu_predictor(images, boxes)
    for a, b in zip(cpu, gpu):
        for p, q in zip(a, b):
            assert np.allclose(p.scores, q.scores, rtol=0.05, atol=1e-3)


def test_crops_match_mmpose_udp_warp_affine():
    """The batched crops equal, per box, OpenCV's warpAffine with mmpose's UDP matrix (rotation 0:
    scale (W-1)/w, (H-1)/h and the box's corner to the origin), borders included, two images mixed."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    images = [cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 3)
              for h, w in ((150, 200), (90, 60))]
    boxes = torch.tensor([[20., 30, 60, 90], [-30, -20, 100, 80], [150, 100, 80, 80], [5, 10, 50, 70]])
    index = torch.tensor([0, 0, 0, 1])
    centers, scales = box_to_center_scale(boxes, IN)
    crops = crop_batch([torch.from_numpy(im).permute(2, 0, 1) for im in images], index, centers, scales, IN)
    for n in range(4):
        (cx, cy), (sw, sh) = centers[n].tolist(), scales[n].tolist()
        sx, sy = (IN[0] - 1) / sw, (IN[1] - 1) / sh
        matrix = np.array([[sx, 0, sx * (0.5 * sw - cx)], [0, sy, sy * (0.5 * sh - cy)]])
        want = cv2.warpAffine(images[index[n]], matrix, IN, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        assert np.abs(crops[n].permute(1, 2, 0).numpy() - want).max() < 0.01, n


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=64, depth=2, num_heads=4))
    with torch.no_grad():  # a visible response: the default head init is tiny
        for name, t in model.state_dict().items():
            if "keypoint_head" in name and t.is_floating_point():
                t.copy_(torch.rand(t.shape) + 0.5 if name.endswith("running_var") else torch.randn(t.shape) * 0.1)
    return model.eval()


def synthetic_images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (100 + 20 * i, 140 + 10 * i, 3), dtype=np.uint8) for i in range(n)]


def test_end_to_end_random_weights(small_model):
    images = synthetic_images()
    boxes = [[[10, 10, 50, 80, 0.9], [60, 20, 40, 60, 0.8]], [[-10, -10, 200, 200]], []]
    out = vitpose.predict(small_model, images, boxes, batch_size=2)
    assert [len(o) for o in out] == [2, 1, 0]
    for poses, bxs in zip(out, boxes):
        for pose, box in zip(poses, bxs):
            assert pose.keypoints.shape == (17, 2) and pose.scores.shape == (17,)
            assert np.isfinite(pose.keypoints).all() and pose.box.tolist() == list(box[:4])
            assert np.allclose(pose.center, pose.box[:2] + pose.box[2:] / 2)
    # batching across images and boxes changes nothing but float rounding (which the DARK Newton
    # step can amplify a little on the flat heatmaps of random weights)
    once = vitpose.predict(small_model, images, boxes, batch_size=64)
    for a, b in zip(out, once):
        for p, q in zip(a, b):
            assert np.allclose(p.scores, q.scores, rtol=1e-4) and np.abs(p.keypoints - q.keypoints).max() < 0.5
    # one image, whole-image box, tensor input, flip off
    single = vitpose.predict(small_model, torch.from_numpy(images[0]).permute(2, 0, 1), flip=False)
    assert len(single) == 1 and single[0].box.tolist() == [0, 0, 140, 100]


def test_bad_input(small_model, tmp_path):
    predictor = TopDownPredictor(small_model)
    image = synthetic_images(1)[0]
    for box in ([10, 10, 0, 50], [10, 10, 30, -5]):
        with pytest.raises(ValueError, match="zero or negative size"):
            predictor([image], [[box]])
    with pytest.raises(FileNotFoundError, match="image not found"):
        predictor([str(tmp_path / "absent.jpg")])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="could not read image"):
        predictor([str(tmp_path / "broken.jpg")])
    with pytest.raises(ValueError, match="per image"):
        predictor([image, image], [[[0, 0, 5, 5]]])
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        predictor([image], [[[1, 2, 3]]])
    items = [("a", image, None), ("b", str(tmp_path / "broken.jpg"), None), ("c", image, [[0, 0, 9, 9]])]
    got = dict(predictor.iter_predict(items, errors="yield"))
    assert isinstance(got["b"], ValueError) and len(got["a"]) == 1 and len(got["c"]) == 1


@pytest.fixture(scope="module")
def checkpoint(small_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    vitpose.save_model(small_model, path)
    return str(path)


def test_cli_folder_with_a_broken_image(checkpoint, tmp_path):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(synthetic_images(3)):
        Image.fromarray(im).save(folder / f"{i + 1:012d}.png")
    (folder / "000000000009.jpg").write_bytes(b"\xff\xd8 truncated")
    boxes = [{"image_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9, "category_id": 1},
             {"image_id": 2, "bbox": [5, 5, 60, 90], "score": 0.8, "category_id": 1},
             {"image_id": 2, "bbox": [5, 5, 60, 90], "score": 0.8, "category_id": 2},  # not a person
             {"image_id": 3, "bbox": [0, 0, 30, 30], "score": 0.7, "category_id": 1}]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "out"
    rc = cli.main(["predict", "--checkpoint", checkpoint, "--boxes", str(tmp_path / "boxes.json"),
                   str(folder), "--out", str(out), "--quiet", "--batch-size", "2"])
    assert rc == 1  # one item failed, the others finished
    results = json.loads((out / "keypoints.json").read_text())
    assert sorted(r["image_id"] for r in results) == [1, 2, 3]
    assert all(len(r["keypoints"]) == 51 for r in results)
    assert sorted(os.listdir(out / "vis")) == [f"{i:012d}.jpg" for i in (1, 2, 3)]


def test_cli_video(checkpoint, tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for im in synthetic_images(4):
        writer.write(np.ascontiguousarray(cv2.resize(im, (96, 64))))
    writer.release()
    (tmp_path / "boxes.json").write_text(json.dumps({f"clip.mp4:{i}": [[5, 5, 40, 50, 0.9]] for i in range(4)}))
    out = tmp_path / "out"
    rc = cli.main(["predict", "--checkpoint", checkpoint, "--boxes", str(tmp_path / "boxes.json"), path,
                   "--out", str(out), "--quiet"])
    assert rc == 0
    results = json.loads((out / "keypoints.json").read_text())
    assert sorted(r["frame"] for r in results) == [0, 1, 2, 3]
    assert (out / "clip_pose.mp4").stat().st_size > 0


def test_cli_evaluate_and_module_entry(checkpoint, tmp_path, monkeypatch):
    from PIL import Image
    from test_vitpose_evaluation import synthetic_coco
    gt = synthetic_coco(num_images=2, per_image=1, size=(120, 160))
    (tmp_path / "img").mkdir()
    for im in gt["images"]:
        Image.fromarray(synthetic_images(1)[0]).save(tmp_path / "img" / im["file_name"])
    dets = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0, "category_id": 1} for a in gt["annotations"]]
    (tmp_path / "ann.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    monkeypatch.chdir(tmp_path)  # the results JSON is written by default, here to result_keypoints.json
    rc = cli.main(["evaluate", "--checkpoint", checkpoint, "--ann", str(tmp_path / "ann.json"), "--dets",
                   str(tmp_path / "dets.json"), "--images", str(tmp_path / "img"), "--quiet"])
    assert rc == 0 and len(json.loads((tmp_path / "result_keypoints.json").read_text())) == 2
    help_text = subprocess.run([sys.executable, "-m", "vitpose", "predict", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--boxes" in help_text
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "absent.pth"), "x.jpg", "--out",
                     str(tmp_path / "o")]) == 2
