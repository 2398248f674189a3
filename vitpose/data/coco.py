"""COCO-format keypoint datasets for top-down training and evaluation.

A dataset is an annotation JSON (COCO keypoint format) and a folder of images. Its keypoint set
(K, flip order, OKS sigmas, upper body) comes from the person category's metadata:

- ``keypoints``: the K names (COCO standard);
- ``flip_pairs`` (0-based pairs) or else pairs found by name (``left_x`` / ``right_x``, ``l_x`` /
  ``r_x``);
- ``sigmas``: K OKS sigmas (needed for AP); the COCO sigmas when the names are COCO's 17;
- ``upper_body_ids``: for the half-body augmentation; else found by name (head, eyes, ears, nose,
  neck, shoulders, elbows, wrists, hands); none found: half-body off.

Samples are people (one per annotation with a labelled keypoint, boxes cleaned as mmpose 0.x
TopDownCocoDataset does) with their ground-truth box, or the boxes of a detection file for
evaluation. ``TopDownDataset[i]`` decodes the image (in DataLoader workers) and draws the
sample's augmentation numbers; ``vitpose.data.augment.TopDownAugment`` does the rest on the device.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..infer.pipeline import load_image
from . import augment as aug
from .keypoints import COCO_SIGMAS, DATASETS, KeypointSet, register_dataset

COCO_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle")
_UPPER_WORDS = ("head", "eye", "ear", "nose", "neck", "shoulder", "elbow", "wrist", "hand", "thorax", "mouth")


# ------------------------------------------------------------------------------------------------
# Keypoint metadata
# ------------------------------------------------------------------------------------------------
def _pairs_by_name(names) -> list[tuple[int, int]]:
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        for left, right in (("left_", "right_"), ("l_", "r_"), ("left", "right")):
            if n.startswith(left) and right + n[len(left):] in index:
                pairs.append((i, index[right + n[len(left):]]))
                break
    return pairs


def keypoint_set_from_category(category: dict, source: str = "annotations") -> KeypointSet:
    """The keypoint set a person category describes, registered under its name (reused when an
    identical set is registered already, e.g. 'coco')."""
    names = category.get("keypoints")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{source}: the category {category.get('name')!r} has no 'keypoints' name list "
                         "(COCO keypoint format)")
    K = len(names)
    coco_like = tuple(names) == COCO_NAMES
    if "flip_pairs" in category:
        pairs = [tuple(int(v) for v in p) for p in category["flip_pairs"]]
    else:
        pairs = _pairs_by_name(names)
    flip = list(range(K))
    for a, b in pairs:
        if not (0 <= a < K and 0 <= b < K):
            raise ValueError(f"{source}: flip pair {[a, b]} is outside the {K} keypoints")
        flip[a], flip[b] = b, a
    sigmas = category.get("sigmas", COCO_SIGMAS if coco_like else None)
    if "upper_body_ids" in category:
        upper = category["upper_body_ids"]
    else:
        upper = [i for i, n in enumerate(names) if any(w in n.lower() for w in _UPPER_WORDS)] or None
    skeleton = tuple((a - 1, b - 1) for a, b in category.get("skeleton", []))
    for existing in DATASETS.values():  # e.g. the synthetic set is COCO's keypoint set
        if (existing.num_keypoints == K and existing.flip_indices == tuple(flip)
                and existing.sigmas == (tuple(float(s) for s in sigmas) if sigmas is not None else None)
                and existing.upper_body_ids == (tuple(upper) if upper is not None else None)):
            return existing
    name = re.sub(r"\W+", "_", str(category.get("name", "keypoints"))) + f"_{K}"
    return register_dataset(name, K, flip, skeleton, sigmas, upper)


# ------------------------------------------------------------------------------------------------
# Splits and samples
# ------------------------------------------------------------------------------------------------
@dataclass
class Split:
    """An annotation file and its image folder."""
    ann_file: str
    image_dir: str

    def check(self) -> "Split":
        for what, path in (("annotation file", self.ann_file), ("image folder", self.image_dir)):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{what} not found: {path}")
        return self


def find_split(data_dir: str, split: str) -> Split | None:
    """DIR/annotations/{split}.json + DIR/images (``vitpose synth``), or the COCO 2017 layout
    DIR/annotations/person_keypoints_{split}2017.json + DIR/{split}2017. None when neither exists."""
    ours = Split(os.path.join(data_dir, "annotations", f"{split}.json"), os.path.join(data_dir, "images"))
    coco = Split(os.path.join(data_dir, "annotations", f"person_keypoints_{split}2017.json"),
                 os.path.join(data_dir, f"{split}2017"))
    for s in (ours, coco):
        if os.path.exists(s.ann_file):
            return s
    return None


def load_coco(ann_file):
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(os.fspath(ann_file))


def person_category(coco) -> dict:
    cats = [c for c in coco.dataset.get("categories", []) if c.get("keypoints")]
    if not cats:
        raise ValueError("the annotation file has no category with 'keypoints' (COCO keypoint format)")
    return cats[0]


def gt_samples(coco, image_dir: str, keypoints: KeypointSet) -> list[dict]:
    """One sample per person with a labelled keypoint, its box cleaned as mmpose 0.x does."""
    out = []
    K = keypoints.num_keypoints
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        width, height = info["width"], info["height"]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            if "bbox" not in ann or "keypoints" not in ann:
                continue
            x, y, w, h = ann["bbox"]
            x1, y1 = max(0, x), max(0, y)
            x2, y2 = min(width - 1, x1 + max(0, w - 1)), min(height - 1, y1 + max(0, h - 1))
            if ann.get("area", 1) <= 0 or x2 <= x1 or y2 <= y1:
                continue
            kps = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
            if kps.shape[0] != K:
                raise ValueError(f"annotation {ann.get('id')} has {kps.shape[0]} keypoints, the category {K}")
            if kps.max() == 0 or ann.get("num_keypoints", 1) == 0:
                continue
            out.append({"image_file": os.path.join(image_dir, info["file_name"]), "image_id": image_id,
                        "keypoints": kps[:, :2].copy(), "visible": np.minimum(1, kps[:, 2]),
                        "box": np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32), "box_score": 1.0})
    return out


class TopDownDataset(torch.utils.data.Dataset):
    """People of one split for training: ``dataset[(epoch, i)]`` (or ``dataset[i]``, epoch 0) ->
    dict with the decoded image (3, H, W) uint8, keypoints (K, 2), visible (K,), the box (x, y, w, h),
    the box centre's load-time offset and the augmentation draws (seeded by (seed, epoch, i)).
    ``pad_to``: keypoints padded (visible 0) to this K, to batch with datasets of more keypoints."""

    def __init__(self, split: Split, *, augment: aug.AugmentConfig | None = None, seed: int = 0,
                 dataset_index: int = 0, pad_to: int | None = None):
        split.check()
        self.split = split
        self.coco = load_coco(split.ann_file)
        self.keypoints = keypoint_set_from_category(person_category(self.coco), split.ann_file)
        self.augment = augment or aug.AugmentConfig()
        self.seed, self.dataset_index = int(seed), int(dataset_index)
        self.pad_to = max(pad_to or 0, self.keypoints.num_keypoints)
        self.samples = gt_samples(self.coco, split.image_dir, self.keypoints)
        if not self.samples:
            raise ValueError(f"{split.ann_file}: no person with a labelled keypoint")
        # mmpose 0.x _xywh2cs, at load time in training: 30% of the boxes get their centre moved
        # by up to 0.2 of the box size, once (its database is built once).
        rng = np.random.default_rng([self.seed, 1000 + self.dataset_index])
        for s in self.samples:
            s["center_offset"] = np.zeros(2, np.float32)
            if rng.random() < self.augment.center_jitter_prob:
                s["center_offset"] = (0.4 * (rng.random(2) - 0.5) * s["box"][2:]).astype(np.float32)

    def __len__(self):
        return len(self.samples)

    @property
    def max_image_size(self) -> tuple[int, int]:
        """(H, W): the largest height and width of the split's images (from the annotation file)."""
        imgs = self.coco.imgs.values()
        return max(im["height"] for im in imgs), max(im["width"] for im in imgs)

    def __getitem__(self, key) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        s = self.samples[i]
        K = self.pad_to
        kp = np.zeros((K, 2), np.float32)
        vis = np.zeros(K, np.float32)
        kp[: len(s["keypoints"])], vis[: len(s["visible"])] = s["keypoints"], s["visible"]
        draws = aug.draw(np.random.default_rng([self.seed, self.dataset_index, int(epoch), int(i)]))
        return {"image": load_image(s["image_file"]), "keypoints": torch.from_numpy(kp),
                "visible": torch.from_numpy(vis), "box": torch.from_numpy(s["box"]),
                "center_offset": torch.from_numpy(s["center_offset"]), "draws": torch.from_numpy(draws),
                "dataset_index": self.dataset_index, "index": i}


