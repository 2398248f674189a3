"""Batched top-down inference: person boxes -> UDP crops -> ViTPose -> keypoints in image pixels.

Per batch of boxes (across images): box -> center/scale (padding 1.25, aspect W:H = 3:4, as
mmpose); all crops in one ``grid_sample`` over a mosaic of the batch's images, with the UDP warp
that maps the box onto [0, W-1] x [0, H-1]; ImageNet mean/std; the model in bf16 on a GPU and fp32
on the CPU, the mirrored crops in the same batch (flip test); ``vitpose_kernels.decode_heatmaps``
merges the flips, refines (DARK-UDP) and maps back to image pixels.

Any model that says its crop size and decoding works here (ViTPose, TokenPose): ``model.input_size``
(W, H), ``model.decode_method`` (a decode_heatmaps method; "dark" also selects the HRNet/DARK code's
crop geometry that its decoding inverts: box center x + (w - 1) / 2, one isotropic factor
(s_w - 1) / (W - 1) about the crop's center), ``model.datasets`` (keypoint sets, one per head),
``model.num_datasets`` and optionally ``model.backend``; ``model(x, dataset_index)`` -> heatmaps.
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


def box_to_center_scale(boxes: torch.Tensor, input_size=(192, 256), padding: float = BOX_PADDING,
                        method: str = "udp"):
    """xywh (N, 4) -> center (N, 2), scale (N, 2) in pixels: the box grown to the crop's aspect
    ratio W:H, then by ``padding`` (mmpose's _xywh2cs / bbox_xyxy2cs + fix_aspect_ratio; with
    method="dark" the HRNet code's center, x + (w - 1) / 2)."""
    xy, wh = boxes[:, :2], boxes[:, 2:4]
    center = xy + (wh - 1) * 0.5 if method == "dark" else xy + wh * 0.5
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


def image_to_crop(points, center, scale, input_size=(192, 256), rotation=None, flip=None, method: str = "udp"):
    """UDP: the box [c - s/2, c + s/2] maps onto [0, W-1] (and [0, H-1]). points (N, ..., 2).

    Training adds, per sample, a horizontal flip of the image (N,) bool and a rotation (N,) in
    degrees about the box center: crop = S (R(rot) F (p - c) + s/2), S = (W-1, H-1) / s, which is
    mmpose's TopDownRandomFlip + TopDownAffine(use_udp=True) (get_warp_matrix) in one map.
    method="dark" (the HRNet/DARK code's get_affine_transform, TokenPose): the box center goes to
    the crop's center ((W-1)/2, (H-1)/2) with one factor k = (W-1)/(s_w-1) for both axes:
    crop = k R(rot) F (p - c) + (W-1, H-1)/2 (rotation in mmpose's sense; the HRNet code's is the
    opposite, the same distribution for its symmetric random rotations)."""
    size1 = torch.as_tensor([input_size[0] - 1, input_size[1] - 1], dtype=points.dtype, device=points.device)
    shape = (-1,) + (1,) * (points.dim() - 2) + (2,)
    c, s = center.view(shape), scale.view(shape)
    d = points - c
    if flip is not None:
        d = _mirror(d, flip)
    if rotation is not None:
        d = _rotate(d, rotation)
    if method == "dark":
        return d * (size1[0] / (s[..., :1] - 1)) + size1 * 0.5
    return (d + s * 0.5) * size1 / s


def crop_to_image(points, center, scale, input_size=(192, 256), rotation=None, flip=None, method: str = "udp",
                  size1=None):
    """The inverse of image_to_crop: p = c + F R(-rot) (q / S - s/2) (method="dark": (q - (W-1, H-1)/2) / k).
    size1: [W-1, H-1] as a tensor made beforehand (no host copy)."""
    if size1 is None:
        size1 = torch.as_tensor([input_size[0] - 1, input_size[1] - 1], dtype=points.dtype, device=points.device)
    shape = (-1,) + (1,) * (points.dim() - 2) + (2,)
    c, s = center.view(shape), scale.view(shape)
    if method == "dark":
        d = (points - size1 * 0.5) * ((s[..., :1] - 1) / size1[0])
    elif rotation is None and flip is None:  # inference: the expression (and rounding) it always had
        return points * s / size1 + c - s * 0.5
    else:
        d = points * s / size1 - s * 0.5
    if rotation is not None:
        d = _rotate(d, -rotation)
    if flip is not None:
        d = _mirror(d, flip)
    return d + c


def mosaic_layout(shapes) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Where images of these (H, W) go in one canvas, a zero row/column around each: the (x, y)
    origins and the canvas (H, W)."""
    n = len(shapes)
    cols = max(1, math.ceil(math.sqrt(n)))
    origins, x, y, row_h, width = [], 1, 1, 0, 0
    for i, (h, w) in enumerate(shapes):
        if i and i % cols == 0:
            x, y, row_h = 1, y + row_h + 1, 0
        origins.append((x, y))
        x += w + 1
        row_h = max(row_h, h)
        width = max(width, x)
    return origins, (y + row_h + 1, width)


def paste(canvas: torch.Tensor, images, origins) -> torch.Tensor:
    for (ox, oy), im in zip(origins, images):
        canvas[:, oy:oy + im.shape[1], ox:ox + im.shape[2]] = im
    return canvas


def _mosaic(images: list[torch.Tensor]):
    """Images (3, H, W) into one zero canvas, a zero row/column around each; (canvas, origins)."""
    origins, hw = mosaic_layout([im.shape[1:] for im in images])
    return paste(images[0].new_zeros(3, *hw, dtype=torch.float32), images, origins), origins


def _stack(images: list[torch.Tensor], canvas_size) -> torch.Tensor:
    """Images (3, h, w) zero-padded at the bottom/right to (3, Hc, Wc), stacked: (n, 3, Hc, Wc)."""
    Hc, Wc = canvas_size
    big = [tuple(im.shape[1:]) for im in images if im.shape[1] > Hc or im.shape[2] > Wc]
    if big:
        raise ValueError(f"canvas_size={tuple(canvas_size)} is smaller than image(s) of (h, w) {big[:3]}")
    out = images[0].new_zeros(len(images), 3, Hc, Wc, dtype=torch.float32)
    for n, im in enumerate(images):
        out[n, :, : im.shape[1], : im.shape[2]] = im
    return out


def crop_batch(images: list[torch.Tensor], image_index: torch.Tensor, centers, scales,
               input_size=(192, 256), rotation=None, flip=None, canvas_size=None,
               method: str = "udp") -> torch.Tensor:
    """All boxes' UDP crops (N, 3, H, W) float32 (pixel values as given), with one grid_sample.

    Bilinear sampling with pixel centers on integers and zeros outside the image, as OpenCV's
    warpAffine(INTER_LINEAR, BORDER_CONSTANT) in mmpose. The images sit in a mosaic with a zero
    border each, so the sampling never mixes two images; samples beyond a border are masked.
    Training passes per-sample ``rotation`` (degrees) and ``flip`` (bool), see image_to_crop, and
    ``canvas_size=(Hc, Wc)``: each crop then samples its own image, zero-padded to that fixed
    size, so that a crop's pixels do not depend on which other images share the batch (in the
    mosaic, the image's place changes the float rounding of the sampling positions). ``method``:
    the crop geometry (see image_to_crop)."""
    dev = centers.device
    sizes = torch.tensor([[im.shape[2], im.shape[1]] for im in images], dtype=torch.float32,
                         device=dev)[image_index]
    if canvas_size is None:
        canvas, origins = _mosaic(images)
        org = torch.tensor(origins, dtype=torch.float32, device=dev)[image_index]      # (N, 2)
    else:  # one canvas per box
        canvas, org = _stack(images, canvas_size)[image_index], torch.zeros(len(centers), 2, device=dev)
    return crop_from_canvas(canvas, org, sizes, centers, scales, input_size, rotation=rotation, flip=flip,
                            method=method)


def crop_lattice(input_size, device) -> torch.Tensor:
    """The crop's pixel centres (1, H*W, 2) as (u, v)."""
    W, H = input_size
    v, u = torch.meshgrid(torch.arange(H, device=device, dtype=torch.float32),
                          torch.arange(W, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([u, v], -1).reshape(1, -1, 2)


def crop_from_canvas(canvas, origins, sizes, centers, scales, input_size=(192, 256), lattice=None, size1=None, *,
                     rotation=None, flip=None, method: str = "udp"):
    """crop_batch's sampling, given the canvas (3, Hc, Wc), or one per box (N, 3, Hc, Wc), and per
    box its image's origin in the canvas and (width, height), (N, 2) float32. With lattice and size1
    made beforehand it creates no tensor from host data, so it can be captured in a CUDA graph."""
    W, H = input_size
    if lattice is None:
        lattice = crop_lattice(input_size, centers.device)
    pts = crop_to_image(lattice.expand(len(centers), -1, -1), centers.float(), scales.float(), input_size,
                        rotation, flip, method, size1)                              # (N, H*W, 2)
    inside = ((pts > -1) & (pts < sizes[:, None])).all(-1)                          # (N, H*W)
    pix = pts if origins is None else pts + origins[:, None]
    Hc, Wc = canvas.shape[-2:]
    grid = torch.stack([pix[..., 0] * (2 / (Wc - 1)) - 1, pix[..., 1] * (2 / (Hc - 1)) - 1], -1)
    if canvas.dim() == 4:
        out = F.grid_sample(canvas, grid.view(-1, H, W, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=True)                                     # (N, 3, H, W)
    else:
        out = F.grid_sample(canvas[None], grid.reshape(1, -1, W, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=True)                                     # (1, 3, N*H, W)
        out = out.view(3, len(centers), H, W).permute(1, 0, 2, 3)
    return out * inside.view(-1, 1, H, W)


def normalize(crops: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """0-255 RGB crops -> ImageNet-normalized (mean, std: (1, 3, 1, 1) in 0-255 units, if made beforehand)."""
    if mean is None:
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
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:  # e.g. np.asarray(PIL image): torch wants memory it may write
            arr = arr.copy()
        image = torch.from_numpy(arr).permute(2, 0, 1)
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

    model: a ViTPose, a TokenPose (any model with the protocol in the module docstring) or a
    checkpoint path. device: default CUDA when available; dtype: bf16 on CUDA, fp32 on the CPU.
    flip: flip test (on by default; off for keypoint sets without a known mirror order).
    batch_size: crops per forward pass (the flipped ones not counted). detector: a
    ``PersonDetector`` or the folder of a transformers object detector, used for images given
    without boxes (else each whole image is one box). mode: "eager" (default), or the serving
    path of ``serving.py``: "graph" (each batch-size bucket replayed as a CUDA graph), "compile"
    (torch.compile, then CUDA graphs on a GPU), "static" (the buckets without capture).
    """

    def __init__(self, model, *, device=None, dtype=None, flip: bool = True, batch_size: int = 32,
                 dataset_index: int = 0, fold_batchnorm: bool = True, detector=None, mode: str = "eager"):
        from ..models.checkpoints import load_model
        from ..models.vitpose import ViTPose
        owned = isinstance(model, (str, os.PathLike, dict))  # a model made here: cast in place
        if owned:
            model = load_model(model)
        missing = [a for a in ("input_size", "decode_method", "datasets", "num_datasets") if not hasattr(model, a)]
        if not isinstance(model, torch.nn.Module) or missing:
            raise TypeError(f"model must be a pose model (ViTPose, TokenPose) or a checkpoint path, got "
                            f"{type(model).__name__}" + (f" without {', '.join(missing)}" if missing else ""))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.dtype = inference_device(device, dtype)
        model = castable(model.eval().to(self.device), self.dtype, owned)  # moves the caller's model, as HF pipelines do
        # BatchNorm is folded before the cast to bf16, so that the folded weights are rounded once.
        folded = fold_batchnorm and isinstance(model, ViTPose)
        self.model = (with_folded_heads(model) if folded else model).to(self.dtype)
        if not 0 <= dataset_index < model.num_datasets:
            raise ValueError(f"dataset_index must be in [0, {model.num_datasets}), got {dataset_index}")
        self.dataset_index = dataset_index
        datasets = model.datasets
        self.keypoints = keypoint_set(datasets[min(dataset_index, len(datasets) - 1)])
        self.flip = flip and self.keypoints.flip_indices is not None
        self.batch_size = batch_size
        self.input_size = tuple(model.input_size)  # (W, H)
        self.decode_method = model.decode_method
        self.backend = getattr(model, "backend", None)
        self._constants = None
        self.runner = None  # serving.StaticRunner when mode is not "eager"
        if detector is not None and not callable(detector):
            from .detect import PersonDetector
            detector = PersonDetector(detector, device=self.device)
        self.detector = detector
        from .serving import MODES, StaticRunner
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got mode={mode!r}")
        self.mode = mode
        if mode != "eager":
            self.runner = StaticRunner(self, mode)

    @torch.inference_mode()
    def run_boxes(self, images: list[torch.Tensor], image_index, boxes) -> tuple[torch.Tensor, ...]:
        """One batch: images (3, H, W), image_index (N,), boxes (N, 4+) xywh -> keypoints (N, K, 2),
        scores (N, K), centers (N, 2), scales (N, 2), all float32 on the device."""
        dev = self.device
        images = [im.to(dev, non_blocking=True) for im in images]
        boxes = torch.as_tensor(np.asarray(boxes)[:, :4], dtype=torch.float32, device=dev)
        origins, hw = mosaic_layout([im.shape[1:] for im in images])
        image_index = np.asarray(image_index, dtype=np.int64)
        per_box = np.concatenate([np.asarray(origins, np.float32)[image_index],
                                  np.asarray([[im.shape[2], im.shape[1]] for im in images], np.float32)[image_index]], 1)
        per_box = torch.as_tensor(per_box, device=dev)
        if self.runner is not None:  # pastes the images into its own static canvas
            return self.runner(images, origins, hw, per_box[:, :2], per_box[:, 2:], boxes)
        canvas = paste(images[0].new_zeros(3, *hw, dtype=torch.float32), images, origins)
        return self.device_path(canvas, per_box[:, :2], per_box[:, 2:], boxes)

    def device_path(self, canvas, origins, sizes, boxes) -> tuple[torch.Tensor, ...]:
        """Crop, model, decode for boxes (N, 4) xywh of images laid out in canvas (3, Hc, Wc),
        origins/sizes (N, 2) of each box's image in the canvas. No host synchronisation and no
        tensor made from host data (the constants are made once), so that ``serving.py`` can
        capture it as a CUDA graph."""
        c = self.constants()
        centers, scales = box_to_center_scale(boxes, self.input_size, method=self.decode_method)
        crops = crop_from_canvas(canvas, origins, sizes, centers, scales, self.input_size, c["lattice"], c["size1"],
                                 method=self.decode_method)
        x = normalize(crops, c["mean"], c["std"]).to(self.dtype)
        kp, sc = forward_and_decode(self.model, x, centers, scales, self.input_size, model_args=(self.dataset_index,),
                                    flip_indices=c["flip_indices"] if self.flip else None,
                                    method=self.decode_method, backend=self.backend)
        return kp, sc, centers, scales

    @torch.inference_mode()
    def person_heatmaps(self, image, box):
        """One person's crop and heatmaps, for pictures: image (path, array or tensor), box xywh(+score)
        -> (crop (H, W, 3) uint8 as the model saw it, heatmaps (K, H/4, W/4) float32 with the flip
        test merged, the Pose decoded from them in crop pixels)."""
        from vitpose_kernels.reference.decode_heatmaps import flip_back
        img = load_image(image).to(self.device)
        box = as_boxes(box)[:1]
        if not len(box):
            raise ValueError("person_heatmaps needs one box, got none")
        c = self.constants()
        method = self.decode_method
        centers, scales = box_to_center_scale(torch.as_tensor(box[:, :4], dtype=torch.float32, device=self.device),
                                              self.input_size, method=method)
        size = torch.tensor([[img.shape[2], img.shape[1]]], dtype=torch.float32, device=self.device)
        crops = crop_from_canvas(img.float(), torch.zeros(1, 2, device=self.device), size, centers, scales,
                                 self.input_size, c["lattice"], c["size1"], method=method)
        x = normalize(crops, c["mean"], c["std"]).to(self.dtype)
        heatmaps = self.model(torch.cat([x, x.flip(-1)]) if self.flip else x, self.dataset_index).float()
        if self.flip:
            heatmaps = (heatmaps[:1] + flip_back(heatmaps[1:], c["flip_indices"])) * 0.5
        W, H = self.input_size
        # In the crop's own pixels: the UDP warp puts the box on [0, W-1] x [0, H-1] (decoding to
        # input_size (W, H) is mmpose's convention on the way back to the image, not the crop's);
        # "dark" decodes to the crop's pixels as they are.
        size = (W, H) if method == "dark" else (W - 1, H - 1)
        kp, sc = vitpose_kernels.decode_heatmaps(heatmaps, input_size=size, method=method, backend=self.backend)
        pose = Pose(kp[0].cpu().numpy(), sc[0].cpu().numpy(), np.array([0.0, 0.0, W, H]), float(box[0, 4]),
                    self.keypoints.name)
        crop = crops[0].permute(1, 2, 0).clamp(0, 255).round().byte().cpu().numpy()
        return crop, heatmaps[0].cpu().numpy(), pose

    def constants(self) -> dict:
        """Tensors the device path needs, made once on the device."""
        if self._constants is None:
            dev = self.device
            W, H = self.input_size
            self._constants = {
                "lattice": crop_lattice(self.input_size, dev),
                "size1": torch.tensor([W - 1, H - 1], dtype=torch.float32, device=dev),
                "mean": torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255,
                "std": torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255,
                "flip_indices": (torch.tensor(self.keypoints.flip_indices, dtype=torch.long, device=dev)
                                 if self.flip else None),
            }
        return self._constants

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
                if boxes is None and self.detector is not None:  # one image at a time here; the
                    boxes = self.detector([img])[0]             # batch job detects per group
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
        return predict_in_batches(images, boxes, self.batch_size, self._run_chunk, self.keypoints.name, errors)

    def _run_chunk(self, chunk, boxes):
        """run_boxes for a chunk of (slot, image) per box: each image in the mosaic once, by slot."""
        place, images = {}, []
        for slot, img in chunk:
            if slot not in place:
                place[slot] = len(images)
                images.append(img)
        return self.run_boxes(images, [place[slot] for slot, _ in chunk], boxes)


# ------------------------------------------------------------------------------------------------
# What every predictor does alike (this one and clips.ClipPredictor)
# ------------------------------------------------------------------------------------------------
def inference_device(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """The device (default CUDA when available) and compute dtype (default bf16 on CUDA, fp32 else)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def castable(model, dtype, owned: bool = False):
    """The model itself, or a copy when casting it to ``dtype`` would change the caller's model
    (e.g. a model in training evaluated in bf16 on the way). owned: the predictor made it."""
    if owned or not any(t.is_floating_point() and t.dtype != dtype for t in (*model.parameters(), *model.buffers())):
        return model
    import copy
    return copy.deepcopy(model)


def with_folded_heads(model):
    """The model with BatchNorm folded into copies of its (small) decoders (``keypoint_head`` and,
    where it has them, ``associate_keypoint_heads``); the caller's model and its backbone are left
    as they are (shared)."""
    import copy
    twin = copy.copy(model)
    twin._modules = dict(model._modules)
    for name in ("keypoint_head", "associate_keypoint_heads"):
        if name in model._modules:
            setattr(twin, name, copy.deepcopy(model._modules[name]))
    return twin.fold_batchnorm()


def forward_and_decode(model, x, centers, scales, input_size, model_args=(), flip_indices=None,
                       method: str = "udp", backend=None):
    """model(x, *model_args) -> heatmaps -> ``decode_heatmaps`` keypoints (N, K, 2) in image pixels
    and scores (N, K). With flip_indices (a tensor or list) the mirrored inputs run in the same
    batch and their heatmaps are merged (the flip test). Host-synchronisation free (see device_path)."""
    n = len(x)
    if flip_indices is not None:
        x = torch.cat([x, x.flip(-1)])
    heatmaps = model(x, *model_args).float()
    flipped = None
    if flip_indices is not None:
        heatmaps, flipped = heatmaps[:n], heatmaps[n:]
    return vitpose_kernels.decode_heatmaps(
        heatmaps, flip_heatmaps=flipped, flip_indices=flip_indices, input_size=input_size, bbox_centers=centers,
        bbox_scales=scales, method=method, backend=backend)


def predict_in_batches(items: list, boxes: list, batch_size: int, run, dataset: str, errors: str = "raise") -> list:
    """The predictors' ``predict_batch``: the boxes of every item whose boxes are not None, in chunks
    of batch_size boxes -> [[Pose] per item]; an item with boxes None is passed through as it is.
    ``run(chunk, boxes)``: chunk [(slot, item)] one per box (slot: the item's place among those with
    boxes), boxes (n, 5) -> keypoints, scores, centers, scales (tensors). With errors="yield" a
    failing chunk fails every item that has boxes with its exception."""
    ok = [(j, item, arr) for j, (item, arr) in enumerate(zip(items, boxes)) if arr is not None]
    flat = [(slot, b) for slot, (_, _, arr) in enumerate(ok) for b in range(len(arr))]
    results = {j: [] for j, _, _ in ok}
    failure = None
    try:
        for start in range(0, len(flat), batch_size):
            chunk = flat[start:start + batch_size]
            boxes_ = np.stack([ok[slot][2][b] for slot, b in chunk])
            kp, sc, c, s = (t.cpu().numpy() for t in run([(slot, ok[slot][1]) for slot, _ in chunk], boxes_))
            for n, ((slot, _), box) in enumerate(zip(chunk, boxes_)):
                results[ok[slot][0]].append(Pose(kp[n], sc[n], box[:4].copy(), float(box[4]), dataset, c[n], s[n]))
    except Exception as e:
        if errors == "raise":
            raise
        failure = e
    return [item if arr is None else (failure if failure is not None else results[j])
            for j, (item, arr) in enumerate(zip(items, boxes))]


def predict(model, images, boxes=None, **kwargs) -> list[list[Pose]]:
    """One call: ``predict(model_or_checkpoint, images, boxes)``; kwargs go to TopDownPredictor."""
    return TopDownPredictor(model, **kwargs)(images, boxes)
