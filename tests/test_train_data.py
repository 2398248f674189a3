"""Training data: the synthetic set, COCO-format metadata, and the device-side augmentation checked
against mmpose 0.x's formulas (written out here) and OpenCV's warpAffine."""
import json
import math
import os

import numpy as np
import pytest
import torch

from vitpose.data import augment as aug
from vitpose.data.coco import TopDownDataset, collate, find_split, keypoint_set_from_category
from vitpose.data.keypoints import COCO_FLIP_INDICES, keypoint_set
from vitpose.data.synth import COCO_KEYPOINT_NAMES, split_image, write_dataset
from vitpose.infer.pipeline import crop_batch, image_to_crop

IN = (48, 64)  # crop (W, H)


# ------------------------------------------------------------------------------------------------
# vitpose synth
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, 12, 3, seed=5)
    return out


def test_synth_is_deterministic_per_seed(synth, tmp_path):
    write_dataset(tmp_path / "again", 12, 3, seed=5)
    write_dataset(tmp_path / "other", 12, 3, seed=6)
    for split in ("train", "val"):
        a = (synth / "annotations" / f"{split}.json").read_bytes()
        assert a == (tmp_path / "again" / "annotations" / f"{split}.json").read_bytes()
        assert a != (tmp_path / "other" / "annotations" / f"{split}.json").read_bytes()
    for name in os.listdir(synth / "images"):
        assert (synth / "images" / name).read_bytes() == (tmp_path / "again" / "images" / name).read_bytes()
    # image i depends on (seed, split, i) only: a bigger set starts with the same pictures
    im, anns = split_image(5, "train", 2)
    im2, anns2 = split_image(5, "train", 2)
    assert np.array_equal(np.asarray(im), np.asarray(im2)) and len(anns) == len(anns2)


