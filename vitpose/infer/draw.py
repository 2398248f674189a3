"""Pictures of poses: skeletons, keypoints, boxes, scores and track ids on RGB images (Pillow),
legible at any image size, and a side-by-side heatmap view of one person.

Sizes follow the picture: limb widths and keypoint radii scale with each person's box (a
far-away person gets thin lines, a close one thick ones, within bounds set by the image), and
the label font and box outline with the image. Limbs have a dark casing so that they read on
light and dark backgrounds alike; left/right pairs of keypoints get two colours (taken from the
keypoint set's mirror order), unpaired ones a third.

Extend by passing ``label=`` (a function pose -> text) or ``color=`` (pose -> RGB); by default a
pose with a ``track_id`` gets "id N" and a colour of its own, stable across frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.keypoints import keypoint_set

SIDE_COLORS = ((255, 140, 20), (40, 150, 255), (60, 220, 90))  # first of a pair, second, unpaired
BOX_COLOR = (0, 230, 120)
CASING = (20, 20, 20)


@dataclass(frozen=True)
class Sizes:
    """Pixel sizes for one picture: box outline, font; per person: limb width, keypoint radius."""

    outline: int
    font: int

    @staticmethod
    def for_image(h: int, w: int) -> "Sizes":
        short = min(h, w)
        return Sizes(outline=max(1, round(short / 400)), font=max(10, round(short / 45)))

    def limb(self, box, h: int, w: int) -> int:
        """Limb width from the person's size: ~1/80 of sqrt(box area), at least 1 px, at most
        ~1/120 of the image's short side (so that a crowd in a large picture stays readable)."""
        person = float(np.sqrt(max(float(box[2]) * float(box[3]), 1.0)))
        return int(np.clip(round(person / 80), 1, max(1, round(min(h, w) / 120))))


def side_colors(name: str, k: int) -> list[tuple[int, int, int]]:
    """A colour per keypoint: first / second of each mirror pair, or unpaired."""
    flip = keypoint_set(name).flip_indices if name else None
    if not flip:
        return [SIDE_COLORS[2]] * k
    return [SIDE_COLORS[2] if flip[i] == i else SIDE_COLORS[0 if i < flip[i] else 1] for i in range(k)]


