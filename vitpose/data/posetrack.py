"""PoseTrack annotations (PoseTrack 2017 and 2018 JSON) as videos of frames of people.

Both formats load into one representation, with keypoints in the PoseTrack18 17-keypoint order
(nose, head_bottom, head_top, left/right ear (never annotated), then COCO's body order):

- PoseTrack18 (and the COCO-style merged files of DCPose / TAR-ViTPose): ``images`` (file_name,
  id, vid_id, frame_id, nframes, is_labeled, ignore_regions_x/_y) and ``annotations`` (image_id,
  track_id, keypoints 17 x (x, y, v), bbox, bbox_head), one or many videos per file;
- PoseTrack17: ``annolist`` (one video per file), each frame with ``image[0].name``, ``is_labeled``,
  ``ignore_regions`` and ``annorect`` (head box x1/y1/x2/y2, track_id, annopoints with the 15
  joint ids of the benchmark).

A keypoint is annotated unless stored as (0, 0) with visibility 0 (poseval's rule).
``save_posetrack18`` writes the PoseTrack18 form (ground truth, or predictions with scores).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import numpy as np

from .keypoints import POSETRACK_SKELETON

KEYPOINTS = ("nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle")
SKELETON = POSETRACK_SKELETON  # PoseTrack18's (its categories entry, 0-based)
# PoseTrack17 joint id (the benchmark's 15) -> index in the 17-keypoint order
FROM_15 = {0: 16, 1: 14, 2: 12, 3: 11, 4: 13, 5: 15, 6: 10, 7: 8, 8: 6, 9: 5, 10: 7, 11: 9, 12: 1, 13: 0, 14: 2}


@dataclass
class Person:
    keypoints: np.ndarray               # (17, 3) x, y, visibility (predictions: score)
    track_id: int = -1
    bbox: np.ndarray | None = None      # (4,) x, y, w, h
    head: np.ndarray | None = None      # (4,) x1, y1, x2, y2

    @property
    def annotated(self) -> np.ndarray:
        k = self.keypoints
        return ~((k[:, 0] == 0) & (k[:, 1] == 0) & (k[:, 2] == 0))

    def box(self, grow: float = 1.0) -> np.ndarray:
        """bbox, or the box around the annotated keypoints (grown by ``grow`` about its centre)."""
        if self.bbox is not None:
            return np.asarray(self.bbox, dtype=np.float64)
        pts = self.keypoints[self.annotated, :2]
        if not len(pts):
            return np.zeros(4)
        lo, hi = pts.min(0), pts.max(0)
        c, wh = (lo + hi) / 2, np.maximum(hi - lo, 1.0) * grow
        return np.array([c[0] - wh[0] / 2, c[1] - wh[1] / 2, wh[0], wh[1]])


@dataclass
class Frame:
    file_name: str
    index: int                          # position in the video, 0-based
    labeled: bool = False
    people: list = field(default_factory=list)
    ignore: list = field(default_factory=list)   # polygons, (m, 2) arrays
    image_id: int | None = None


@dataclass
class Video:
    name: str
    frames: list                        # Frame, in order


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def load_posetrack(path) -> list[Video]:
    """Videos from a PoseTrack JSON file or a folder of them (sorted by name)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".json"))
        if not files:
            raise ValueError(f"no .json files in {path}")
        return [v for f in files for v in load_posetrack(f)]
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and "annolist" in data:
        return [_from_posetrack17(data["annolist"], os.path.splitext(os.path.basename(path))[0])]
    if isinstance(data, dict) and "images" in data:
        return _from_posetrack18(data)
    raise ValueError(f"{path}: not PoseTrack JSON (expected 'images' + 'annotations' (2018) or 'annolist' (2017))")


def _one(v):
    return v[0] if isinstance(v, list) else v


def _from_posetrack17(annolist, name) -> Video:
    frames = []
    for i, entry in enumerate(annolist):
        frame = Frame(_one(entry["image"])["name"], i, bool(_one(entry.get("is_labeled", [0]))))
        for rect in entry.get("annorect", []) or []:
            kps = np.zeros((17, 3))
            points = (rect.get("annopoints") or [{}])
            for p in (_one(points) or {}).get("point", []):
                j = FROM_15.get(int(_one(p["id"])))
                if j is not None:
                    kps[j] = [float(_one(p["x"])), float(_one(p["y"])), float(_one(p.get("is_visible", [1])))]
            head = None
            if all(k in rect for k in ("x1", "y1", "x2", "y2")):
                head = np.array([float(_one(rect[k])) for k in ("x1", "y1", "x2", "y2")])
            frame.people.append(Person(kps, int(_one(rect.get("track_id", [-1]))), None, head))
        for region in entry.get("ignore_regions", []) or []:
            pts = [(float(_one(p["x"])), float(_one(p["y"]))) for p in region.get("point", [])]
            if len(pts) >= 3:
                frame.ignore.append(np.array(pts))
        frames.append(frame)
    return Video(name, frames)


