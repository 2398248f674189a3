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
        self.path = os.fspath(path)
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: not valid JSON ({e})") from None
        self.table = defaultdict(list)
        if isinstance(data, dict) and "annotations" in data:
            names = {im["id"]: os.path.basename(im["file_name"]) for im in data.get("images", [])
                     if isinstance(im, dict) and "id" in im and "file_name" in im}
            for i, a in enumerate(data["annotations"]):
                self._need_fields(a, f"annotation {i}")
                if self._keep(a, det_thr, category_id):
                    row = self._box(a["bbox"][:4] if isinstance(a["bbox"], list) else a["bbox"],
                                    f"annotation {i} (image_id {a['image_id']})", a.get("score", 1.0))
                    self.table[a["image_id"]].append(row)
                    if a["image_id"] in names:
                        self.table[names[a["image_id"]]].append(row)
        elif isinstance(data, list):
            for i, d in enumerate(data):
                self._need_fields(d, f"entry {i}")
                if self._keep(d, det_thr, category_id):
                    self.table[d["image_id"]].append(self._box(
                        d["bbox"][:4] if isinstance(d["bbox"], list) else d["bbox"],
                        f"entry {i} (image_id {d['image_id']})", d.get("score", 1.0)))
        elif isinstance(data, dict):
            for k, v in data.items():
                if not isinstance(v, list):
                    raise ValueError(f"{self.path}: {k!r}: expected a list of boxes [[x, y, w, h(, score)], ...], "
                                     f"got {_show(v)}")
                self.table[k] = [self._box(b, f"{k!r} box {j}") for j, b in enumerate(v)]
        else:
            raise ValueError(f"{self.path}: unsupported boxes JSON, a {type(data).__name__} "
                             "(see `vitpose predict --help`)")
        self.matched = 0

    def _need_fields(self, d, where):
        if not isinstance(d, dict) or "bbox" not in d or "image_id" not in d:
            raise ValueError(f"{self.path}: {where}: a detection needs image_id and bbox, got {_show(d)}")

    def _box(self, b, where, score=None) -> list[float]:
        """[x, y, w, h, score] as floats, or a ValueError naming the file and the entry."""
        ok = isinstance(b, list) and len(b) in ((4, 5) if score is None else (4,)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
        if ok and score is not None and not (isinstance(score, (int, float)) and not isinstance(score, bool)):
            raise ValueError(f"{self.path}: {where}: score must be a number, got {_show(score)}")
        if not ok:
            want = "[x, y, w, h] or [x, y, w, h, score]" if score is None else "[x, y, w, h]"
            raise ValueError(f"{self.path}: {where}: a box must be {want} (numbers), got {_show(b)}")
        return [float(v) for v in b] + ([] if len(b) == 5 else [1.0 if score is None else float(score)])

    @staticmethod
    def _keep(d, det_thr, category_id):
        score = d.get("score", 1.0)
        return d.get("category_id", category_id) == category_id and (not isinstance(score, (int, float))
                                                                     or score >= det_thr)

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
                return np.asarray(self.table[k], dtype=np.float64).reshape(-1, 5)
        return np.zeros((0, 5))


def _show(value, limit: int = 80) -> str:
    """A JSON value as the user wrote it (not a Python repr), shortened."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
