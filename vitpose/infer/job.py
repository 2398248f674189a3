"""Batch jobs: pose estimation over many images and videos that resumes after a kill and shards
across processes (``vitpose predict``, alone or under ``torchrun``).

The plan. The expanded inputs ("sources": images and videos, numbered in order) are cut into
units: a run of up to ``group`` consecutive images, or one whole video. Unit u goes to rank
u % world. A rank processes its units in groups of items: the images of a run, or ``group``
consecutive frames of a video. Per group: the images, their boxes (boxes file, detector or the
whole image), the poses of all its boxes (forward passes of ``batch_size`` crops), the hooks,
the pictures, then the group's records in one flushed write (``records.py``).

Why groups are the unit of work: a group's numbers depend on which images share its batches
(crop mosaic, batch shapes of the matrix products), so the groups must not depend on how many
ranks there are or where an earlier run was killed. They do not, hence a resumed or sharded job
writes bit-identical results to an uninterrupted single process (same device and thread count).

Resume: the records of complete groups are kept, a partial last group (or a partial last line)
is dropped and redone; a partly done video is decoded again from its start, the frames already
done replayed from their records through the hooks and into the rendered video.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .pipeline import Pose, as_boxes, load_image
from .records import JsonlShard, item_record, merge_shards, pose_from_record, write_coco


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One input: an image or a video, ``index`` its position in the job's input list."""

    index: int
    kind: str  # "image" | "video"
    path: str

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)

    @property
    def image_id(self):
        """COCO image id of an image: its file stem when numeric (000000397133.jpg -> 397133),
        else its source index."""
        stem = os.path.splitext(self.file_name)[0]
        return int(stem) if stem.isdigit() else self.index


@dataclass(frozen=True)
class Unit:
    """What a rank takes at once: a run of consecutive images, or one video."""

    index: int
    sources: tuple

    @property
    def kind(self) -> str:
        return self.sources[0].kind


def plan_units(inputs: list[tuple[str, str]], group: int) -> list[Unit]:
    """inputs [(kind, path)] -> units, in input order (videos break image runs)."""
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    units, run = [], []

    def close_run():
        if run:
            units.append(Unit(len(units), tuple(run)))
            run.clear()

    for i, (kind, path) in enumerate(inputs):
        source = Source(i, kind, os.fspath(path))
        if kind == "video":
            close_run()
            units.append(Unit(len(units), (source,)))
        else:
            run.append(source)
            if len(run) == group:
                close_run()
    close_run()
    return units