def _from_posetrack18(data) -> list[Video]:
    by_image = defaultdict(list)
    for a in data.get("annotations", []):
        if a.get("category_id", 1) != 1 or "keypoints" not in a:
            continue
        kps = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        if len(kps) != 17:
            raise ValueError(f"annotation {a.get('id')}: {len(kps)} keypoints, PoseTrack18 has 17")
        if "scores" in a:  # predictions: per-keypoint scores in the third column
            kps[:, 2] = np.asarray(a["scores"], dtype=np.float64)
        by_image[a["image_id"]].append(Person(
            kps, int(a.get("track_id", -1)), np.asarray(a["bbox"], dtype=np.float64) if a.get("bbox") else None,
            _xywh_to_xyxy(a["bbox_head"]) if a.get("bbox_head") else None))
    videos = OrderedDict()
    for im in data["images"]:
        vid = str(im.get("vid_id", os.path.dirname(im["file_name"])))
        videos.setdefault(vid, []).append(im)
    out = []
    for vid, images in videos.items():
        images.sort(key=lambda im: (im.get("frame_id", im["id"]), im["id"]))
        frames = []
        for i, im in enumerate(images):
            f = Frame(im["file_name"], i, bool(im.get("is_labeled", True)), by_image.get(im["id"], []),
                      image_id=im["id"])
            for xs, ys in zip(im.get("ignore_regions_x", []) or [], im.get("ignore_regions_y", []) or []):
                if len(xs) >= 3:
                    f.ignore.append(np.stack([np.asarray(xs, float), np.asarray(ys, float)], 1))
            frames.append(f)
        out.append(Video(vid, frames))
    return out


def _xywh_to_xyxy(b):
    x, y, w, h = (float(v) for v in b)
    return np.array([x, y, x + w, y + h])


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def save_posetrack18(videos: list[Video], path, predictions: bool = False) -> None:
    """PoseTrack18 JSON. predictions=True writes each person's keypoints[:, 2] as ``scores`` (and
    visibility 1), as the benchmark expects of results."""
    images, annotations = [], []
    for v, video in enumerate(videos):
        for f in video.frames:
            image_id = f.image_id if f.image_id is not None else (v + 1) * 100000 + f.index
            im = {"file_name": f.file_name, "id": image_id, "frame_id": image_id, "vid_id": video.name,
                  "nframes": len(video.frames), "is_labeled": bool(f.labeled)}
            if f.ignore:
                im["ignore_regions_x"] = [p[:, 0].tolist() for p in f.ignore]
                im["ignore_regions_y"] = [p[:, 1].tolist() for p in f.ignore]
            images.append(im)
            for n, p in enumerate(f.people):
                k = np.asarray(p.keypoints, dtype=np.float64)
                a = {"image_id": image_id, "id": image_id * 100 + n, "category_id": 1, "track_id": int(p.track_id)}
                if predictions:
                    a["keypoints"] = np.concatenate([k[:, :2], np.ones((17, 1))], 1).reshape(-1).tolist()
                    a["scores"] = k[:, 2].tolist()
                else:
                    a["keypoints"] = k.reshape(-1).tolist()
                if p.bbox is not None:
                    a["bbox"] = [float(x) for x in p.bbox]
                if p.head is not None:
                    x1, y1, x2, y2 = (float(x) for x in p.head)
                    a["bbox_head"] = [x1, y1, x2 - x1, y2 - y1]
                annotations.append(a)
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINTS),
                           "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}]}
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# For the benchmark's metric
# ------------------------------------------------------------------------------------------------
def gt_frames(videos: list[Video]) -> dict:
    """{(video, frame index): evaluation.posetrack.GTFrame} of the labelled frames."""
    from ..evaluation.posetrack import GTFrame, to_15
    out = {}
    for video in videos:
        for f in video.frames:
            if not f.labeled:
                continue
            people = [p for p in f.people if p.head is not None]
            joints = to_15(np.stack([p.keypoints for p in people])) if people else np.zeros((0, 15, 3))
            ann = to_15(np.stack([p.annotated for p in people])[..., None])[..., 0] if people else np.zeros((0, 15), bool)
            heads = np.stack([p.head for p in people]) if people else np.zeros((0, 4))
            out[(video.name, f.index)] = GTFrame(joints[..., :2], ann, heads, list(f.ignore))
    return out


