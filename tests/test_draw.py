"""Pictures: sizes follow the image and the person, keypoints under the threshold are not drawn,
boxes, scores and track ids are labelled, and one person's heatmaps can be shown beside the crop
(the predictor's person_heatmaps and the CLI's --heatmaps)."""
import json
import os

import numpy as np
import pytest
import torch

import vitpose
from vitpose import cli
from vitpose.infer.draw import Sizes, colorize, draw_poses, heatmap_view, track_color
from vitpose.infer.pipeline import Pose, TopDownPredictor, box_to_center_scale, image_to_crop


def person(scale=1.0, track_id=None, low=()):
    """An upright COCO stick figure in a 200x300 box at (50, 40), times scale."""
    kp = np.array([[150, 70], [160, 60], [140, 60], [170, 65], [130, 65], [190, 120], [110, 120], [200, 180],
                   [100, 180], [205, 230], [95, 230], [175, 230], [125, 230], [180, 290], [120, 290], [182, 330],
                   [118, 330]], np.float32) * scale
    sc = np.full(17, 0.9, np.float32)
    sc[list(low)] = 0.1
    return Pose(kp, sc, np.array([50, 40, 200, 300]) * scale, 0.87, "coco", track_id=track_id)


def changed(a, b):
    return np.any(a != b, axis=-1)


def test_sizes_follow_the_image_and_the_person():
    small, big = Sizes.for_image(120, 160), Sizes.for_image(2160, 3840)
    assert small.outline == 1 and big.outline >= 5 and big.font > 3 * small.font
    assert big.limb([0, 0, 600, 1200], 2160, 3840) > big.limb([0, 0, 60, 120], 2160, 3840) >= 1
    assert big.limb([0, 0, 6000, 12000], 2160, 3840) == round(2160 / 120)   # capped by the image


@pytest.mark.parametrize("scale", [0.25, 1.0, 6.0])
def test_skeleton_keypoints_box_label_at_any_size(scale):
    h, w = int(400 * scale), int(300 * scale)
    image = np.full((h, w, 3), 128, np.uint8)
    pose = person(scale, track_id=7, low=(15,))
    out = draw_poses(image, [pose], kpt_thr=0.3)
    assert out.shape == image.shape and out.dtype == np.uint8
    diff = changed(out, image)
    x, y = pose.keypoints[9].round().astype(int)                  # a drawn keypoint (left wrist)
    assert diff[y, x]
    x, y = pose.keypoints[15].round().astype(int)                 # an ankle under the threshold: untouched
    lo = max(1, int(2 * scale))
    assert not diff[y - lo:y + lo + 1, x - lo:x + lo + 1].any()
    bx, by, bw, bh = pose.box.round().astype(int)
    assert diff[by + bh // 2, bx] or diff[by + bh // 2, bx + 1]   # the box outline
    assert diff[max(0, by - 3), bx + 2:bx + 10].any()               # the label "id 7 0.87" above it
    # the label's colour is the track's
    assert (out[max(0, by - 2), bx + 1] == np.array(track_color(7))).all() or scale < 1


def test_colours_of_tracks_and_labels_can_be_replaced():
    assert len({track_color(i) for i in range(12)}) == 12
    image = np.zeros((400, 300, 3), np.uint8)
    a = draw_poses(image, [person()], label=lambda p: "", boxes=False)
    b = draw_poses(image, [person()], label=lambda p: "custom text", boxes=False)
    assert changed(a, b).any() and not changed(a, draw_poses(image, [person()], scores=False, boxes=False)).any()


def test_heatmap_view_layout():
    crop = np.full((256, 192, 3), 90, np.uint8)
    hm = np.zeros((17, 64, 48), np.float32)
    hm[:, 20, 30] = 1.0
    view = heatmap_view(crop, hm, None)
    cell_w = 64
    assert view.shape == (256, 2 * 192 + 6 * cell_w + 2 * 3, 3)
    assert colorize(np.array([0.0, 1.0])).tolist() == [[0, 0, 4], [252, 255, 164]]


def test_person_heatmaps_agree_with_the_predictor():
    """A stand-in network whose heatmaps are its crop (peaked on a bright blob, as a trained model's
    are): the crop, heatmaps and decoded pose person_heatmaps returns are those of the predictor."""
    class Probe:
        def __call__(self, x, dataset_index=0):
            h = torch.nn.functional.interpolate(x[:, :1].float(), size=(64, 48), mode="bilinear", align_corners=True)
            h = h - h.amin(dim=(2, 3), keepdim=True)
            return (h / h.amax(dim=(2, 3), keepdim=True)).repeat(1, 17, 1, 1)

    y, x = np.mgrid[0:200, 0:260]
    blob = 255 * np.exp(-((x - 91.3) ** 2 + (y - 97.6) ** 2) / 50.0)
    image = np.repeat(blob[..., None], 3, axis=2).astype(np.uint8)
    box = [30, 20, 120, 160, 0.8]
    model = vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=1, num_heads=2)).eval()
    predictor = TopDownPredictor(model)
    predictor.model = Probe()
    crop, heatmaps, in_crop = predictor.person_heatmaps(image, box)
    assert crop.shape == (256, 192, 3) and crop.dtype == np.uint8 and heatmaps.shape == (17, 64, 48)
    pose = predictor([image], [[box]])[0][0]
    np.testing.assert_allclose(in_crop.scores, pose.scores, rtol=1e-5, atol=1e-6)
    c, s = box_to_center_scale(torch.tensor([box[:4]], dtype=torch.float32), predictor.input_size)
    want = image_to_crop(torch.from_numpy(pose.keypoints)[None], c, s, predictor.input_size)[0].numpy()
    assert np.abs(in_crop.keypoints - want).max() < 0.01  # same maps, same decoding, in crop pixels
    assert np.abs(pose.keypoints - [91.3, 97.6]).max() < 0.05
    view = heatmap_view(crop, heatmaps, in_crop)
    assert view.shape[0] == 256


def test_cli_heatmap_pictures(tmp_path):
    from PIL import Image
    model = vitpose.ViTPose(vitpose.vitpose_config("S", embed_dim=32, depth=1, num_heads=2))
    vitpose.save_model(model, tmp_path / "m.safetensors")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((120, 90, 3), 200, np.uint8)).save(tmp_path / "in" / "a.png")
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "m.safetensors"), str(tmp_path / "in"),
                     "--out", str(tmp_path / "o"), "--quiet", "--heatmaps", "0", "--no-flip"]) == 0
    assert sorted(os.listdir(tmp_path / "o" / "vis")) == ["a.jpg", "a_heatmaps.jpg"]
    assert Image.open(tmp_path / "o" / "vis" / "a_heatmaps.jpg").size[1] == 256
    assert json.loads((tmp_path / "o" / "keypoints.json").read_text())[0]["file_name"] == "a.png"
