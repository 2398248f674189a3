"""Batched top-down inference: person boxes -> UDP crops -> ViTPose -> keypoints in image pixels.

Per batch of boxes (across images): box -> center/scale (padding 1.25, aspect W:H = 3:4, as
mmpose); all crops in one ``grid_sample`` over a mosaic of the batch's images, with the UDP warp
that maps the box onto [0, W-1] x [0, H-1]; ImageNet mean/std; the model in bf16 on a GPU and fp32
on the CPU, the mirrored crops in the same batch (flip test); ``vitpose_kernels.decode_heatmaps``
merges the flips, refines (DARK-UDP) and maps back to image pixels.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

import vitpose_kernels

from ..data.keypoints import keypoint_set

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOX_PADDING = 1.25


@dataclass
class Pose:
    """One person: keypoints (K, 2) in image pixels, their scores (K,), the box (x, y, w, h)."""

    keypoints: np.ndarray
    scores: np.ndarray
    box: np.ndarray
    box_score: float = 1.0
    dataset: str = "coco"
    center: np.ndarray = field(default=None, repr=False)
    scale: np.ndarray = field(default=None, repr=False)
    track_id: int | None = None  # identity across video frames, set by a tracker when there is one

    @property
    def area(self) -> float:
        """Area of the padded box (mmpose's OKS-NMS area)."""
        return float(self.scale[0] * self.scale[1]) if self.scale is not None else float(self.box[2] * self.box[3])

    def score(self, vis_thr: float = 0.2) -> float:
        """mmpose's instance score: box score x mean of the keypoint scores above vis_thr."""
        s = self.scores[self.scores > vis_thr]
        return float(self.box_score * s.mean()) if s.size else 0.0

    def to_coco(self, image_id, category_id: int = 1) -> dict:
        kps = np.concatenate([self.keypoints, self.scores[:, None]], axis=1).reshape(-1)
        out = {"image_id": image_id, "category_id": category_id, "keypoints": [float(v) for v in kps],
               "score": self.score(), "box_score": float(self.box_score),
               "bbox": [float(v) for v in self.box]}
        if self.track_id is not None:
            out["track_id"] = int(self.track_id)
        return out


# ------------------------------------------------------------------------------------------------
# Boxes and the UDP warp
# ------------------------------------------------------------------------------------------------
def as_boxes(boxes, where: str = "") -> np.ndarray:
    """(n, 4) xywh or (n, 5) xywh + score -> (n, 5) float64; zero/negative sizes are errors."""
    arr = np.asarray(boxes if boxes is not None else np.zeros((0, 5)), dtype=np.float64)
    if arr.ndim == 1 and arr.size in (4, 5):
        arr = arr[None]
    if arr.size == 0:
        return np.zeros((0, 5))
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ValueError(f"boxes{where} must be (n, 4) xywh or (n, 5) xywh+score, got shape {arr.shape}")
    if arr.shape[1] == 4:
        arr = np.concatenate([arr, np.ones((len(arr), 1))], axis=1)
    bad = [i for i, b in enumerate(arr) if not np.isfinite(b).all() or b[2] <= 0 or b[3] <= 0]
    if bad:
        i = bad[0]
        raise ValueError(f"box {i}{where} has zero or negative size (or NaN): xywh={arr[i, :4].tolist()}; "
                         "boxes are (x, y, width, height) with width, height > 0")
    return arr


def box_to_center_scale(boxes: torch.Tensor, input_size=(192, 256), padding: float = BOX_PADDING):
    """xywh (N, 4) -> center (N, 2), scale (N, 2) in pixels: the box grown to the crop's aspect
    ratio W:H, then by ``padding`` (mmpose's _xywh2cs / bbox_xyxy2cs + fix_aspect_ratio)."""
    xy, wh = boxes[:, :2], boxes[:, 2:4]
    center = xy + wh * 0.5
    aspect = input_size[0] / input_size[1]
    w, h = wh[:, 0], wh[:, 1]
    w, h = torch.where(w > aspect * h, w, h * aspect), torch.where(w > aspect * h, w / aspect, h)
    return center, torch.stack([w, h], dim=1) * padding


def _rotate(d: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """d (N, ..., 2) rotated per sample by R(theta) = [[cos, -sin], [sin, cos]] (mmpose's sense)."""
    t = torch.deg2rad(degrees.to(d.dtype)).view((-1,) + (1,) * (d.dim() - 2))
    cos, sin = torch.cos(t), torch.sin(t)
    x, y = d[..., 0], d[..., 1]
    return torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1)


def _mirror(d: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """d (N, ..., 2) with x negated where flip (N,) is set."""
    sign = 1 - 2 * flip.to(d.dtype).view((-1,) + (1,) * (d.dim() - 1))
    return torch.cat([d[..., :1] * sign, d[..., 1:]], dim=-1)


def image_to_crop(points, center, scale, input_size=(192, 256), rotation=None, flip=None):
    """UDP: the box [c - s/2, c + s/2] maps onto [0, W-1] (and [0, H-1]). points (N, ..., 2).

    Training adds, per sample, a horizontal flip of the image (N,) bool and a rotation (N,) in
    degrees about the box center: crop = S (R(rot) F (p - c) + s/2), S = (W-1, H-1) / s, which is
    mmpose's TopDownRandomFlip + TopDownAffine(use_udp=True) (get_warp_matrix) in one map."""
    size1 = torch.as_tensor([input_size[0] - 1, input_size[1] - 1], dtype=points.dtype, device=points.device)
    shape = (-1,) + (1,) * (points.dim() - 2) + (2,)
    c, s = center.view(shape), scale.view(shape)
    d = points - c
    if flip is not None:
        d = _mirror(d, flip)
    if rotation is not None:
        d = _rotate(d, rotation)
    return (d + s * 0.5) * size1 / s


def crop_to_image(points, center, scale, input_size=(192, 256), rotation=None, flip=None):
    """The inverse of image_to_crop: p = c + F R(-rot) (q / S - s/2)."""
    size1 = torch.as_tensor([input_size[0] - 1, input_size[1] - 1], dtype=points.dtype, device=points.device)
    shape = (-1,) + (1,) * (points.dim() - 2) + (2,)
    c, s = center.view(shape), scale.view(shape)
    if rotation is None and flip is None:  # inference: the expression (and rounding) it always had
        return points * s / size1 + c - s * 0.5
    d = points * s / size1 - s * 0.5
    if rotation is not None:
        d = _rotate(d, -rotation)
    if flip is not None:
        d = _mirror(d, flip)
    return d + c


def _mosaic(images: list[torch.Tensor]):
    """Images (3, H, W) into one zero canvas, a zero row/column around each; (canvas, origins)."""
    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    origins, x, y, row_h, width = [], 1, 1, 0, 0
    for i, im in enumerate(images):
        if i and i % cols == 0:
            x, y, row_h = 1, y + row_h + 1, 0
        origins.append((x, y))
        x += im.shape[2] + 1
        row_h = max(row_h, im.shape[1])
        width = max(width, x)
    canvas = images[0].new_zeros(3, y + row_h + 1, width, dtype=torch.float32)
    for (ox, oy), im in zip(origins, images):
        canvas[:, oy:oy + im.shape[1], ox:ox + im.shape[2]] = im
    return canvas, origins


def crop_batch(images: list[torch.Tensor], image_index: torch.Tensor, centers, scales,
               input_size=(192, 256), rotation=None, flip=None, canvas_size=None) -> torch.Tensor:
    """All boxes' UDP crops (N, 3, H, W) float32 (pixel values as given), with one grid_sample.

    Bilinear sampling with pixel centers on integers and zeros outside the image, as OpenCV's
    warpAffine(INTER_LINEAR, BORDER_CONSTANT) in mmpose. The images sit in a mosaic with a zero
    border each, so the sampling never mixes two images; samples beyond a border are masked.
    Training passes per-sample ``rotation`` (degrees) and ``flip`` (bool), see image_to_crop, and
    ``canvas_size=(Hc, Wc)``: each crop then samples its own image, zero-padded to that fixed
    size, so that a crop's pixels do not depend on which other images share the batch (in the
    mosaic, the image's place changes the float rounding of the sampling positions)."""
    W, H = input_size
    dev = centers.device
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32),
                          torch.arange(W, device=dev, dtype=torch.float32), indexing="ij")
    pts = crop_to_image(torch.stack([u, v], -1).reshape(1, -1, 2).expand(len(centers), -1, -1),
                        centers.float(), scales.float(), input_size, rotation, flip)  # (N, H*W, 2)
    sizes = torch.tensor([[im.shape[2], im.shape[1]] for im in images], dtype=torch.float32,
                         device=dev)[image_index]
    inside = ((pts > -1) & (pts < sizes[:, None])).all(-1)                          # (N, H*W)
    if canvas_size is None:
        canvas, origins = _mosaic(images)
        org = torch.tensor(origins, dtype=torch.float32, device=dev)[image_index]  # (N, 2)
        pix = pts + org[:, None]
        Hc, Wc = canvas.shape[1:]
        grid = torch.stack([pix[..., 0] * (2 / (Wc - 1)) - 1, pix[..., 1] * (2 / (Hc - 1)) - 1], -1)
        out = F.grid_sample(canvas[None], grid.reshape(1, -1, W, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=True)                                     # (1, 3, N*H, W)
        out = out.view(3, len(centers), H, W).permute(1, 0, 2, 3)
    else:
        stack = _stack(images, canvas_size)[image_index]                            # (N, 3, Hc, Wc)
        Hc, Wc = stack.shape[2:]
        grid = torch.stack([pts[..., 0] * (2 / (Wc - 1)) - 1, pts[..., 1] * (2 / (Hc - 1)) - 1], -1)
        out = F.grid_sample(stack, grid.view(-1, H, W, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=True)                                     # (N, 3, H, W)
    return out * inside.view(-1, 1, H, W)


def _stack(images: list[torch.Tensor], canvas_size) -> torch.Tensor:
    """Images (3, h, w) zero-padded at the bottom/right to (3, Hc, Wc), stacked."""
    Hc, Wc = canvas_size
    big = [tuple(im.shape[1:]) for im in images if im.shape[1] > Hc or im.shape[2] > Wc]
    if big:
        raise ValueError(f"canvas_size={tuple(canvas_size)} is smaller than image(s) of (h, w) {big[:3]}")
    out = images[0].new_zeros(len(images), 3, Hc, Wc, dtype=torch.float32)
    for n, im in enumerate(images):
        out[n, :, : im.shape[1], : im.shape[2]] = im
    return out


def normalize(crops: torch.Tensor) -> torch.Tensor:
    """0-255 RGB crops -> ImageNet-normalized."""
    mean = torch.tensor(IMAGENET_MEAN, device=crops.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=crops.device).view(1, 3, 1, 1) * 255
    return (crops - mean) / std


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def load_image(image) -> torch.Tensor:
    """A path, an (H, W, 3) RGB numpy array or a (3, H, W) tensor (0-255) -> (3, H, W) tensor."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise FileNotFoundError(f"image not found: {path}")
        from PIL import Image, ImageOps
        try:
            with Image.open(path) as im:
                # EXIF orientation applied, as OpenCV's imread (mmpose's loader) does: boxes from
                # a detector refer to the upright picture.
                arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception as e:
            raise ValueError(f"could not read image {path}: {type(e).__name__}: {e}") from e
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"numpy images must be (H, W, 3) RGB, got shape {arr.shape}")
        image = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor images must be (3, H, W) RGB in 0-255, got shape {tuple(image.shape)}")
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"empty image, shape {tuple(image.shape)}")
        if image.is_floating_point() and image.numel() and not torch.isfinite(image).all():
            raise ValueError("image contains NaN/Inf")
        return image
    raise TypeError(f"an image is a path, a numpy array or a tensor, got {type(image).__name__}")


# ------------------------------------------------------------------------------------------------
# The predictor
# ------------------------------------------------------------------------------------------------
class TopDownPredictor:
    """``TopDownPredictor(model)(images, boxes) -> [[Pose, ...] per image]``.

    model: a ViTPose or a checkpoint path. device: default CUDA when available; dtype: bf16 on
    CUDA, fp32 on the CPU. flip: flip test (on by default; off for keypoint sets without a known
    mirror order). batch_size: crops per forward pass (the flipped ones not counted). detector: a
    ``PersonDetector`` or the folder of a transformers object detector, used for images given
    without boxes (else each whole image is one box).
    """

    def __init__(self, model, *, device=None, dtype=None, flip: bool = True, batch_size: int = 32,
                 dataset_index: int = 0, fold_batchnorm: bool = True, detector=None):
        from ..models.checkpoints import load_model
        from ..models.vitpose import ViTPose
        if not isinstance(model, ViTPose):
            model = load_model(model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        model = model.eval().to(self.device)  # moves the caller's model, as HF pipelines do
        # BatchNorm is folded before the cast to bf16, so that the folded weights are rounded once.
        self.model = (_with_folded_heads(model) if fold_batchnorm else model).to(self.dtype)
        cfg = model.config
        if not 0 <= dataset_index < model.num_datasets:
            raise ValueError(f"dataset_index must be in [0, {model.num_datasets}), got {dataset_index}")
        self.dataset_index = dataset_index
        self.keypoints = keypoint_set(cfg.datasets[min(dataset_index, len(cfg.datasets) - 1)])
        self.flip = flip and self.keypoints.flip_indices is not None
        self.batch_size = batch_size
        self.input_size = (cfg.img_size[1], cfg.img_size[0])  # (W, H)
        self.backend = cfg.backend
        if detector is not None and not callable(detector):
            from .detect import PersonDetector
            detector = PersonDetector(detector, device=self.device)
        self.detector = detector

    @torch.inference_mode()
    def run_boxes(self, images: list[torch.Tensor], image_index, boxes) -> tuple[torch.Tensor, ...]:
        """One batch: images (3, H, W), image_index (N,), boxes (N, 4+) xywh -> keypoints (N, K, 2),
        scores (N, K), centers (N, 2), scales (N, 2), all float32 on the device."""
        dev = self.device
        images = [im.to(dev, non_blocking=True) for im in images]
        image_index = torch.as_tensor(image_index, device=dev, dtype=torch.long)
        boxes = torch.as_tensor(np.asarray(boxes)[:, :4], dtype=torch.float32, device=dev)
        centers, scales = box_to_center_scale(boxes, self.input_size)
        x = normalize(crop_batch(images, image_index, centers, scales, self.input_size)).to(self.dtype)
        n = len(boxes)
        if self.flip:
            x = torch.cat([x, x.flip(-1)])
        heatmaps = self.model(x, self.dataset_index).float()
        flipped = None
        if self.flip:
            heatmaps, flipped = heatmaps[:n], heatmaps[n:]
        kp, sc = vitpose_kernels.decode_heatmaps(
            heatmaps, flip_heatmaps=flipped, flip_indices=self.keypoints.flip_indices if self.flip else None,
            input_size=self.input_size, bbox_centers=centers, bbox_scales=scales, backend=self.backend)
        return kp, sc, centers, scales

    def __call__(self, images, boxes=None) -> list[list[Pose]]:
        """images: a list (paths, arrays, tensors) or one image; boxes: per image (n, 4|5), or None
        for the whole image as one box. Raises on the first bad item."""
        single = not isinstance(images, (list, tuple))
        if single:
            images, boxes = [images], ([boxes] if boxes is not None else None)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"boxes must be given per image: {len(images)} images, {len(boxes)} box lists")
        if boxes is None and self.detector is not None:
            images = [load_image(im) for im in images]
            boxes = self.detector(images)
        items = ((i, im, None if boxes is None else boxes[i]) for i, im in enumerate(images))
        out = [poses for _, poses in self.iter_predict(items, errors="raise")]
        return out[0] if single else out

    def iter_predict(self, items: Iterable, errors: str = "raise") -> Iterator:
        """items: (key, image, boxes or None). Yields (key, [Pose]) in order, batching boxes across
        items; with errors="yield", a bad item yields (key, exception) and the rest go on."""
        if errors not in ("raise", "yield"):
            raise ValueError(f"errors must be 'raise' or 'yield', got {errors!r}")
        pending, count = [], 0
        for key, image, boxes in items:
            try:
                img = load_image(image)
                arr = (as_boxes(boxes, f" of {key!r}") if boxes is not None else
                       np.array([[0, 0, img.shape[2], img.shape[1], 1.0]], dtype=np.float64))
                pending.append((key, img, arr))
                count += len(arr)
            except Exception as e:
                if errors == "raise":
                    raise
                pending.append((key, e, None))
            # Items without boxes (or failed ones) count too: a video whose frames have no boxes
            # must not pile its frames up in memory.
            if count >= self.batch_size or len(pending) >= self.batch_size:
                yield from self._flush(pending, errors)
                pending, count = [], 0
        yield from self._flush(pending, errors)

    def _flush(self, pending, errors):
        out = self.predict_batch([img for _, img, _ in pending], [arr for _, _, arr in pending],
                                 errors=errors)
        for (key, _, _), poses in zip(pending, out):
            yield key, poses

    def predict_batch(self, images: list[torch.Tensor], boxes: list, errors: str = "raise") -> list:
        """Poses of every box of a group of loaded images ((3, H, W) tensors), in forward passes
        of ``batch_size`` crops -> [[Pose] per image]. boxes: (n, 5) arrays from ``as_boxes``;
        an entry None marks a failed item, whose image slot holds its exception (passed through).
        With errors="yield" a failing forward pass fails the group's items with its exception.

        A group's results depend only on the group (the batches it forms), so a resumed or
        sharded batch job that forms the same groups computes bit-identical poses."""
        ok = [(j, img, arr) for j, (img, arr) in enumerate(zip(images, boxes)) if arr is not None]
        flat = [(slot, b) for slot, (_, _, arr) in enumerate(ok) for b in range(len(arr))]
        results = {j: [] for j, _, _ in ok}
        failure = None
        try:
            for start in range(0, len(flat), self.batch_size):
                chunk = flat[start:start + self.batch_size]
                used = sorted({slot for slot, _ in chunk})
                local = {slot: i for i, slot in enumerate(used)}
                boxes_ = np.stack([ok[slot][2][b] for slot, b in chunk])
                kp, sc, c, s = self.run_boxes([ok[slot][1] for slot in used],
                                              [local[slot] for slot, _ in chunk], boxes_)
                kp, sc, c, s = (t.cpu().numpy() for t in (kp, sc, c, s))
                for n, ((slot, _), box) in enumerate(zip(chunk, boxes_)):
                    results[ok[slot][0]].append(Pose(kp[n], sc[n], box[:4].copy(), float(box[4]),
                                                     self.keypoints.name, c[n], s[n]))
        except Exception as e:
            if errors == "raise":
                raise
            failure = e
        return [img if arr is None else (failure if failure is not None else results[j])
                for j, (img, arr) in enumerate(zip(images, boxes))]


def _with_folded_heads(model):
    """The model with BatchNorm folded into copies of its (small) decoders; the caller's model and
    its backbone are left as they are (shared)."""
    import copy
    twin = copy.copy(model)
    twin._modules = dict(model._modules)
    twin.keypoint_head = copy.deepcopy(model.keypoint_head)
    twin.associate_keypoint_heads = copy.deepcopy(model.associate_keypoint_heads)
    return twin.fold_batchnorm()


def predict(model, images, boxes=None, **kwargs) -> list[list[Pose]]:
    """One call: ``predict(model_or_checkpoint, images, boxes)``; kwargs go to TopDownPredictor."""
    return TopDownPredictor(model, **kwargs)(images, boxes)
