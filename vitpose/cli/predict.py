"""``vitpose predict``: keypoints for images, folders of images and videos.

    vitpose predict --checkpoint F [--boxes B.json] IMAGE_OR_DIR_OR_VIDEO... --out DIR

Writes DIR/keypoints.json (COCO results, plus file_name / frame) and the drawn images
(DIR/vis/) or videos (DIR/<name>_pose.mp4). A bad item (missing or unreadable image, bad boxes)
is reported and the others go on; the exit status is 1 when any item failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import numpy as np

from .common import add_common_arguments

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


# ------------------------------------------------------------------------------------------------
# Boxes files
# ------------------------------------------------------------------------------------------------
class BoxIndex:
    """Person boxes per image from a JSON file, in any of these shapes:

    - COCO detection results: [{"image_id", "bbox": [x, y, w, h], "score", "category_id"}, ...];
      image_id matches an image whose file stem is that number (000000397133.jpg -> 397133), or a
      video frame index;
    - a COCO dataset dict with "images" (id, file_name) and "annotations" (image_id, bbox);
    - {"name.jpg" or "name" or "video.mp4:FRAME": [[x, y, w, h(, score)], ...]}.
    """

    def __init__(self, path, det_thr: float = 0.0, category_id: int = 1):
        with open(path) as f:
            data = json.load(f)
        self.table = defaultdict(list)
        if isinstance(data, dict) and "annotations" in data:
            names = {im["id"]: os.path.basename(im["file_name"]) for im in data.get("images", [])}
            for a in data["annotations"]:
                if self._keep(a, det_thr, category_id):
                    row = [*a["bbox"][:4], a.get("score", 1.0)]
                    self.table[a["image_id"]].append(row)
                    if a["image_id"] in names:
                        self.table[names[a["image_id"]]].append(row)
        elif isinstance(data, list):
            for d in data:
                if not isinstance(d, dict) or "bbox" not in d or "image_id" not in d:
                    raise ValueError(f"{path}: a detection list needs image_id and bbox per entry, got {d!r:.80}")
                if self._keep(d, det_thr, category_id):
                    self.table[d["image_id"]].append([*d["bbox"][:4], d.get("score", 1.0)])
        elif isinstance(data, dict):
            for k, v in data.items():
                self.table[k] = [list(b) for b in v]
        else:
            raise ValueError(f"{path}: unsupported boxes JSON (see `vitpose predict --help`)")
        self.matched = 0

    @staticmethod
    def _keep(d, det_thr, category_id):
        return d.get("category_id", category_id) == category_id and d.get("score", 1.0) >= det_thr

    def lookup(self, path: str, frame: int | None = None):
        base = os.path.basename(path)
        stem = os.path.splitext(base)[0]
        if frame is None:
            keys = [base, stem, path] + ([int(stem)] if stem.isdigit() else [])
        else:
            keys = [f"{base}:{frame}", f"{stem}:{frame}", frame, str(frame)]
        for k in keys:
            if k in self.table:
                self.matched += 1
                return np.asarray(self.table[k], dtype=np.float64).reshape(-1, len(self.table[k][0]) if self.table[k] else 5)
        return np.zeros((0, 5))


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def expand_inputs(paths) -> list[tuple[str, str]]:
    """[(kind, path)], kind in image/video; directories expand to their images and videos (sorted);
    paths that do not exist stay as images and fail later as items."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                ext = os.path.splitext(name)[1].lower()
                if ext in IMAGE_EXTS:
                    out.append(("image", os.path.join(p, name)))
                elif ext in VIDEO_EXTS:
                    out.append(("video", os.path.join(p, name)))
        elif os.path.splitext(p)[1].lower() in VIDEO_EXTS:
            out.append(("video", p))
        else:
            out.append(("image", p))
    return out


def _image_id(path: str, fallback: int):
    stem = os.path.splitext(os.path.basename(path))[0]
    return int(stem) if stem.isdigit() else fallback


