"""Batch-job results as JSON Lines: one record per image or video frame, appended and flushed as
the job goes, so that a killed job loses at most the group of items it was working on.

A record (keys in this order; floats as Python writes them, i.e. exactly)::

    {"source": 3, "path": "in/b.jpg", "file_name": "b.jpg", "image_id": 3, "frame": 12,
     "poses": [{"bbox": [x, y, w, h], "box_score": s, "score": s,
                "keypoints": [x1, y1, score1, ...], "track_id": 7}],
     "error": "ValueError: could not read image in/b.jpg: ...", "draw_error": "..."}

``frame`` only for video frames (a video that cannot be read gets one record without it),
``track_id`` only when a tracker set one, ``error`` only for a failed item (then ``poses`` is
empty), ``draw_error`` when the keypoints are there but the picture could not be drawn.
``source`` is the position of the image or video in the job's expanded input list.
"""
from __future__ import annotations

import heapq
import json
import os
from typing import Callable, Iterable, Iterator

import numpy as np

from .pipeline import Pose


# ------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------
def pose_record(pose: Pose) -> dict:
    coco = pose.to_coco(None)
    out = {"bbox": coco["bbox"], "box_score": coco["box_score"], "score": coco["score"],
           "keypoints": coco["keypoints"]}
    if pose.track_id is not None:
        out["track_id"] = int(pose.track_id)
    return out


def pose_from_record(d: dict, dataset: str = "coco") -> Pose:
    """The Pose a record was written from (center/scale are not kept: drawing does not need them)."""
    kps = np.asarray(d["keypoints"], dtype=np.float64).reshape(-1, 3)
    return Pose(kps[:, :2].astype(np.float32), kps[:, 2].astype(np.float32),
                np.asarray(d["bbox"], dtype=np.float64), float(d["box_score"]), dataset,
                track_id=d.get("track_id"))


def item_record(source, frame: int | None, result, draw_error: str | None = None) -> dict:
    """source: a job Source (index, path, file_name, image_id); result: [Pose] or an exception."""
    rec = {"source": source.index, "path": source.path, "file_name": source.file_name,
           "image_id": source.image_id if frame is None else frame}
    if frame is not None:
        rec["frame"] = frame
    if isinstance(result, BaseException):
        rec["poses"] = []
        rec["error"] = describe(result)
    else:
        rec["poses"] = [pose_record(p) for p in result]
    if draw_error:
        rec["draw_error"] = draw_error
    return rec


def describe(e: BaseException) -> str:
    text = str(e)
    # FileNotFoundError/ValueError raised by this package already say what and where.
    return text if isinstance(e, (FileNotFoundError, ValueError)) and text else f"{type(e).__name__}: {text}"


def dumps(record: dict) -> str:
    return json.dumps(record, separators=(", ", ": "))


def coco_results(record: dict) -> list[dict]:
    """The COCO keypoint results of one record, as ``keypoints.json`` holds them."""
    out = []
    for p in record.get("poses", ()):
        r = {"image_id": record["image_id"], "category_id": 1, "keypoints": p["keypoints"],
             "score": p["score"], "box_score": p["box_score"], "bbox": p["bbox"]}
        if "track_id" in p:
            r["track_id"] = p["track_id"]
        r["file_name"] = record["file_name"]
        if "frame" in record:
            r["frame"] = record["frame"]
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------------
# One process's results file
# ------------------------------------------------------------------------------------------------
class JsonlShard:
    """An append-only JSON Lines file with a ``.done`` marker written when its job part finished.

    ``records()`` yields the complete, parseable lines with their end offsets and stops at the
    first line that is not (a kill in the middle of a write); ``truncate(offset)`` drops the rest.
    """

    def __init__(self, path: str):
        self.path = path
        self.done_path = path + ".done"
        self._file = None

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def is_done(self) -> bool:
        return os.path.exists(self.done_path)

    def records(self) -> Iterator[tuple[int, dict]]:
        if not self.exists():
            return
        offset = 0
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    return  # the partial last line of a killed write
                try:
                    rec = json.loads(line)
                except ValueError:
                    return
                if not isinstance(rec, dict) or "source" not in rec:
                    return
                offset += len(line)
                yield offset, rec

    def start(self, keep_bytes: int = 0) -> None:
        """Open for appending after the first keep_bytes (0: a fresh file); clears the marker."""
        if os.path.exists(self.done_path):
            os.remove(self.done_path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        mode = "r+b" if keep_bytes and self.exists() else "wb"
        self._file = open(self.path, mode)
        self._file.truncate(keep_bytes)
        self._file.seek(keep_bytes)

    def write_group(self, records: Iterable[dict]) -> None:
        """One write for a whole group, then flush and fsync: the group is on disk or (after a
        crash) shows up partial, which a resume detects and redoes."""
        data = "".join(dumps(r) + "\n" for r in records).encode()
        if data:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())

    def finish(self, items: int) -> None:
        self.close()
        _write_atomic(self.done_path, json.dumps({"items": items}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ------------------------------------------------------------------------------------------------
# Final files
# ------------------------------------------------------------------------------------------------
def merge_shards(paths: list[str], order_key: Callable[[dict], int], out_path: str) -> None:
    """Interleave per-rank files (each ordered by order_key) into one, streamed: the file a single
    process writes, since both hold the same records in the same order."""
    files = [open(p, "rb") for p in paths]
    try:
        def keyed(f):
            for line in f:
                yield order_key(json.loads(line)), line
        tmp = out_path + ".tmp"
        with open(tmp, "wb") as out:
            for _, line in heapq.merge(*(keyed(f) for f in files), key=lambda kv: kv[0]):
                out.write(line)
        os.replace(tmp, out_path)
    finally:
        for f in files:
            f.close()


def write_coco(jsonl_path: str, out_path: str) -> dict:
    """keypoints.json (a COCO results list) from the records, streamed; returns counts."""
    counts = {"items": 0, "poses": 0, "failed": 0}
    tmp = out_path + ".tmp"
    with open(jsonl_path, "rb") as f, open(tmp, "w") as out:
        out.write("[")
        first = True
        for line in f:
            rec = json.loads(line)
            counts["items"] += 1
            counts["failed"] += bool(rec.get("error") or rec.get("draw_error"))
            for r in coco_results(rec):
                out.write(("" if first else ", ") + json.dumps(r))
                first = False
                counts["poses"] += 1
        out.write("]")
    os.replace(tmp, out_path)
    return counts


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
