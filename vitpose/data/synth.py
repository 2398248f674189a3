"""Synthetic people anyone can generate: rendered stick figures with COCO's 17 keypoints.

    write_dataset("synth/", train_images=2000, val_images=200, seed=0)   # = `vitpose synth`

writes ``synth/annotations/{train,val}.json`` (COCO keypoint format) and ``synth/images/``. Every
image is a random background with clutter, one to several people (random pose, size, rotation,
limb thickness and colours), random occluders and people cut by the image border. Visibility
follows COCO: 2 visible, 1 labelled but hidden (under an occluder or another person), 0 outside the
image (coordinates 0). Boxes and areas come from each person's visible pixels, like COCO's
segmentations. Image i of a split depends only on (seed, split, i): a given seed always gives the
same files, whatever the number of images.

The pieces are separate so that other generators reuse them (e.g. a video of moving people):
``random_pose`` (a pose in body units), ``place`` (onto the image), ``random_style``,
``render_person`` (one figure onto a canvas, returning its mask), ``random_background``.
Figures face the camera, so left and right are told apart by geometry (a figure's left shoulder
is on the image's right when upright), as for most people in COCO, and horizontal flipping with
swapped labels stays consistent.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from .keypoints import COCO_SIGMAS, COCO_SKELETON

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle")
# Limbs drawn as thick segments: (joint a, joint b, part) with part an index into Style.colors.
LIMBS = ((5, 7, 0), (7, 9, 0), (6, 8, 1), (8, 10, 1), (11, 13, 2), (13, 15, 2), (12, 14, 3), (14, 16, 3))


# ------------------------------------------------------------------------------------------------
# Poses, in body units: x to the image right, y down, top of the head at y = 0, standing height 1
# ------------------------------------------------------------------------------------------------
def _limb(rng, start, angle_deg, length):
    a = math.radians(angle_deg)
    return start + length * np.array([math.sin(a), math.cos(a)])  # angle 0 points down


def random_pose(rng: np.random.Generator) -> np.ndarray:
    """A random front-facing pose (17, 2) in body units. Arms swing from hanging (0 deg) to raised
    (180 deg) with a bent elbow; legs from standing to a high step or a kneel; the trunk leans and
    the head turns a little."""
    k = np.zeros((17, 2))
    shoulder_w = rng.uniform(0.10, 0.14)
    hip_w = rng.uniform(0.07, 0.10)
    neck = np.array([0.0, 0.17])
    pelvis = np.array([0.0, 0.52 + rng.uniform(-0.03, 0.03)])
    lean = math.radians(rng.normal(0, 8))  # trunk lean about the pelvis
    rot = np.array([[math.cos(lean), -math.sin(lean)], [math.sin(lean), math.cos(lean)]])
    k[5], k[6] = neck + [shoulder_w, 0.01], neck + [-shoulder_w, 0.01]  # left on the image right
    k[11], k[12] = pelvis + [hip_w, 0], pelvis + [-hip_w, 0]
    head = np.array([0.0, 0.075])
    yaw, tilt = rng.uniform(-0.02, 0.02), rng.normal(0, 0.01)
    k[0] = head + [yaw * 1.5, 0.025 + tilt]
    k[1], k[2] = head + [0.025 + yaw, tilt], head + [-0.025 + yaw, tilt]
    k[3], k[4] = head + [0.055 + yaw * 0.5, 0.01], head + [-0.055 + yaw * 0.5, 0.01]
    upper = [0, 1, 2, 3, 4, 5, 6]
    k[upper] = (k[upper] - pelvis) @ rot.T + pelvis
    for side, (s, e, w) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        up = rng.uniform(0.15, 0.19) * rng.uniform(0.9, 1.1)
        fore = rng.uniform(0.13, 0.17)
        swing = rng.uniform(-25, 180) if rng.random() < 0.8 else rng.uniform(-60, -25)  # across the body
        bend = rng.uniform(0, 150) * (1 if rng.random() < 0.5 else -1)
        k[e] = _limb(rng, k[s], side * swing - math.degrees(lean), up)
        k[w] = _limb(rng, k[e], side * (swing + bend) - math.degrees(lean), fore)
    kneel = rng.random() < 0.1
    for side, (h, kn, a) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        thigh, shin = rng.uniform(0.22, 0.26), rng.uniform(0.21, 0.25)
        spread = rng.uniform(-10, 35) if rng.random() < 0.8 else rng.uniform(35, 100)
        bend = -rng.uniform(0, 100 if not kneel else 140)  # knees bend backwards: shin swings in
        k[kn] = _limb(rng, k[h], side * spread, thigh)
        k[a] = _limb(rng, k[kn], side * spread + side * bend * 0.3, shin * (0.6 if kneel else 1.0))
        if rng.random() < 0.3:  # a step: the ankle lifted towards the knee
            k[a] = k[kn] + (k[a] - k[kn]) * rng.uniform(0.5, 1.0) + [side * rng.uniform(0, 0.1), -0.05]
    return k


def place(pose: np.ndarray, center, height: float, rotation_deg: float = 0.0, mirror: bool = False) -> np.ndarray:
    """Body units -> image pixels: scaled to ``height``, rotated about the body's center (degrees,
    clockwise on screen), centred at ``center``. mirror=True mirrors the figure (for a video of a
    figure turning round: the labels then need swapping, as a flip does)."""
    p = pose - pose.mean(0)
    if mirror:
        p[:, 0] = -p[:, 0]
    a = math.radians(rotation_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return p @ rot.T * height + np.asarray(center, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------
@dataclass
class Style:
    """How one figure looks: four limb colours (left/right arm, left/right leg), trunk and head
    colours, limb thickness per limb (fraction of the height)."""
    colors: tuple
    trunk: tuple
    skin: tuple
    thickness: tuple
    head_radius: float


def _color(rng, lo=30, hi=230):
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def random_style(rng: np.random.Generator) -> Style:
    base = _color(rng)
    colors = tuple(base if rng.random() < 0.5 else _color(rng) for _ in range(4))
    thick = rng.uniform(0.05, 0.09)
    return Style(colors=colors, trunk=_color(rng), skin=_color(rng, 90, 250),
                 thickness=tuple(thick * rng.uniform(0.7, 1.3) for _ in LIMBS),
                 head_radius=rng.uniform(0.065, 0.085))


def render_person(draw, mask_draw, kp: np.ndarray, style: Style, height: float) -> None:
    """Draw one figure (keypoints (17, 2) in pixels) with PIL ImageDraw ``draw`` and paint its
    pixels into the 1-bit ``mask_draw``."""
    def seg(a, b, width, color):
        w = max(1, int(round(width)))
        for d, c in ((draw, color), (mask_draw, 1)):
            d.line([tuple(a), tuple(b)], fill=c, width=w)
            for p in (a, b):  # round joints
                r = w / 2
                d.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=c)

    trunk = [tuple(kp[i]) for i in (5, 6, 12, 11)]
    for d, c in ((draw, style.trunk), (mask_draw, 1)):
        d.polygon(trunk, fill=c)
    neck = (kp[5] + kp[6]) / 2
    head = (kp[1] + kp[2]) / 2 + [0, 0.01 * height]
    seg(neck, head, 0.05 * height, style.skin)
    for (a, b, part), t in zip(LIMBS, style.thickness):
        seg(kp[a], kp[b], t * height, style.colors[part])
    r = style.head_radius * height
    for i in (3, 4):  # ears
        e = kp[i]
        for d, c in ((draw, style.skin), (mask_draw, 1)):
            d.ellipse([e[0] - r * 0.35, e[1] - r * 0.45, e[0] + r * 0.35, e[1] + r * 0.45], fill=c)
    for d, c in ((draw, style.skin), (mask_draw, 1)):
        d.ellipse([head[0] - r, head[1] - r * 1.15, head[0] + r, head[1] + r * 1.15], fill=c)
    dark = tuple(max(0, v - 120) for v in style.skin)
    for i, f in ((1, 0.18), (2, 0.18), (0, 0.14)):  # eyes and nose: small dark marks
        p, q = kp[i], r * f
        draw.ellipse([p[0] - q, p[1] - q, p[0] + q, p[1] + q], fill=dark if i else style.trunk)


def random_background(rng: np.random.Generator, width: int, height: int):
    """A PIL RGB image: a two-colour gradient, noise and random clutter (lines, boxes, blobs)."""
    from PIL import Image, ImageDraw
    a, b = np.array(_color(rng, 0, 255), float), np.array(_color(rng, 0, 255), float)
    t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None, None]
    grad = a + (b - a) * t
    img = np.broadcast_to(grad, (height, width, 3)) + rng.normal(0, 8, (height, width, 3))
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(3, 12)):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = x0 + rng.normal(0, width / 4), y0 + rng.normal(0, height / 4)
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        kind = rng.integers(3)
        if kind == 0:
            draw.line([(x0, y0), (x1, y1)], fill=_color(rng, 0, 255), width=int(rng.integers(1, 8)))
        elif kind == 1:
            draw.rectangle(box, fill=_color(rng, 0, 255))
        else:
            draw.ellipse(box, fill=_color(rng, 0, 255))
    return im


@dataclass
class Annotation:
    keypoints: np.ndarray  # (17, 2) pixels
    visible: np.ndarray    # (17,) COCO visibility 0/1/2
    box: tuple             # xywh of the visible pixels
    area: float            # visible pixels


def render_image(rng: np.random.Generator, width: int, height: int, max_people: int = 3):
    """One picture: (PIL image, [Annotation]). People are drawn back to front; a keypoint covered by
    a later person or an occluder becomes 1, one outside the image 0."""
    from PIL import Image, ImageDraw
    im = random_background(rng, width, height)
    draw = ImageDraw.Draw(im)
    people = []
    n = int(rng.integers(1, max_people + 1))
    for _ in range(n):
        h = rng.uniform(0.35, 0.9) * min(width, height) * (1.3 if rng.random() < 0.1 else 1.0)
        # mostly inside; sometimes half out (truncation)
        margin = -0.25 * h if rng.random() < 0.2 else 0.3 * h
        cx = rng.uniform(min(margin, width / 2), max(width - margin, width / 2))
        cy = rng.uniform(min(margin, height / 2), max(height - margin, height / 2))
        rotation = rng.normal(0, 15) if rng.random() < 0.85 else rng.uniform(-180, 180)
        kp = place(random_pose(rng), (cx, cy), h, rotation)
        style = random_style(rng)
        mask = Image.new("1", (width, height), 0)
        render_person(draw, ImageDraw.Draw(mask), kp, style, h)
        people.append([kp, np.array(mask, dtype=bool)])
    covered = [np.zeros((height, width), dtype=bool) for _ in people]
    for i in range(len(people)):
        for j in range(i + 1, len(people)):
            covered[i] |= people[j][1]
    for _ in range(rng.choice(3, p=(0.5, 0.35, 0.15))):  # occluders: boxes and blobs over everything
        w, hh = rng.uniform(0.1, 0.4) * width, rng.uniform(0.1, 0.4) * height
        x0, y0 = rng.uniform(-w / 2, width - w / 2), rng.uniform(-hh / 2, height - hh / 2)
        occ = Image.new("1", (width, height), 0)
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([x0, y0, x0 + w, y0 + hh], fill=_color(rng, 0, 255))
        (ImageDraw.Draw(occ).rectangle if shape == draw.rectangle else ImageDraw.Draw(occ).ellipse)(
            [x0, y0, x0 + w, y0 + hh], fill=1)
        occ = np.array(occ, dtype=bool)
        for c in covered:
            c |= occ
    anns = []
    for (kp, mask), cov in zip(people, covered):
        seen = mask & ~cov
        ys, xs = np.nonzero(seen)
        inside = (kp[:, 0] >= 0) & (kp[:, 0] <= width - 1) & (kp[:, 1] >= 0) & (kp[:, 1] <= height - 1)
        ix = np.clip(np.round(kp[:, 0]).astype(int), 0, width - 1)
        iy = np.clip(np.round(kp[:, 1]).astype(int), 0, height - 1)
        vis = np.where(inside, np.where(cov[iy, ix], 1, 2), 0)
        if len(xs) < 64 or (vis > 0).sum() == 0:
            continue  # fully hidden or off the picture: no annotation, as in COCO
        kp = np.where(vis[:, None] > 0, kp, 0.0)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        anns.append(Annotation(kp, vis, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), float(len(xs))))
    return im, anns


# ------------------------------------------------------------------------------------------------
# Datasets on disk
# ------------------------------------------------------------------------------------------------
def category() -> dict:
    """The COCO person category with the metadata the trainer reads (0-based flip pairs, sigmas)."""
    return {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
            "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON],
            "flip_pairs": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]],
            "sigmas": list(COCO_SIGMAS)}


def split_image(seed: int, split: str, index: int):
    """Image ``index`` of a split: (PIL image, annotations), a function of (seed, split, index) only."""
    rng = np.random.default_rng([int(seed), {"train": 0, "val": 1}[split], int(index)])
    width, height = (int(v) for v in rng.integers(192, 321, 2))
    return render_image(rng, width, height)


def write_split(out: str, split: str, count: int, seed: int, progress: bool = False) -> dict:
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    images, annotations = [], []
    it = range(count)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"synth {split}", unit="img")
    for i in it:
        im, anns = split_image(seed, split, i)
        name = f"{split}_{i:06d}.jpg"
        im.save(os.path.join(out, "images", name), quality=92)
        images.append({"id": i + 1, "file_name": name, "width": im.width, "height": im.height})
        for a in anns:
            kps = np.concatenate([a.keypoints, a.visible[:, None]], 1).reshape(-1)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "keypoints": [round(float(v), 2) for v in kps],
                                "num_keypoints": int((a.visible > 0).sum()), "bbox": list(a.box),
                                "area": a.area, "iscrowd": 0})
    data = {"info": {"description": f"vitpose synth, seed {seed}, split {split}", "seed": seed},
            "images": images, "annotations": annotations, "categories": [category()]}
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    path = os.path.join(out, "annotations", f"{split}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return data


def write_dataset(out, train_images: int, val_images: int = None, seed: int = 0, progress: bool = False) -> dict:
    """Both splits; val_images defaults to a tenth of train_images (at least 1). Returns counts."""
    if not isinstance(train_images, int) or train_images < 1:
        raise ValueError(f"train_images must be a positive int, got {train_images!r}")
    if val_images is None:
        val_images = max(1, train_images // 10)
    if val_images < 0:
        raise ValueError(f"val_images must be >= 0, got {val_images}")
    out = os.fspath(out)
    counts = {}
    for split, n in (("train", train_images), ("val", val_images)):
        if n:
            counts[split] = len(write_split(out, split, n, seed, progress)["annotations"])
    return counts
