"""Person boxes from a Hugging Face transformers object detector in a local folder.

Any ``AutoModelForObjectDetection`` checkpoint whose ``id2label`` has a "person" class works:
RT-DETR (``PekingU/rtdetr_r50vd``), DETR, Deformable/Conditional DETR, YOLOS, ... saved with
``save_pretrained`` (or downloaded with ``huggingface-cli download``). The library does the
work: its image processor (resize, normalise, pad), the model in batches on the device, and its
``post_process_object_detection`` (score threshold, boxes back to image pixels). These are
set-prediction detectors, trained one-to-one and used without NMS; ``nms_iou`` adds a greedy
NMS over the person boxes for a detector that does produce duplicates.

Without torchvision, transformers preprocesses with its Pillow backend (on the CPU); with it,
the torchvision backend runs on the detector's device.
"""
from __future__ import annotations

import os

import numpy as np
import torch


class PersonDetector:
    """``PersonDetector(folder)(images) -> [(n, 5) xywh + score per image]``, best first.

    images: (3, H, W) uint8 tensors (``load_image``). threshold: the detector's score threshold;
    batch_size: images per forward pass; max_people: keep the best N per image (None: all);
    min_size: drop boxes narrower or shorter than this many pixels (after clipping to the image).
    """

    def __init__(self, path, *, device=None, dtype=None, threshold: float = 0.5, batch_size: int = 8,
                 label: str = "person", nms_iou: float | None = None, max_people: int | None = None,
                 min_size: float = 1.0):
        from transformers import AutoImageProcessor, AutoModelForObjectDetection
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"detector folder not found: {path} (a local transformers object "
                                    "detection checkpoint: config.json, weights, preprocessor_config.json)")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForObjectDetection.from_pretrained(path, local_files_only=True)
        self.model = model.eval().to(self.device, dtype or torch.float32)
        labels = {int(k): str(v) for k, v in model.config.id2label.items()}
        self.label_ids = sorted(i for i, name in labels.items() if name.lower() == label.lower())
        if not self.label_ids:
            shown = ", ".join(f"{i}: {n!r}" for i, n in list(labels.items())[:12])
            raise ValueError(f"the detector in {path} has no {label!r} class (id2label: {shown}"
                             f"{', ...' if len(labels) > 12 else ''}); pick its person class with label=")
        self.threshold, self.batch_size, self.nms_iou = threshold, batch_size, nms_iou
        self.max_people, self.min_size = max_people, min_size
        # The torchvision backend of transformers' processors takes a device; the Pillow one does not.
        self._processor_kwargs = {"device": self.device} if _runs_on_device(self.processor) else {}

    @torch.inference_mode()
    def __call__(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        out = []
        for start in range(0, len(images), self.batch_size):
            out += self._batch(images[start:start + self.batch_size])
        return out

    def _batch(self, images):
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        inputs = self.processor(images=[im.cpu() for im in images], return_tensors="pt", **self._processor_kwargs)
        dtype = next(self.model.parameters()).dtype
        inputs = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        outputs = self.model(**inputs)
        for name in ("logits", "pred_boxes"):  # post-processing in fp32 whatever the model ran in
            if getattr(outputs, name, None) is not None:
                setattr(outputs, name, getattr(outputs, name).float())
        results = self.processor.post_process_object_detection(outputs, threshold=self.threshold,
                                                               target_sizes=sizes)
        return [self._people(r, h, w) for r, (h, w) in zip(results, sizes)]

    def _people(self, result, h, w) -> np.ndarray:
        labels, scores, boxes = result["labels"], result["scores"].float(), result["boxes"].float()
        keep = torch.isin(labels, torch.tensor(self.label_ids, device=labels.device))
        scores, boxes = scores[keep], boxes[keep]
        x0, x1 = boxes[:, 0].clamp(0, w), boxes[:, 2].clamp(0, w)
        y0, y1 = boxes[:, 1].clamp(0, h), boxes[:, 3].clamp(0, h)
        boxes = torch.stack([x0, y0, x1, y1], 1)
        big = ((x1 - x0) >= self.min_size) & ((y1 - y0) >= self.min_size)
        scores, boxes = scores[big], boxes[big]
        order = torch.sort(scores, descending=True, stable=True).indices
        scores, boxes = scores[order], boxes[order]
        if self.nms_iou is not None:
            kept = greedy_nms(boxes, self.nms_iou)
            scores, boxes = scores[kept], boxes[kept]
        if self.max_people is not None:
            scores, boxes = scores[: self.max_people], boxes[: self.max_people]
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], scores[:, None]], 1)
        return xywh.double().cpu().numpy().reshape(-1, 5)


def _runs_on_device(processor) -> bool:
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:  # transformers 4.x: the "fast" processors
        try:
            from transformers.image_processing_utils_fast import BaseImageProcessorFast as TorchvisionBackend
        except ImportError:
            return False
    return isinstance(processor, TorchvisionBackend)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes, (n, 4) x (m, 4) -> (n, m)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-12)


def greedy_nms(boxes: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices kept by greedy NMS of xyxy boxes sorted best first (what torchvision.ops.nms does)."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    overlap = box_iou(boxes, boxes) > iou
    keep = torch.ones(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):  # a few dozen people at most: a host loop is fine
        if keep[i]:
            keep[i + 1:] &= ~overlap[i, i + 1:].cpu()
    return keep.nonzero()[:, 0].to(boxes.device)