def pred_frames(predictions: dict) -> dict:
    """{(video, frame index): [(keypoints (17, 2), scores (17,))]} -> {key: PredFrame}."""
    from ..evaluation.posetrack import PredFrame, to_15
    out = {}
    for key, poses in predictions.items():
        if not poses:
            continue
        kp = np.stack([np.asarray(k, dtype=np.float64) for k, _ in poses])
        sc = np.stack([np.asarray(s, dtype=np.float64) for _, s in poses])
        out[key] = PredFrame(to_15(kp), to_15(sc[..., None])[..., 0])
    return out


# ------------------------------------------------------------------------------------------------
# Clips for training TAR-ViTPose
# ------------------------------------------------------------------------------------------------
def find_posetrack_split(root, split: str) -> str | None:
    """ROOT/annotations/{split}/ (a folder of per-video files, as PoseTrack18 and ``vitpose synth
    --video`` lay it out) or ROOT/annotations/{split}.json; image paths are relative to ROOT."""
    for p in (os.path.join(root, "annotations", split), os.path.join(root, "annotations", f"{split}.json")):
        if os.path.exists(p):
            return p
    return None


class PoseTrackClips:
    """People of the labelled frames as training samples: ``clips[(epoch, i)]`` -> dict with the
    T decoded frames around the person's frame (``clip_indices``: the video's ends repeated), the
    person's keypoints (17, 2), visibility (17,) and box in that frame, and the augmentation draws
    (seeded by (seed, epoch, i)). A torch map-style dataset; ``collate_clips`` batches it."""

    def __init__(self, videos: list[Video], root: str, frames: int = 5, seed: int = 0):
        from ..infer.clips import clip_indices  # noqa: F401  (checked importable early)
        self.videos, self.root, self.frames, self.seed = videos, os.fspath(root), int(frames), int(seed)
        self.samples = []
        for v, video in enumerate(videos):
            for f in video.frames:
                if not f.labeled:
                    continue
                for p in f.people:
                    ann = p.annotated
                    if not ann.any():
                        continue
                    box = p.box(grow=1.2)
                    if box[2] <= 1 or box[3] <= 1:
                        continue
                    self.samples.append((v, f.index, p.keypoints[:, :2].astype(np.float32),
                                         ann.astype(np.float32), box.astype(np.float32)))
        if not self.samples:
            raise ValueError("no annotated person in the labelled frames of these videos")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        import torch

        from ..infer.clips import clip_indices
        from ..infer.pipeline import load_image
        from .augment import draw
        epoch, i = key if isinstance(key, tuple) else (0, key)
        v, t, kp, vis, box = self.samples[i]
        video = self.videos[v]
        idx = clip_indices(t, self.frames, len(video.frames) - 1)
        frames = [load_image(os.path.join(self.root, video.frames[j].file_name)) for j in idx]
        draws = draw(np.random.default_rng([self.seed, 0, int(epoch), int(i)]))
        return {"frames": frames, "keypoints": torch.from_numpy(kp), "visible": torch.from_numpy(vis),
                "box": torch.from_numpy(box), "draws": torch.from_numpy(draws), "dataset_index": 0, "index": i}

    @property
    def max_image_size(self) -> tuple[int, int]:
        """(H, W) of the largest frame (read from the first frame of each video)."""
        from PIL import Image
        sizes = []
        for video in self.videos:
            with Image.open(os.path.join(self.root, video.frames[0].file_name)) as im:
                sizes.append((im.height, im.width))
        return max(s[0] for s in sizes), max(s[1] for s in sizes)


def collate_clips(items: list[dict]) -> dict:
    """Samples -> a batch: ``images`` the B*T frames (sizes may differ), ``clip_index`` (B, T)."""
    import torch
    T = len(items[0]["frames"])
    images = [f for it in items for f in it["frames"]]
    stack = {k: torch.stack([it[k] for it in items]) for k in ("keypoints", "visible", "box", "draws")}
    return {"images": images, "clip_index": torch.arange(len(images)).view(len(items), T),
            "image_index": torch.arange(len(items)) * T + T // 2, **stack,
            "dataset_index": torch.tensor([it["dataset_index"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}