def track_color(track_id: int) -> tuple[int, int, int]:
    """A bright colour per track id (golden-angle hues: neighbours in id differ clearly)."""
    import colorsys
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618034) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def default_label(pose, scores: bool = True) -> str:
    parts = []
    if getattr(pose, "track_id", None) is not None:
        parts.append(f"id {pose.track_id}")
    if scores:
        parts.append(f"{float(pose.box_score):.2f}")
    return " ".join(parts)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def draw_poses(image: np.ndarray, poses, *, kpt_thr: float = 0.3, boxes: bool = True, scores: bool = True,
               label=None, color=None) -> np.ndarray:
    """image (H, W, 3) uint8 RGB -> a copy with each pose's skeleton, keypoints (those scored above
    kpt_thr), box and label drawn. label: pose -> text (default: track id and box score); color:
    pose -> RGB of its box and label (default: per track id, else one colour)."""
    from PIL import Image, ImageDraw
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    h, w = image.shape[:2]
    sizes = Sizes.for_image(h, w)
    font = _font(sizes.font)
    label = label or (lambda p: default_label(p, scores))
    color = color or (lambda p: track_color(p.track_id) if getattr(p, "track_id", None) is not None else BOX_COLOR)
    for pose in poses:
        kp, sc = np.asarray(pose.keypoints, dtype=np.float64), np.asarray(pose.scores, dtype=np.float64)
        limb = sizes.limb(pose.box, h, w)
        colors = side_colors(pose.dataset, len(kp))
        visible = sc > kpt_thr
        skeleton = keypoint_set(pose.dataset).skeleton if pose.dataset else ()
        links = [(a, b) for a, b in skeleton if a < len(kp) and b < len(kp) and visible[a] and visible[b]]
        casing = limb + 2 if limb >= 3 else limb + 1 if limb == 2 else 0  # a 1-px limb: colour only
        for a, b in links:  # the casing first, under every limb
            if casing:
                draw.line([tuple(kp[a]), tuple(kp[b])], fill=CASING, width=casing)
        for a, b in links:
            # a limb takes the colour of its side (centre limbs, e.g. shoulders-hips, the third)
            side = colors[a] if colors[a] == colors[b] else SIDE_COLORS[2]
            draw.line([tuple(kp[a]), tuple(kp[b])], fill=side, width=limb)
        r = max(1.5, 1.4 * limb)
        for (x, y), c, v in zip(kp, colors, visible):
            if v:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=c, outline=(255, 255, 255),
                             width=max(1, limb // 3))
        text = label(pose)
        if boxes or text:
            x, y, bw, bh = (float(v) for v in pose.box)
            c = color(pose)
            if boxes:
                draw.rectangle([x, y, x + bw, y + bh], outline=c, width=sizes.outline)
            if text:
                left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
                pad = max(1, sizes.font // 6)
                ty = y - (bottom - top) - 2 * pad if y - (bottom - top) - 2 * pad >= 0 else y
                draw.rectangle([x, ty, x + (right - left) + 2 * pad, ty + (bottom - top) + 2 * pad], fill=c)
                draw.text((x + pad - left, ty + pad - top), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


# ------------------------------------------------------------------------------------------------
# One person's heatmaps beside their crop
# ------------------------------------------------------------------------------------------------
# A perceptually ordered dark-to-bright ramp (black, purple, red, orange, yellow, white) for heatmaps.
_RAMP = np.array([[0, 0, 4], [60, 15, 110], [150, 40, 100], [225, 80, 40], [250, 170, 20], [252, 255, 164]],
                 dtype=np.float64)


def colorize(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)) along the ramp."""
    t = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    f = (t - i)[..., None]
    return (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).round().astype(np.uint8)


def heatmap_view(crop: np.ndarray, heatmaps: np.ndarray, pose_in_crop=None, *, names=None,
                 kpt_thr: float = 0.3, columns: int = 6) -> np.ndarray:
    """crop (H, W, 3) uint8 (the model's input, de-normalised), heatmaps (K, h, w) -> one picture:
    the crop with its pose, the crop under the largest of all heatmaps, and each keypoint's own
    heatmap in a grid (numbered, with its maximum). pose_in_crop: a Pose in crop pixels."""
    from PIL import Image, ImageDraw
    H, W = crop.shape[:2]
    K = heatmaps.shape[0]
    hm = np.asarray(heatmaps, dtype=np.float64)
    peak = max(float(hm.max()), 1e-6)

    def up(a):  # a (h, w) map to crop size, bilinear
        return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((W, H), Image.BILINEAR))

    left = draw_poses(crop, [pose_in_crop], kpt_thr=kpt_thr, boxes=False, scores=False) if pose_in_crop else crop
    overall = colorize(up(np.clip(hm.max(axis=0), 0, None)) / peak)
    blend = (0.45 * crop.astype(np.float64) + 0.55 * overall).astype(np.uint8)
    cell_w = max(W // 3, 32)
    cell_h = round(cell_w * H / W)
    rows = -(-K // columns)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), (0, 0, 0))
    gdraw = ImageDraw.Draw(grid)
    font = _font(max(10, cell_h // 7))
    for k in range(K):
        tile = Image.fromarray(colorize(np.clip(hm[k], 0, None) / peak)).resize((cell_w, cell_h), Image.BILINEAR)
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        grid.paste(tile, (x, y))
        name = names[k] if names else str(k)
        gdraw.text((x + 2, y + 1), f"{name} {hm[k].max():.2f}", fill=(255, 255, 255), font=font)
    gap = max(2, W // 60)
    height = max(H, grid.height)
    out = Image.new("RGB", (2 * W + grid.width + 2 * gap, height), (255, 255, 255))
    out.paste(Image.fromarray(np.ascontiguousarray(left)), (0, 0))
    out.paste(Image.fromarray(blend), (W + gap, 0))
    out.paste(grid, (2 * W + 2 * gap, 0))
    return np.asarray(out)
