"""Drawing poses (skeleton and keypoints) on RGB images with Pillow."""
from __future__ import annotations

import numpy as np

from ..data.keypoints import keypoint_set

_PALETTE = [(255, 128, 0), (255, 153, 51), (255, 178, 102), (230, 230, 0), (255, 153, 255),
            (153, 204, 255), (255, 102, 255), (255, 51, 255), (102, 178, 255), (51, 153, 255),
            (255, 153, 153), (255, 102, 102), (255, 51, 51), (153, 255, 153), (102, 255, 102),
            (51, 255, 51), (0, 255, 0), (0, 0, 255), (255, 0, 0)]


def draw_poses(image: np.ndarray, poses, *, kpt_thr: float = 0.3, boxes: bool = True) -> np.ndarray:
    """image (H, W, 3) uint8 RGB -> a copy with each pose's box, limbs and keypoints drawn."""
    from PIL import Image, ImageDraw
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(image.shape[:2]) / 240))
    for pose in poses:
        kp, sc = pose.keypoints, pose.scores
        if boxes:
            x, y, w, h = (float(v) for v in pose.box)
            draw.rectangle([x, y, x + w, y + h], outline=(0, 255, 0), width=width)
        skeleton = keypoint_set(pose.dataset).skeleton if pose.dataset else ()
        for j, (a, b) in enumerate(skeleton):
            if a < len(kp) and b < len(kp) and sc[a] > kpt_thr and sc[b] > kpt_thr:
                draw.line([tuple(map(float, kp[a])), tuple(map(float, kp[b]))],
                          fill=_PALETTE[j % len(_PALETTE)], width=2 * width)
        r = 2 * width
        for (x, y), s in zip(kp, sc):
            if s > kpt_thr:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 0, 0), outline=(255, 255, 255))
    return np.asarray(canvas)


# ------------------------------------------------------------------------------------------------
# Tracked poses: one colour per identity, its id by the box
# ------------------------------------------------------------------------------------------------
def track_color(track_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per track id (hues spaced by the golden ratio)."""
    import colorsys
    h = (int(track_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_tracked_poses(image: np.ndarray, poses, *, kpt_thr: float = 0.3) -> np.ndarray:
    """image (H, W, 3) uint8 RGB -> a copy with each pose's box, limbs and keypoints in the colour
    of its track and "id N" by its box (poses without ``track_id``: green, no label)."""
    from PIL import Image, ImageDraw
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(image.shape[:2]) / 240))
    for pose in poses:
        tid = getattr(pose, "track_id", None)
        color = track_color(tid) if tid is not None else (0, 255, 0)
        kp, sc = pose.keypoints, pose.scores
        x, y, w, h = (float(v) for v in pose.box)
        draw.rectangle([x, y, x + w, y + h], outline=color, width=width)
        if tid is not None:
            label = f"id {tid}"
            tx, ty = x + width, max(0.0, y - 11 * width)
            draw.rectangle(draw.textbbox((tx, ty), label), fill=color)
            draw.text((tx, ty), label, fill=(0, 0, 0))
        skeleton = keypoint_set(pose.dataset).skeleton if pose.dataset else ()
        for a, b in skeleton:
            if a < len(kp) and b < len(kp) and sc[a] > kpt_thr and sc[b] > kpt_thr:
                draw.line([tuple(map(float, kp[a])), tuple(map(float, kp[b]))], fill=color, width=2 * width)
        r = 2 * width
        for (px, py), s in zip(kp, sc):
            if s > kpt_thr:
                draw.ellipse([px - r, py - r, px + r, py + r], fill=color, outline=(255, 255, 255))
    return np.asarray(canvas)
