"""TokenPose through the unchanged top-down pipeline and CLI: the model says its crop size and its
decoding (the official HRNet+DARK geometry and post-processing), a blob decodes to its center,
`vitpose predict` / `vitpose evaluate` run on an official-format TokenPose checkpoint."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitpose
from vitpose import cli
from vitpose.infer.pipeline import TopDownPredictor, box_to_center_scale, crop_batch, crop_to_image, image_to_crop

from test_vitpose_pipeline import blob_image, synthetic_images

IN = (192, 256)


def official_affine(center, scale_px, output_size):
    """get_affine_transform(center, scale, 0, output_size) of the official code (scale in pixels)."""
    cv2 = pytest.importorskip("cv2")
    c, w = np.asarray(center, np.float32), float(scale_px[0])
    dw, dh = output_size
    src = np.float32([c, c + [0, (w - 1) * -0.5], c + [(w - 1) * -0.5, (w - 1) * -0.5]])
    mid = np.float32([(dw - 1) * 0.5, (dh - 1) * 0.5])
    dst = np.float32([mid, mid + [0, (dw - 1) * -0.5], mid + [(dw - 1) * -0.5, (dw - 1) * -0.5]])
    return cv2.getAffineTransform(src, dst)


def test_dark_geometry_is_the_official_crop():
    """Box -> center/scale as the official COCO loader (_xywh2cs) and crops equal cv2.warpAffine with
    the official affine (the box's padded width onto [0, W_in - 1] about the centers)."""
    cv2 = pytest.importorskip("cv2")
    boxes = torch.tensor([[20., 30, 60, 90], [-30, -20, 100, 80], [150, 100, 80, 80]])
    c, s = box_to_center_scale(boxes, IN, method="dark")
    for (x, y, w, h), cc, ss in zip(boxes.tolist(), c.tolist(), s.tolist()):
        w2, h2 = (w, w / 0.75) if w > 0.75 * h else (h * 0.75, h)
        assert np.allclose(cc, [x + (w - 1) * 0.5, y + (h - 1) * 0.5]) and np.allclose(ss, [1.25 * w2, 1.25 * h2])
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (150, 200, 3)).astype(np.float32), (0, 0), 3)
    crops = crop_batch([torch.from_numpy(image).permute(2, 0, 1)], torch.zeros(3, dtype=torch.long), c, s, IN,
                       method="dark")
    for n in range(3):
        want = cv2.warpAffine(image, official_affine(c[n].numpy(), s[n].numpy(), IN), IN, flags=cv2.INTER_LINEAR)
        assert np.abs(crops[n].permute(1, 2, 0).numpy() - want).max() < 0.02, n
    pts = torch.rand(3, 5, 2) * 100
    assert torch.allclose(crop_to_image(image_to_crop(pts, c, s, IN, method="dark"), c, s, IN, method="dark"), pts,
                          atol=1e-4)
    rot, flip = torch.tensor([30.0, -10.0, 0.0]), torch.tensor([True, False, True])
    there = image_to_crop(pts, c, s, IN, rot, flip, method="dark")
    assert torch.allclose(crop_to_image(there, c, s, IN, rot, flip, method="dark"), pts, atol=1e-3)


class DarkProbe(torch.nn.Module):
    """A pose model whose 17 heatmaps are the crop sampled at the heatmap pixels' crop positions in the
    official geometry (x -> x (W_in-1)/(W-1), y -> (H_in-1)/2 + (y - (H-1)/2) (W_in-1)/(W-1))."""

    input_size, decode_method, datasets, num_datasets = IN, "dark", ("coco",), 1

    def forward(self, x, dataset_index=0):
        H, W = IN[1] // 4, IN[0] // 4
        f = (IN[0] - 1) / (W - 1)
        u = torch.arange(W) * f
        v = (IN[1] - 1) / 2 + (torch.arange(H) - (H - 1) / 2) * f
        grid = torch.stack(torch.meshgrid(v / (IN[1] - 1) * 2 - 1, u / (IN[0] - 1) * 2 - 1, indexing="ij")[::-1], -1)
        h = F.grid_sample(x[:, :1].float(), grid[None].expand(len(x), -1, -1, -1), align_corners=True)
        h = h - h.amin(dim=(2, 3), keepdim=True)
        return (h / h.amax(dim=(2, 3), keepdim=True)).repeat(1, 17, 1, 1)