def cmd_predict(args) -> int:
    from tqdm import tqdm

    from ..models.checkpoints import load_model
    from ..infer.draw import draw_poses
    from ..infer.pipeline import TopDownPredictor, load_image
    from ..infer.video import VideoWriter, frame_count, video_frames

    model = load_model(args.checkpoint)
    predictor = TopDownPredictor(model, device=args.device, flip=not args.no_flip,
                                 batch_size=args.batch_size, dataset_index=args.dataset_index)
    boxes = BoxIndex(args.boxes, det_thr=args.det_thr) if args.boxes else None
    os.makedirs(args.out, exist_ok=True)
    vis_dir = os.path.join(args.out, "vis")
    inputs = expand_inputs(args.inputs)
    if not inputs:
        print("vitpose predict: no images or videos found in the inputs", file=sys.stderr)
        return 1
    results, failures = [], []
    frames_kept = {}  # video frames waiting to be drawn, by key
    writers = {}

    def items():
        for n, (kind, path) in enumerate(inputs):
            if kind == "image":
                yield ("image", path, None), path, (boxes.lookup(path) if boxes else None)
                continue
            try:
                frames, fps, _ = video_frames(path)
            except Exception as e:
                failures.append((path, e))
                tqdm.write(f"error: {path}: {e}", file=sys.stderr)
                bar.update(1)  # counted as one item in the total
                continue
            writers[path] = VideoWriter(os.path.join(args.out, f"{os.path.splitext(os.path.basename(path))[0]}_pose.mp4"), fps)
            for i, frame in frames:
                key = ("video", path, i)
                if not args.no_draw:
                    frames_kept[key] = frame
                yield key, frame, (boxes.lookup(path, frame=i) if boxes else None)

    total = sum(1 if k == "image" else max(1, frame_count(p)) for k, p in inputs)
    bar = tqdm(total=total, desc="predict", unit="item", disable=args.quiet or None)
    for n, ((kind, path, frame), poses) in enumerate(predictor.iter_predict(items(), errors="yield")):
        bar.update(1)
        frame_img = frames_kept.pop((kind, path, frame), None)
        if isinstance(poses, Exception):
            failures.append((path if frame is None else f"{path}:{frame}", poses))
            tqdm.write(f"error: {failures[-1][0]}: {poses}", file=sys.stderr)
            continue
        image_id = _image_id(path, n) if kind == "image" else frame
        for p in poses:
            r = p.to_coco(image_id)
            r["file_name"] = os.path.basename(path)
            if kind == "video":
                r["frame"] = frame
            results.append(r)
        if args.no_draw:
            continue
        try:
            if kind == "image":
                rgb = load_image(path).permute(1, 2, 0).numpy()
                os.makedirs(vis_dir, exist_ok=True)
                from PIL import Image
                Image.fromarray(draw_poses(rgb, poses, kpt_thr=args.kpt_thr)).save(
                    os.path.join(vis_dir, os.path.splitext(os.path.basename(path))[0] + ".jpg"))
            elif frame_img is not None:
                writers[path].write(draw_poses(frame_img, poses, kpt_thr=args.kpt_thr))
        except Exception as e:  # a drawing failure loses the picture, not the keypoints
            failures.append((path, e))
            tqdm.write(f"error drawing {path}: {e}", file=sys.stderr)
    bar.close()
    for w in writers.values():
        w.close()
    out_json = os.path.join(args.out, "keypoints.json")
    with open(out_json, "w") as f:
        json.dump(results, f)
    done = total - len(failures)
    print(f"{len(results)} poses from {done} item(s) -> {out_json}"
          + (f"; {len(failures)} failed" if failures else ""), file=sys.stderr)
    if boxes is not None and boxes.matched == 0:
        print("warning: no entry of the boxes file matched an input (see `vitpose predict --help`)",
              file=sys.stderr)
    return 1 if failures else 0


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="keypoints for images, folders or videos",
                       description=__doc__ + "\n" + BoxIndex.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR_OR_VIDEO")
    p.add_argument("--boxes", help="person boxes JSON (default: each whole image is one box)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset-index", type=int, default=0, help="ViTPose+ dataset/decoder (0: COCO)")
    p.add_argument("--kpt-thr", type=float, default=0.3, help="draw keypoints scored above this")
    p.add_argument("--no-draw", action="store_true", help="write the JSON only")
    p.set_defaults(func=cmd_predict)