def test_synth_annotations_are_coco(synth):
    data = json.loads((synth / "annotations" / "train.json").read_text())
    cat = data["categories"][0]
    assert cat["keypoints"] == list(COCO_KEYPOINT_NAMES) and len(cat["sigmas"]) == 17
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    per_image = {}
    vis_seen = set()
    for a in data["annotations"]:
        w, h = sizes[a["image_id"]]
        kps = np.array(a["keypoints"]).reshape(17, 3)
        vis_seen |= set(kps[:, 2].tolist())
        assert set(kps[:, 2]) <= {0, 1, 2} and a["num_keypoints"] == int((kps[:, 2] > 0).sum()) > 0
        assert (kps[kps[:, 2] == 0, :2] == 0).all()  # unlabelled: zeros, as COCO
        lab = kps[kps[:, 2] > 0]
        assert (lab[:, 0] >= 0).all() and (lab[:, 0] <= w - 1).all() and (lab[:, 1] <= h - 1).all()
        x, y, bw, bh = a["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and 0 < a["area"] <= bw * bh
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert vis_seen == {0.0, 1.0, 2.0}            # truncation and occlusion both happen
    assert max(per_image.values()) > 1             # several people per image


def test_synth_figures_face_the_camera():
    """Left/right is geometric: an upright figure's left shoulder and hip are on the image right."""
    from vitpose.data.synth import random_pose
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = random_pose(rng)
        assert k[5, 0] > k[6, 0] and k[11, 0] > k[12, 0] and k[1, 0] > k[2, 0]


# ------------------------------------------------------------------------------------------------
# Keypoint metadata from the annotation file
# ------------------------------------------------------------------------------------------------
def test_keypoint_set_from_category_metadata():
    coco = keypoint_set_from_category({"name": "person", "keypoints": list(COCO_KEYPOINT_NAMES)})
    assert coco.name == "coco" and coco.flip_indices == COCO_FLIP_INDICES  # pairs found by name
    names = ["head", "l_hand", "r_hand", "tail", "l_foot", "r_foot"]
    ks = keypoint_set_from_category({"name": "critter", "keypoints": names, "sigmas": [0.05] * 6})
    assert ks.num_keypoints == 6 and ks.flip_indices == (0, 2, 1, 3, 5, 4)
    assert ks.upper_body_ids == (0, 1, 2) and ks.sigmas == (0.05,) * 6
    assert keypoint_set(ks.name) is ks
    pairs = keypoint_set_from_category({"name": "x", "keypoints": ["a", "b", "c"], "flip_pairs": [[0, 2]]})
    assert pairs.flip_indices == (2, 1, 0) and pairs.sigmas is None and pairs.upper_body_ids is None
    with pytest.raises(ValueError, match="flip pair"):
        keypoint_set_from_category({"name": "y", "keypoints": ["a", "b"], "flip_pairs": [[0, 5]]})
    with pytest.raises(ValueError, match="keypoints"):
        keypoint_set_from_category({"name": "z"})


# ------------------------------------------------------------------------------------------------
# The warp with rotation and flip = mmpose's TopDownRandomFlip + TopDownAffine(use_udp=True)
# ------------------------------------------------------------------------------------------------
def mmpose_udp_matrix(theta_deg, center, input_size, scale):
    """mmpose.core.post_processing.get_warp_matrix(theta, c * 2, image_size - 1, s), as written there."""
    t = math.radians(theta_deg)
    sx, sy = (input_size[0] - 1) / scale[0], (input_size[1] - 1) / scale[1]
    size_in = 2 * np.asarray(center, dtype=np.float64)
    return np.array([
        [math.cos(t) * sx, -math.sin(t) * sx,
         sx * (-0.5 * size_in[0] * math.cos(t) + 0.5 * size_in[1] * math.sin(t) + 0.5 * scale[0])],
        [math.sin(t) * sy, math.cos(t) * sy,
         sy * (-0.5 * size_in[0] * math.sin(t) - 0.5 * size_in[1] * math.cos(t) + 0.5 * scale[1])]])


def mmpose_flip(points, center, width):
    """TopDownRandomFlip: x -> width - 1 - x for the image, the joints and the centre."""
    p, c = np.array(points, dtype=np.float64), np.array(center, dtype=np.float64)
    p[..., 0] = width - 1 - p[..., 0]
    c[0] = width - 1 - c[0]
    return p, c


CASES = [  # centre, scale (pixels), rotation (degrees), flip
    ((60., 45.), (50., 66.), 0.0, False), ((60., 45.), (50., 66.), 30.0, False),
    ((40., 70.), (80., 106.), -65.0, True), ((100., 20.), (30., 40.), 12.5, True), ((5., 5.), (60., 80.), 80.0, False),
]


def test_keypoints_follow_mmpose_flip_and_udp_affine():
    width = 130
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 120, (7, 2))
    for c, s, r, f in CASES:
        got = image_to_crop(torch.tensor(pts)[None], torch.tensor([c], dtype=torch.float64),
                            torch.tensor([s], dtype=torch.float64), IN, torch.tensor([r]), torch.tensor([f]))[0]
        p, cc = mmpose_flip(pts, c, width) if f else (pts, np.array(c))
        m = mmpose_udp_matrix(r, cc, IN, s)
        want = p @ m[:, :2].T + m[:, 2]
        assert np.abs(got.numpy() - want).max() < 1e-9, (c, s, r, f)


