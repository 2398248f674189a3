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
