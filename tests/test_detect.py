"""Person detection with a transformers object detector from a local folder (a tiny, randomly
initialised RT-DETR saved here: nothing can be downloaded): the boxes are the library's own
post-processing of the person class, batched; thresholds, empty detections, NMS, the
predictor and the CLI."""
import json

import numpy as np
import pytest
import torch

import vitpose
from vitpose import cli
from vitpose.infer.detect import PersonDetector, box_iou, greedy_nms

transformers = pytest.importorskip("transformers")


def tiny_rtdetr(folder, labels=("person", "bicycle", "dog")):
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig
    torch.manual_seed(0)
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(backbone_config=backbone, encoder_hidden_dim=16, encoder_in_channels=[16, 24, 32],
                          encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16, num_queries=12,
                          decoder_in_channels=[16, 16, 16], decoder_ffn_dim=32, decoder_layers=1,
                          decoder_attention_heads=2, decoder_n_points=2, num_denoising=0,
                          id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = RTDetrForObjectDetection(config).eval()
    with torch.no_grad():  # spread the scores out, so that a threshold keeps some and drops others
        head = model.model.decoder.class_embed[-1]
        head.weight.normal_(0, 1.0)
        head.bias.zero_()
    model.save_pretrained(folder)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    return tiny_rtdetr(tmp_path_factory.mktemp("rtdetr"))


def images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 50 + 17 * i, 70 - 9 * i), dtype=torch.uint8, generator=g) for i in range(n)]


def library_people(folder, image, threshold):
    """What transformers itself finds for one image, person class only, as xywh + score."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection
    proc = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForObjectDetection.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**proc(images=[image], return_tensors="pt"))
    r = proc.post_process_object_detection(out, threshold=threshold, target_sizes=[tuple(image.shape[1:])])[0]
    h, w = image.shape[1:]
    rows = []
    for label, score, (x0, y0, x1, y1) in zip(r["labels"].tolist(), r["scores"].tolist(), r["boxes"].tolist()):
        x0, x1, y0, y1 = min(max(x0, 0), w), min(max(x1, 0), w), min(max(y0, 0), h), min(max(y1, 0), h)
        if label == 0 and x1 - x0 >= 1 and y1 - y0 >= 1:
            rows.append([x0, y0, x1 - x0, y1 - y0, score])
    rows.sort(key=lambda row: -row[4])
    return np.array(rows).reshape(-1, 5)


def test_boxes_are_the_library_post_processing_batched(detector_dir):
    det = PersonDetector(detector_dir, device="cpu", threshold=0.0, batch_size=2)
    calls = []
    det.model.register_forward_hook(lambda m, i, o: calls.append(len(o.logits)))
    ims = images(3)
    everyone = det(ims)
    assert calls == [2, 1]  # batches of 2 images
    threshold = float(np.median(np.concatenate([b[:, 4] for b in everyone])))
    det.threshold = threshold
    found = det(ims)
    for im, boxes, allb in zip(ims, found, everyone):
        h, w = im.shape[1:]
        want = library_people(detector_dir, im, threshold)
        assert boxes.shape == want.shape and boxes.shape[1] == 5
        np.testing.assert_allclose(boxes, want, rtol=1e-4, atol=1e-3)
        assert (boxes[:, 4] >= threshold).all() and (np.diff(boxes[:, 4]) <= 0).all()  # best first
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= w + 1e-4).all()
        assert (boxes[:, 1] + boxes[:, 3] <= h + 1e-4).all() and len(boxes) <= len(allb)
    assert sum(map(len, found)) < sum(map(len, everyone))  # the threshold dropped some
    det.max_people = 1
    assert [len(b) for b in det(ims)] == [min(1, len(b)) for b in found]


def test_empty_detections_and_the_predictor(detector_dir):
    model = vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=1, num_heads=2))
    det = PersonDetector(detector_dir, device="cpu", threshold=0.0)
    ims = images(2)
    poses = vitpose.predict(model, ims, detector=det, flip=False)
    for p, b in zip(poses, det(ims)):
        assert len(p) == len(b) > 0
        np.testing.assert_allclose(np.stack([q.box for q in p]), b[:, :4])
        assert p[0].keypoints.shape == (17, 2)
    det.threshold = 1.0  # nobody: every image gets an empty list, no forward pass of the pose model
    assert [b.shape for b in det(ims)] == [(0, 5), (0, 5)]
    assert vitpose.predict(model, ims, detector=det) == [[], []]


def test_a_detector_without_people_is_refused(tmp_path):
    folder = tiny_rtdetr(tmp_path / "d", labels=("cat", "dog"))
    with pytest.raises(ValueError, match="no 'person' class.*'cat'"):
        PersonDetector(folder, device="cpu")
    assert PersonDetector(folder, device="cpu", label="Dog").label_ids == [1]
    with pytest.raises(FileNotFoundError, match="detector folder not found"):
        PersonDetector(tmp_path / "absent")


def test_greedy_nms_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=g) * 20], 1)
    for iou in (0.3, 0.5, 0.7):
        kept = greedy_nms(boxes, iou).tolist()
        want = []
        for i in range(len(boxes)):  # keep i unless a kept, better box overlaps it more than iou
            if all(box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() <= iou for j in want):
                want.append(i)
        assert kept == want
    assert greedy_nms(boxes[:0], 0.5).tolist() == []


def test_cli_detector(detector_dir, tmp_path):
    from PIL import Image
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(images(2)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    model = vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=1, num_heads=2))
    vitpose.save_model(model, tmp_path / "m.safetensors")
    base = ["predict", "--checkpoint", str(tmp_path / "m.safetensors"), str(folder), "--quiet", "--no-draw",
            "--detector", detector_dir, "--device", "cpu"]
    assert cli.main(base + ["--out", str(tmp_path / "o"), "--det-thr", "0", "--max-people", "3"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    det = PersonDetector(detector_dir, device="cpu", threshold=0.0, max_people=3)
    found = det([vitpose.infer.load_image(str(folder / f"{i}.png")) for i in range(2)])
    assert [len(r["poses"]) for r in recs] == [len(b) for b in found] and all(len(b) for b in found)
    np.testing.assert_allclose([p["bbox"] for p in recs[0]["poses"]], found[0][:, :4], rtol=1e-6)
    assert json.loads((tmp_path / "o" / "job.json").read_text())["settings"]["det_thr"] == 0.0
    assert cli.main(base + ["--out", str(tmp_path / "e"), "--det-thr", "1"]) == 0  # nobody found: no poses
    assert [len(json.loads(x)["poses"]) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()] == [0, 0]
    with pytest.raises(SystemExit):
        cli.main(base + ["--out", str(tmp_path / "x"), "--boxes", "b.json"])  # one source of boxes