def test_crops_match_opencv_with_rotation_and_flip():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    h, w = 110, 130
    image = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 4)
    centers = torch.tensor([c for c, _, _, _ in CASES])
    scales = torch.tensor([s for _, s, _, _ in CASES])
    rot = torch.tensor([r for _, _, r, _ in CASES])
    flip = torch.tensor([f for _, _, _, f in CASES])
    crops = crop_batch([torch.from_numpy(image).permute(2, 0, 1)], torch.zeros(len(CASES), dtype=torch.long),
                       centers, scales, IN, rot, flip)
    for n, (c, s, r, f) in enumerate(CASES):
        src, cc = (image[:, ::-1].copy(), mmpose_flip(np.zeros((1, 2)), c, w)[1]) if f else (image, np.array(c))
        want = cv2.warpAffine(src, mmpose_udp_matrix(r, cc, IN, s), IN, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        got = crops[n].permute(1, 2, 0).numpy()
        inside = cv2.warpAffine(np.ones((h, w), np.float32), mmpose_udp_matrix(r, cc, IN, s), IN,
                                flags=cv2.INTER_NEAREST) > 0
        inside = cv2.erode(inside.astype(np.uint8), np.ones((3, 3))) > 0  # away from the image border
        # OpenCV quantizes sample positions to 1/32 pixel: a small difference on a smooth image.
        assert inside.sum() > 100 and np.abs(got - want)[inside].max() < 0.5, n
        assert np.abs(got - want)[inside].mean() < 0.05, n


# ------------------------------------------------------------------------------------------------
# The batched augmentation
# ------------------------------------------------------------------------------------------------
def mmpose_half_body(joints, visible, upper_ids, aspect, take_upper_draw):
    """mmpose 0.x TopDownHalfBodyTransform.half_body_transform, with its randn draw given."""
    upper = [joints[j] for j in range(len(joints)) if visible[j] > 0 and j in upper_ids]
    lower = [joints[j] for j in range(len(joints)) if visible[j] > 0 and j not in upper_ids]
    if take_upper_draw < 0.5 and len(upper) > 2:
        sel = upper
    elif len(lower) > 2:
        sel = lower
    else:
        sel = upper
    if len(sel) < 2:
        return None
    sel = np.array(sel)
    center = sel.mean(0)
    w, h = sel.max(0) - sel.min(0)
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, np.array([w, h]) * 1.5


def test_half_body_matches_mmpose():
    rng = np.random.default_rng(2)
    B, K = 40, 17
    kp = rng.uniform(0, 100, (B, K, 2))
    vis = (rng.random((B, K)) < 0.6).astype(np.float32)
    vis[0, :] = 0
    vis[0, [0, 12]] = 1  # 1 upper, 1 lower: nothing to take
    draws = rng.normal(size=B)
    upper = torch.zeros(B, K, dtype=torch.bool)
    upper[:, :11] = True
    c, s, applied = aug.half_body(torch.tensor(kp), torch.tensor(vis) > 0, upper, torch.ones(B, dtype=torch.bool),
                                  torch.tensor(draws) < 0.5, 0.75, 1.5)
    for b in range(B):
        want = mmpose_half_body(kp[b], vis[b], range(11), 0.75, draws[b])
        assert bool(applied[b]) == (want is not None)
        if want is not None:
            assert np.allclose(c[b].numpy(), want[0]) and np.allclose(s[b].numpy(), want[1])


def test_augmented_batch_targets_and_flip_labels(synth):
    ds = TopDownDataset(find_split(str(synth), "train"), seed=3)
    batch = collate([ds[(0, i)] for i in range(min(8, len(ds)))])
    A = aug.TopDownAugment([ds.keypoints], input_size=IN)
    x = A(batch, "cpu")
    assert x["pixels"].shape == (len(batch["index"]), 3, 64, 48) and x["targets"].shape[1:] == (17, 16, 12)
    # the same draws give the same batch; the draws depend on (seed, epoch, index) only
    again = A(collate([ds[(0, i)] for i in range(min(8, len(ds)))]), "cpu")
    assert torch.equal(again["pixels"], x["pixels"]) and torch.equal(again["targets"], x["targets"])
    assert not torch.equal(ds[(1, 0)]["draws"], ds[(0, 0)]["draws"])
    # flipped samples: each keypoint's label is its mirror partner's, at the mirrored place
    plain = aug.TopDownAugment([ds.keypoints], input_size=IN, config=aug.AugmentConfig.off())
    b = collate([ds[(0, 0)]])
    b["draws"] = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 1.0]])  # flip; no half body, scale 1, rotation 0
    flipped = A(b, "cpu")
    straight = plain(b, "cpu")
    fi = torch.tensor(COCO_FLIP_INDICES)
    mirrored = straight["keypoints"][0, fi].clone()
    mirrored[:, 0] = IN[0] - 1 - mirrored[:, 0]
    lab = straight["weights"][0, fi] > 0
    assert torch.allclose(flipped["keypoints"][0][lab], mirrored[lab], atol=1e-4)
    assert torch.allclose(flipped["pixels"][0], straight["pixels"][0].flip(-1), atol=1e-4)