def collate(items: list[dict]) -> dict:
    """Samples -> a batch. Images stay a list (their sizes differ), ``image_index`` points into it."""
    images = [it["image"] for it in items]
    image_index = list(range(len(items)))
    stack = {k: torch.stack([it[k] for it in items]) for k in ("keypoints", "visible", "box", "center_offset", "draws")}
    return {"images": images, "image_index": torch.tensor(image_index), **stack,
            "dataset_index": torch.tensor([it["dataset_index"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


class ConcatTopDown(torch.utils.data.Dataset):
    """Several datasets as one (ViTPose+): global index -> (dataset, local index); every sample
    carries its dataset_index, so one batch mixes datasets."""

    def __init__(self, datasets: list[TopDownDataset]):
        self.datasets = datasets
        self.offsets = np.cumsum([0] + [len(d) for d in datasets])

    def __len__(self):
        return int(self.offsets[-1])

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        d = int(np.searchsorted(self.offsets, i, side="right") - 1)
        item = self.datasets[d][(epoch, i - int(self.offsets[d]))]
        item["index"] = i
        return item


# ------------------------------------------------------------------------------------------------
# Evaluation inputs: whole images with their boxes, decoded in DataLoader workers
# ------------------------------------------------------------------------------------------------
class EvalImages(torch.utils.data.Dataset):
    """(image_id, image (3, H, W) uint8, boxes (n, 5)). An image that fails to load is passed on as
    its path, so that the predictor reports the error for that image and goes on."""

    def __init__(self, coco, image_dir: str, boxes: dict, image_ids):
        self.coco, self.image_dir, self.boxes = coco, image_dir, boxes
        self.image_ids = list(image_ids)

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, i):
        image_id = self.image_ids[i]
        path = os.path.join(self.image_dir, self.coco.imgs[image_id]["file_name"])
        try:
            image = load_image(path)
        except Exception:  # the predictor loads it again and reports the error
            image = path
        return image_id, image, self.boxes[image_id]


def gt_boxes(coco) -> dict:
    """{image_id: (n, 5)} ground-truth person boxes (with a labelled keypoint), score 1."""
    out = {}
    for image_id in coco.getImgIds():
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
                if a.get("num_keypoints", 1) > 0 and "bbox" in a and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        if anns:
            out[image_id] = np.array([[*a["bbox"][:4], 1.0] for a in anns], dtype=np.float64)
    return out