def test_blob_decodes_to_its_center():
    centers = [(123.4, 87.6), (40.3, 150.8)]
    images = [blob_image(h, w, *c, sigma=8.0) for (h, w), c in zip([(200, 300), (240, 100)], centers)]
    boxes = [[[90, 30, 70, 110, 0.9]], [[10, 100, 60, 90]]]
    for flip in (True, False):
        out = TopDownPredictor(DarkProbe(), flip=flip)(images, boxes)
        for poses, (cx, cy) in zip(out, centers):
            assert np.abs(poses[0].keypoints - [cx, cy]).max() < 0.05, (flip, poses[0].keypoints[0], cx, cy)


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    """An official-format TokenPose-T state dict (random weights with a visible response)."""
    torch.manual_seed(0)
    model = vitpose.build_model("tokenpose-t")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mlp_head" in name and p.dim() > 1:
                p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("tp") / "tokenpose_t_256x192.pth"
    torch.save(model.state_dict(), path)
    return str(path), model


def test_predictor_learns_size_and_decoding_from_the_model(official_checkpoint):
    path, model = official_checkpoint
    predictor = TopDownPredictor(path, device="cpu", batch_size=2, flip=False)
    assert (predictor.input_size, predictor.decode_method) == ((192, 256), "dark")
    images, boxes = synthetic_images(2), [[[10, 10, 50, 80, 0.9]], []]
    out = predictor(images, boxes)
    assert [len(o) for o in out] == [1, 0]
    assert out[0][0].keypoints.shape == (17, 2) and np.isfinite(out[0][0].keypoints).all()
    with torch.no_grad():  # the same keypoints as decoding the model's heatmaps by hand
        c, s = box_to_center_scale(torch.tensor([[10., 10, 50, 80]]), IN, method="dark")
        crop = crop_batch([torch.from_numpy(images[0]).permute(2, 0, 1)], torch.zeros(1, dtype=torch.long), c, s, IN,
                          method="dark")
        from vitpose.infer.pipeline import normalize
        import vitpose_kernels
        kp, _ = vitpose_kernels.decode_heatmaps(model.eval()(normalize(crop)), input_size=IN, bbox_centers=c,
                                                bbox_scales=s, method="dark")
    assert np.abs(out[0][0].keypoints - kp[0].numpy()).max() < 1e-3
    with pytest.raises(TypeError, match="pose model"):
        TopDownPredictor(torch.nn.Linear(2, 2))


def test_cli_predict_and_evaluate_with_an_official_tokenpose_checkpoint(official_checkpoint, tmp_path, monkeypatch):
    from PIL import Image
    from test_vitpose_evaluation import synthetic_coco
    path, _ = official_checkpoint
    gt = synthetic_coco(num_images=2, per_image=1, size=(120, 160))
    (tmp_path / "img").mkdir()
    for im in gt["images"]:
        Image.fromarray(synthetic_images(1)[0]).save(tmp_path / "img" / im["file_name"])
    dets = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0, "category_id": 1} for a in gt["annotations"]]
    (tmp_path / "ann.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["evaluate", "--checkpoint", path, "--ann", str(tmp_path / "ann.json"), "--dets",
                   str(tmp_path / "dets.json"), "--images", str(tmp_path / "img"), "--quiet"])
    assert rc == 0 and len(json.loads((tmp_path / "result_keypoints.json").read_text())) == 2
    rc = cli.main(["predict", "--checkpoint", path, "--boxes", str(tmp_path / "dets.json"), str(tmp_path / "img"),
                   "--out", str(tmp_path / "out"), "--quiet"])
    results = json.loads((tmp_path / "out" / "keypoints.json").read_text())
    assert rc == 0 and sorted(r["image_id"] for r in results) == [1, 2]
    assert all(len(r["keypoints"]) == 51 for r in results)


def test_onnx_export_decodes_with_the_models_method(tmp_path):
    """vitpose export --decode puts TokenPose's own decoding ("dark") in the graph."""
    pytest.importorskip("onnxruntime")
    from vitpose.export.onnx import export_onnx
    import onnxruntime as ort
    import vitpose_kernels
    torch.manual_seed(0)
    model = vitpose.build_model("tokenpose-t", img_size=(64, 48), patch_size=(8, 6), dim=32, heads=2, depth=1).eval()
    export_onnx(model, str(tmp_path / "tp.onnx"), decode=True, flip=False)
    x, c, s = torch.randn(2, 3, 64, 48), torch.tensor([[100., 120.], [50., 60.]]), torch.tensor([[80., 106.], [40., 53.]])
    kp = ort.InferenceSession(str(tmp_path / "tp.onnx")).run(None, {"pixel_values": x.numpy(), "bbox_centers": c.numpy(),
                                                                      "bbox_scales": s.numpy()})[0]
    with torch.no_grad():
        want, _ = vitpose_kernels.decode_heatmaps(model(x), input_size=(48, 64), bbox_centers=c, bbox_scales=s,
                                                  method="dark")
    assert np.abs(kp - want.numpy()).max() < 1e-2  # flat random-weight maps: float noise, amplified a little

