"""Synthetic videos of moving people, in PoseTrack format (``vitpose synth --video``).

    write_video_dataset("synthvid/", train_videos=8, val_videos=2, frames=24, seed=0)

writes ``synthvid/annotations/{train,val}/{video}.json`` (PoseTrack18, one file per video, as the
official release) and ``synthvid/images/{train,val}/{video}/{frame:06d}.jpg``. The people are
``vitpose.data.synth``'s stick figures (its pose sampler, placement, styles and renderer) made to
move: each follows a smooth path across a static background (a random start, a constant velocity
and a slow sway, its size changing slowly) while its pose blends smoothly between random poses;
people pass in front of each other (a fixed depth order per video) and a moving occluder crosses
some videos; fast people are motion-blurred (each frame averages renders over its exposure).

Annotations are PoseTrack's 17 keypoints (nose, head_bottom, head_top, the ears left unannotated
as in PoseTrack, COCO's body), every keypoint inside the picture annotated (visibility 1, hidden
ones included), a person box from its visible pixels and a head box from the drawn head, track ids
per person. A video depends only on (seed, split, index).
"""
from __future__ import annotations

import math
import os

import numpy as np

from . import synth
from .posetrack import Frame, Person, Video, save_posetrack18


def _smooth(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * min(max(t, 0.0), 1.0))


class Mover:
    """One person through a video: a path, a size, and keyposes blended over time."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, frames: int):
        self.style = synth.random_style(rng)
        self.height0 = rng.uniform(0.45, 0.85) * min(width, height)
        self.grow = rng.uniform(-0.3, 0.3) * self.height0 / max(frames, 1)    # px per frame
        start = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.35, 0.65) * height])
        speed = rng.uniform(0.5, 4.0) * (1 if rng.random() < 0.5 else -1)        # px per frame, mostly along x
        self.start, self.velocity = start, np.array([speed, rng.normal(0, 0.5)])
        self.sway = (rng.uniform(0, 0.04) * height, rng.uniform(0.05, 0.2), rng.uniform(0, 2 * math.pi))
        self.rotation = rng.normal(0, 6)
        period = int(rng.integers(6, 14))                                         # frames per keypose
        self.keyposes = [synth.random_pose(rng) for _ in range(frames // period + 2)]
        self.period = period

    def pose(self, t: float) -> tuple[np.ndarray, float]:
        """(keypoints (17, 2) in pixels, height) at time t (frames, fractional for motion blur)."""
        i = int(t // self.period)
        a, b = self.keyposes[min(i, len(self.keyposes) - 1)], self.keyposes[min(i + 1, len(self.keyposes) - 1)]
        body = a + (b - a) * _smooth((t - i * self.period) / self.period)
        amp, freq, phase = self.sway
        center = self.start + self.velocity * t + [0.0, amp * math.sin(freq * t + phase)]
        h = self.height0 + self.grow * t
        return synth.place(body, center, h, self.rotation), h

    @property
    def speed(self) -> float:
        return float(np.linalg.norm(self.velocity))


def head_box(kp: np.ndarray, style, height: float) -> np.ndarray:
    """x1, y1, x2, y2 of the drawn head (the renderer's ellipse, axis-aligned bounds)."""
    r = style.head_radius * height
    c = (kp[1] + kp[2]) / 2 + [0, 0.01 * height]
    return np.array([c[0] - r, c[1] - 1.15 * r, c[0] + r, c[1] + 1.15 * r])


def to_posetrack(kp: np.ndarray, style, height: float) -> np.ndarray:
    """COCO-order figure keypoints -> PoseTrack's 17 (head_bottom / head_top on the head's axis;
    ears zero)."""
    r = style.head_radius * height
    c = (kp[1] + kp[2]) / 2 + [0, 0.01 * height]
    up = c - (kp[5] + kp[6]) / 2
    up = up / max(np.linalg.norm(up), 1e-6)
    out = kp.copy()
    out[1], out[2] = c - up * 1.15 * r, c + up * 1.15 * r
    out[3] = out[4] = 0.0
    return out


def render_video(rng: np.random.Generator, frames: int, width: int, height: int, max_people: int = 3,
                 blur_samples: int = 3):
    """[(PIL image, [(track id, keypoints (17, 2) PoseTrack order, annotated (17,), box, head)])]."""
    from PIL import Image, ImageDraw
    background = synth.random_background(rng, width, height)
    people = [Mover(rng, width, height, frames) for _ in range(int(rng.integers(1, max_people + 1)))]
    occluder = None
    if rng.random() < 0.5:  # a box or blob crossing the picture
        w, h = rng.uniform(0.12, 0.3) * width, rng.uniform(0.2, 0.5) * height
        occluder = (w, h, rng.uniform(-w, width), rng.uniform(0, height - h), rng.normal(0, 3),
                    tuple(int(c) for c in rng.integers(0, 255, 3)), rng.random() < 0.5)
    out = []
    for f in range(frames):
        # motion blur: a frame is the mean of renders over its exposure (sub-frame times)
        fast = max((p.speed for p in people), default=0.0) > 2.0
        times = np.linspace(f - 0.4, f + 0.4, blur_samples) if fast and blur_samples > 1 else [float(f)]
        acc = np.zeros((height, width, 3))
        for t in times:
            im = background.copy()
            draw = ImageDraw.Draw(im)
            for p in people:
                kp, h = p.pose(t)
                synth.render_person(draw, ImageDraw.Draw(Image.new("1", (width, height))), kp, p.style, h)
            if occluder is not None:
                ow, oh, ox, oy, ov, color, box = occluder
                shape = draw.rectangle if box else draw.ellipse
                shape([ox + ov * t, oy, ox + ov * t + ow, oy + oh], fill=color)
            acc += np.asarray(im, dtype=np.float64)
        image = Image.fromarray(np.clip(acc / len(times) + 0.5, 0, 255).astype(np.uint8))
        # annotations at the frame's own time: masks of every person and of the occluder
        masks, poses = [], []
        for p in people:
            kp, h = p.pose(float(f))
            mask = Image.new("1", (width, height), 0)
            scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
            synth.render_person(scratch, ImageDraw.Draw(mask), kp, p.style, h)
            masks.append(np.array(mask, dtype=bool))
            poses.append((kp, h))
        occ = np.zeros((height, width), bool)
        if occluder is not None:
            ow, oh, ox, oy, ov, _, box = occluder
            m = Image.new("1", (width, height), 0)
            (ImageDraw.Draw(m).rectangle if box else ImageDraw.Draw(m).ellipse)(
                [ox + ov * f, oy, ox + ov * f + ow, oy + oh], fill=1)
            occ = np.array(m, dtype=bool)
        anns = []
        for n, (p, (kp, h), mask) in enumerate(zip(people, poses, masks)):
            covered = occ.copy()
            for later in masks[n + 1:]:
                covered |= later
            seen = mask & ~covered
            ys, xs = np.nonzero(seen)
            pt = to_posetrack(kp, p.style, h)
            inside = (pt[:, 0] >= 0) & (pt[:, 0] <= width - 1) & (pt[:, 1] >= 0) & (pt[:, 1] <= height - 1)
            inside[3:5] = False
            if len(xs) < 48 or not inside.any():
                continue  # hidden or gone: not annotated in this frame
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min()))
            anns.append((n, np.where(inside[:, None], pt, 0.0), inside, box, head_box(kp, p.style, h)))
        out.append((image, anns))
    return out


