"""What ``vitpose predict`` reads: person boxes files and the list of images and videos to run."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

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
def expand_inputs(paths, folders_as_videos: bool = False) -> list[tuple[str, str]]:
    """[(kind, path)], kind in image/video; directories expand to their images and videos (sorted),
    or with ``folders_as_videos`` are videos whose frames are their images (sorted by name);
    paths that do not exist stay as images and fail later as items."""
    out = []
    for p in paths:
        if os.path.isdir(p) and folders_as_videos:
            out.append(("video", p.rstrip(os.sep) or p))
        elif os.path.isdir(p):
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