def shard_units(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """Rank r's units: r, r + world, r + 2 world, ... (deterministic, round robin)."""
    return units[rank::world]


@dataclass
class Item:
    """One image or video frame on its way through a group."""

    source: Source
    frame: int | None
    image: Any = None            # (3, H, W) tensor once loaded
    error: BaseException | None = None
    replay: bool = False         # poses come from the results file (resume), not from the model
    extra: dict = field(default_factory=dict)  # for hooks


# ------------------------------------------------------------------------------------------------
# Extension points
# ------------------------------------------------------------------------------------------------
class JobHook:
    """Per-source state and per-item processing, called in stream order on the rank that owns the
    source (a tracker keeps its tracks here and sets ``Pose.track_id``).

    ``after_pose`` sees every item, failed ones with ``item.error`` set and no poses. The poses it
    returns are written and drawn. On resume, the frames of a partly done video are replayed
    through the hooks (``item.replay``) with the poses read back from the results file, so per-video
    state is what an uninterrupted run would hold. Within a group, all items' poses are computed
    before the hooks run (frames of a group share forward passes)."""

    def begin_source(self, source: Source) -> None:
        pass

    def after_pose(self, item: Item, poses: list[Pose]) -> list[Pose]:
        return poses

    def end_source(self, source: Source) -> None:
        pass


class WholeImageBoxes:
    """Each image is one person box (the default without boxes file or detector)."""

    def __call__(self, items: list[Item]) -> list:
        return [np.array([[0, 0, it.image.shape[2], it.image.shape[1], 1.0]]) for it in items]


class FileBoxes:
    """Boxes from a boxes file (``inputs.BoxIndex``), by file name or video frame."""

    def __init__(self, index):
        self.index = index

    def __call__(self, items: list[Item]) -> list:
        return [self.index.lookup(it.source.path, frame=it.frame) for it in items]


class DetectorBoxes:
    """Boxes from a person detector (``detect.PersonDetector``), one batched call per group."""

    def __init__(self, detector):
        self.detector = detector

    def __call__(self, items: list[Item]) -> list:
        return self.detector([it.image for it in items])


# ------------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------------
class Renderer:
    """Drawn outputs: OUT/vis/<stem>.jpg per image, OUT/<stem>_pose.mp4 per video (frames that
    failed go in undrawn, so the video keeps its length)."""

    def __init__(self, out_dir: str, enabled: bool = True, draw: Callable | None = None, *,
                 heatmaps_of: int | None = None, predictor=None, **draw_kwargs):
        from .draw import draw_poses
        self.out_dir, self.enabled = out_dir, enabled
        self.draw = draw or draw_poses
        self.draw_kwargs = draw_kwargs
        # heatmaps_of=i: also OUT/vis/<stem>_heatmaps.jpg, person i's crop beside their heatmaps
        self.heatmaps_of, self.predictor = heatmaps_of, predictor
        self.writers = {}

    def image(self, item: Item, poses) -> None:
        if not self.enabled or item.error is not None:
            return
        from PIL import Image
        vis = os.path.join(self.out_dir, "vis")
        os.makedirs(vis, exist_ok=True)
        stem = os.path.splitext(item.source.file_name)[0]
        rgb = item.image.permute(1, 2, 0).numpy()
        Image.fromarray(self.draw(rgb, poses, **self.draw_kwargs)).save(os.path.join(vis, stem + ".jpg"))
        if self.heatmaps_of is not None and self.heatmaps_of < len(poses) and self.predictor is not None:
            from .draw import heatmap_view
            pose = poses[self.heatmaps_of]
            crop, heatmaps, in_crop = self.predictor.person_heatmaps(item.image, [*pose.box, pose.box_score])
            view = heatmap_view(crop, heatmaps, in_crop, kpt_thr=self.draw_kwargs.get("kpt_thr", 0.3))
            Image.fromarray(view).save(os.path.join(vis, stem + "_heatmaps.jpg"))

    def begin_video(self, source: Source, fps: float) -> None:
        if self.enabled:
            from .video import VideoWriter
            stem = os.path.splitext(source.file_name)[0]
            self.writers[source.index] = VideoWriter(os.path.join(self.out_dir, f"{stem}_pose.mp4"), fps)

    def frame(self, item: Item, poses) -> None:
        if not self.enabled:
            return
        rgb = item.image.permute(1, 2, 0).numpy()
        self.writers[item.source.index].write(rgb if item.error is not None else
                                              self.draw(rgb, poses, **self.draw_kwargs))

    def end_video(self, source: Source) -> None:
        writer = self.writers.pop(source.index, None)
        if writer is not None:
            writer.close()


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------
# Ranks that finish early wait for the slowest at the merge; a long job must not time out there.
MERGE_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()


def ranks_from_env() -> Ranks:
    """This process's rank under torchrun (RANK, WORLD_SIZE, LOCAL_RANK), joining the process
    group (gloo: it only coordinates files, whatever device does the work)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=MERGE_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------
class PredictJob:
    """``PredictJob(predictor, out_dir, ...).run(inputs, resume=...) -> exit status``.

    Writes OUT/predictions.jsonl (records, ``records.py``) and OUT/keypoints.json (COCO results
    with file_name / frame), the pictures, and OUT/job.json (what the job was, checked on resume).
    With several ranks each writes OUT/shards/predictions.rank-R-of-W.jsonl and rank 0 merges
    them, at the end, into the same two files a single process writes (OUT must be shared).
    """

    def __init__(self, predictor, out_dir: str, *, boxes: Callable | None = None, renderer=None,
                 hooks=(), group: int | None = None, progress: bool = True, settings: dict | None = None,
                 ranks: Ranks | None = None, log=None):
        self.predictor, self.out_dir = predictor, out_dir
        self.boxes = boxes or WholeImageBoxes()
        self.renderer = renderer or Renderer(out_dir, enabled=False)
        self.hooks = list(hooks)
        self.group = group or predictor.batch_size
        self.progress, self.settings = progress, dict(settings or {})
        self.ranks = ranks or Ranks()
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.dataset = predictor.keypoints.name
        self.processed = 0  # items this run computed (not replayed or skipped)
        # A clip model (TAR-ViTPose, ``clips.ClipPredictor``) sees frames t - half .. t + half: a
        # video's group waits for the ``half`` frames after it, and gets each item's clip.
        self.clip_frames = getattr(predictor, "clip_frames", 1)
        self.clip_half = self.clip_frames // 2

    # ---------------------------------------------------------------- files
    def shard(self) -> JsonlShard:
        r = self.ranks
        if r.world == 1:
            return JsonlShard(os.path.join(self.out_dir, "predictions.jsonl"))
        return JsonlShard(os.path.join(self.out_dir, "shards", f"predictions.rank-{r.rank}-of-{r.world}.jsonl"))

    def _check_job_file(self, inputs, resume: bool) -> None:
        spec = {"inputs": [list(x) for x in inputs], "group": self.group, "world_size": self.ranks.world,
                "settings": self.settings}
        path = os.path.join(self.out_dir, "job.json")
        if resume and os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            diff = [k for k in spec if old.get(k) != spec[k]]
            if diff:
                what = ", ".join(f"{k}: {_short(old.get(k))} then, {_short(spec[k])} now" for k in diff)
                raise ValueError(f"--resume: {self.out_dir} holds a different job ({what}); resume with "
                                 "the same inputs and options, or use a new --out (or drop --resume "
                                 "to start over)")
            return
        if self.ranks.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(spec, f, indent=1)
            os.replace(tmp, path)

    # ---------------------------------------------------------------- run
    def run(self, inputs: list[tuple[str, str]], resume: bool = False) -> int:
        self._check_job_file(inputs, resume)
        units = shard_units(plan_units(inputs, self.group), self.ranks.rank, self.ranks.world)
        shard = self.shard()
        if resume and shard.is_done():
            self.log(f"resuming: {shard.path} is complete")
        else:
            start, frames_done, replay, keep = resume_point(shard, units, self.group) if resume else (0, 0, [], 0)
            kept = sum(1 for off, _ in shard.records() if off <= keep) if keep else 0
            if kept:
                where = (f"{units[start].sources[0].path}" + (f" frame {frames_done}" if frames_done else "")
                         if start < len(units) else "the end")
                self.log(f"resuming: {kept} item(s) done, going on from {where}")
            self._run_units(shard, units, start, frames_done, replay, keep, kept)
        self.ranks.barrier()
        status, error = 0, None
        if self.ranks.rank == 0:
            try:
                status = self._finish(inputs)
            except Exception as e:  # raised after the barrier, so that no rank waits forever
                error = e
        self.ranks.barrier()  # torchrun stops every rank when one exits early
        if error is not None:
            raise error
        return status

    def _run_units(self, shard, units, start, frames_done, replay, keep, kept):
        from tqdm import tqdm
        from .video import frame_count
        total = sum(len(u.sources) if u.kind == "image" else max(1, frame_count(u.sources[0].path))
                    for u in units)
        self.bar = tqdm(total=total, initial=kept, desc="predict", unit="item",
                        disable=(not self.progress or self.ranks.rank != 0) or None)
        shard.start(keep)
        try:
            for pos in range(start, len(units)):
                unit = units[pos]
                if unit.kind == "image":
                    self._images(shard, unit)
                else:
                    done = frames_done if pos == start else 0
                    self._video(shard, unit.sources[0], done, replay if pos == start else [])
            shard.finish(self.bar.n)
        finally:
            shard.close()
            self.bar.close()

    def _finish(self, inputs) -> int:
        final = os.path.join(self.out_dir, "predictions.jsonl")
        if self.ranks.world > 1:
            paths = [os.path.join(self.out_dir, "shards", f"predictions.rank-{r}-of-{self.ranks.world}.jsonl")
                     for r in range(self.ranks.world)]
            missing = [p for p in paths if not JsonlShard(p).is_done()]
            if missing:
                raise RuntimeError(f"rank 0 cannot see the finished results of every rank ({missing[0]}): "
                                   "--out must be a folder every node shares")
            unit_of = {s.index: u.index for u in plan_units(inputs, self.group) for s in u.sources}
            merge_shards(paths, lambda rec: unit_of[rec["source"]], final)
        out_json = os.path.join(self.out_dir, "keypoints.json")
        counts = write_coco(final, out_json)
        self.log(f"{counts['poses']} poses from {counts['items'] - counts['failed']} item(s) -> {out_json}"
                 + (f"; {counts['failed']} failed (their reasons are in {final})" if counts["failed"] else ""))
        return 1 if counts["failed"] else 0

    # ---------------------------------------------------------------- units
    def _images(self, shard, unit):
        items = []
        for source in unit.sources:
            item = Item(source, None)
            try:
                item.image = load_image(source.path)
            except Exception as e:
                item.error = e
            items.append(item)
        for h in self.hooks:
            for item in items:
                h.begin_source(item.source)
        if self.clip_frames > 1:  # a still image is a clip of one frame, repeated
            for item in items:
                if item.error is None:
                    item.extra["clip"] = [item.image] * self.clip_frames
        self._group(shard, items)
        for h in self.hooks:
            for item in items:
                h.end_source(item.source)

    def _video(self, shard, source, frames_done, replay):
        from .video import video_frames
        for h in self.hooks:
            h.begin_source(source)
        try:
            frames, fps, _ = video_frames(source.path)
        except Exception as e:
            self._write(shard, [Item(source, None, error=e)], [[]])
            self._end_video(source)
            return
        self.renderer.begin_video(source, fps)
        queue, seen, images, half = [], 0, {}, self.clip_half
        for i, frame in frames:
            seen = i + 1
            item = Item(source, i, load_image(frame))
            if half:
                images[i] = item.image
            if i < frames_done:
                self._replay(item, replay[i])
            else:
                queue.append(item)
            # a full group goes once the frames its clips need are read (at once without clips)
            while len(queue) >= self.group and queue[self.group - 1].frame + half <= i:
                self._clip_group(shard, queue[:self.group], images, None)
                queue = queue[self.group:]
            for k in [k for k in images if k < (queue[0].frame if queue else i + 1) - half]:
                del images[k]
        while queue:
            self._clip_group(shard, queue[:self.group], images, seen - 1)
            queue = queue[self.group:]
        if seen == 0:
            self._write(shard, [Item(source, None, error=ValueError(f"no frames could be read from {source.path}"))], [[]])
        self._end_video(source)

    def _clip_group(self, shard, group, images, last):
        """A video group, each item with its clip (frames t - half .. t + half, clamped to
        [0, last]: the official evaluation repeats the end frames) when the model takes clips."""
        if self.clip_frames > 1:
            from .clips import clip_indices
            for item in group:
                item.extra["clip"] = [images[j] for j in clip_indices(item.frame, self.clip_frames, last)]
        self._group(shard, group)

    def _end_video(self, source):
        self.renderer.end_video(source)
        for h in self.hooks:
            h.end_source(source)

    def _replay(self, item, record):
        item.replay = True
        if "error" in record:
            item.error = RuntimeError(record["error"])
        poses = [pose_from_record(p, self.dataset) for p in record["poses"]]
        for h in self.hooks:
            poses = h.after_pose(item, poses)
        self._draw(item, poses)

    # ---------------------------------------------------------------- groups
    def _group(self, shard, items: list[Item]) -> None:
        ok = [it for it in items if it.error is None]
        if ok:
            try:
                found = self.boxes(ok)
            except Exception as e:  # a detector failure fails its group, not the job
                found = [e] * len(ok)
            for it, b in zip(ok, found):
                try:
                    if isinstance(b, BaseException):
                        raise b
                    it.extra["boxes"] = as_boxes(b, f" of {it.source.path}" + ("" if it.frame is None else f" frame {it.frame}"))
                except Exception as e:
                    it.error = e
        ok = [it for it in items if it.error is None]
        results = self.predictor.predict_batch([it.extra.pop("clip", it.image) for it in ok],
                                               [it.extra.pop("boxes") for it in ok],
                                               errors="yield")
        by_item = {id(it): r for it, r in zip(ok, results)}
        poses_per_item = []
        for it in items:
            r = by_item.get(id(it), [])
            if isinstance(r, BaseException):
                it.error, r = r, []
            for h in self.hooks:
                r = h.after_pose(it, r)
            poses_per_item.append(r)
        self._write(shard, items, poses_per_item)

    def _draw(self, item, poses) -> str | None:
        try:
            if item.frame is None:
                self.renderer.image(item, poses)
            else:
                self.renderer.frame(item, poses)
        except Exception as e:  # a drawing failure loses the picture, not the keypoints
            return f"{type(e).__name__}: {e}"
        return None

    def _write(self, shard, items, poses_per_item) -> None:
        records = []
        for it, poses in zip(items, poses_per_item):
            draw_error = self._draw(it, poses) if it.image is not None else None
            records.append(item_record(it.source, it.frame, it.error if it.error is not None else poses,
                                       draw_error))
            where = it.source.path + ("" if it.frame is None else f":{it.frame}")
            if it.error is not None:
                self._report(f"error: {where}: {records[-1]['error']}")
            if draw_error:
                self._report(f"error drawing {where}: {draw_error}")
        shard.write_group(records)
        self.processed += len(items)
        self.bar.update(len(items))

    def _report(self, msg):
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)


def resume_point(shard: JsonlShard, units: list[Unit], group: int):
    """Where a resumed rank goes on: (unit position, frames of that unit done, their records,
    bytes of the results file to keep). Everything up to the last group known to be complete is
    kept: a run of images is complete with all its records; a video with records after it (or a
    video-level error record); a video that ends the file keeps its whole groups of frames."""
    stream = shard.records()
    ahead = []

    def take():
        if ahead:
            return ahead.pop()
        return next(stream, None)

    def mismatch(rec, expected):
        return ValueError(f"--resume: {shard.path} does not follow this job's inputs (found source "
                          f"{rec.get('source')} frame {rec.get('frame')}, expected {expected}); "
                          "drop --resume to start over, or use a new --out")

    keep = 0
    for pos, unit in enumerate(units):
        if unit.kind == "image":
            last = keep
            for source in unit.sources:
                got = take()
                if got is None:
                    return pos, 0, [], keep
                last, rec = got
                if rec["source"] != source.index or "frame" in rec:
                    raise mismatch(rec, f"image {source.index}")
            keep = last
            continue
        source = unit.sources[0]
        frames, followed = [], False
        while True:
            got = take()
            if got is None:
                break
            if got[1]["source"] != source.index:
                ahead.append(got)
                followed = True
                break
            frames.append(got)
        if not frames:
            if followed:
                raise mismatch(ahead[-1][1], f"video {source.index}")
            return pos, 0, [], keep
        if "frame" not in frames[0][1]:  # the video could not be read: done
            keep = frames[0][0]
            continue
        for i, (_, rec) in enumerate(frames):
            if rec.get("frame") != i:
                raise mismatch(rec, f"video {source.index} frame {i}")
        if followed:
            keep = frames[-1][0]
            continue
        done = len(frames) // group * group
        return pos, done, [rec for _, rec in frames[:done]], (frames[done - 1][0] if done else keep)
    if ahead or take() is not None:
        raise ValueError(f"--resume: {shard.path} has more records than this job has inputs; drop "
                         "--resume to start over, or use a new --out")
    return len(units), 0, [], keep


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."