def video_of(seed: int, split: str, index: int, frames: int):
    rng = np.random.default_rng([int(seed), {"train": 0, "val": 1}[split], int(index), 7])
    width, height = (int(v) for v in rng.integers(192, 289, 2))
    return render_video(rng, frames, width, height)


def write_video_split(out: str, split: str, count: int, frames: int, seed: int, label_every: int = 1,
                      progress: bool = False) -> int:
    """``count`` videos of ``frames`` frames; every ``label_every``-th frame is labelled (PoseTrack's
    validation videos: every 4th). Returns the number of annotated people."""
    it = range(count)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"synth --video {split}", unit="video")
    people = 0
    os.makedirs(os.path.join(out, "annotations", split), exist_ok=True)
    for v in it:
        name = f"{v:06d}_synth_{split}"
        rel_dir = os.path.join("images", split, name)
        os.makedirs(os.path.join(out, rel_dir), exist_ok=True)
        video = Video(name, [])
        for f, (image, anns) in enumerate(video_of(seed, split, v, frames)):
            rel = os.path.join(rel_dir, f"{f:06d}.jpg")
            image.save(os.path.join(out, rel), quality=92)
            labelled = f % label_every == 0
            frame = Frame(rel, f, labelled, image_id=(v + 1) * 10000 + f)
            if labelled:
                for tid, kp, ann, box, head in anns:
                    k = np.concatenate([kp, ann[:, None].astype(np.float64)], 1)
                    frame.people.append(Person(k, tid, np.asarray(box), head))
                people += len(frame.people)
            video.frames.append(frame)
        save_posetrack18([video], os.path.join(out, "annotations", split, f"{name}.json"))
    return people


def write_video_dataset(out, train_videos: int, val_videos: int | None = None, frames: int = 24, seed: int = 0,
                        val_label_every: int = 1, progress: bool = False) -> dict:
    """Both splits (val_videos: a quarter of train_videos by default, at least 1). Returns people
    annotated per split."""
    if not isinstance(train_videos, int) or train_videos < 1:
        raise ValueError(f"train_videos must be a positive int, got {train_videos!r}")
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    if val_videos is None:
        val_videos = max(1, train_videos // 4)
    out = os.fspath(out)
    counts = {"train": write_video_split(out, "train", train_videos, frames, seed, 1, progress)}
    if val_videos:
        counts["val"] = write_video_split(out, "val", val_videos, frames, seed, val_label_every, progress)
    return counts
