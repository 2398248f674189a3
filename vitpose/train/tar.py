"""TAR-ViTPose's training family: PoseTrack-format clips, the ViTPose augmentation applied alike to
every frame of a clip, UDP targets of the centre frame, JointsMSE, PoseTrack mAP.

The recipe is the official one (github zgspose/TARViTPose, configs/posetrack17/
configTARViTPoseVitB.yaml, core/optimizer.py, tools/train.py): AdamW, lr 5e-6 for every
parameter (LR = BACKBONE_LR), betas (0.9, 0.999), weight decay 0.1, StepLR every 5 epochs x 0.5,
30 epochs, batch 16, no warmup, no gradient clipping, no layer-wise decay, heatmap sigma 3,
fp16 autocast there (bf16 here). It fine-tunes a COCO-trained ViTPose (``--init``); from scratch
(as the CI's tiny model) it needs a higher ``--lr``.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import torch

from ..data.posetrack import collate_clips
from .distributed import all_gather_objects, broadcast_object
from .losses import joints_mse
from .recipe import Recipe, spec_arch
from .task import Task

SOURCE = "github.com/zgspose/TARViTPose configs/posetrack17/configTARViTPoseVitB.yaml, core/optimizer.py"


def tar_recipe(model) -> Recipe:
    return Recipe("tar-vitpose", SOURCE, lr=5e-6, weight_decay=0.1, layer_decay=None, grad_clip=None,
                  schedule="step", warmup_iters=0, lr_steps=(5, 10, 15, 20, 25), lr_gamma=0.5, epochs=30,
                  batch_size=16, eval_every=1, sigma=3.0,
                  drop_path=getattr(model.config.vit, "drop_path_rate", None))


def is_tar_spec(spec) -> bool:
    arch = spec_arch(spec, keys=("arch",))
    return arch is not None and arch.startswith("tar-vitpose")


class ClipAugment:
    """``TopDownAugment`` on clips: one random geometry per person (drawn from its centre frame's
    keypoints and box), applied to all T frames by the same warp; targets from the centre frame."""

    def __init__(self, base):
        self.base = base

    def __call__(self, batch: dict, device) -> dict:
        from ..infer.pipeline import crop_batch, normalize
        out = self.base(batch, device)  # the centre frames: geometry, keypoints, targets
        B, T = batch["clip_index"].shape
        images = [im.to(device, non_blocking=True) for im in batch["images"]]

        def rep(x):
            return None if x is None else x.repeat_interleave(T, 0)
        crops = crop_batch(images, batch["clip_index"].to(device).reshape(-1), rep(out["centers"]),
                           rep(out["scales"]), self.base.input_size, rep(out["rotation"]), rep(out["flip"]),
                           self.base.canvas_size)
        out["clips"] = normalize(crops).unflatten(0, (B, T))
        del out["pixels"]
        return out


class TARTask(Task):
    """``vitpose train --model tar-vitpose-s --data DIR``: DIR/annotations/{train,val}/ (PoseTrack18
    per-video JSON, or one file) with image paths relative to DIR. The trainer's model-selection
    slot ``coco_ap`` holds the PoseTrack mAP / 100 (``posetrack_map``: the same, in percent)."""

    metric_label = "PoseTrack mAP/100"

    def __init__(self, config, dist):
        super().__init__(config, dist)
        from ..data import augment as aug
        from ..data.posetrack import find_posetrack_split, load_posetrack
        self.root = os.fspath(config.data if not isinstance(config.data, (list, tuple)) else config.data[0])
        train = find_posetrack_split(self.root, "train")
        if train is None:
            raise FileNotFoundError(f"--data {self.root}: no PoseTrack training split (expected "
                                    f"{self.root}/annotations/train/*.json or annotations/train.json)")
        self.train_videos = load_posetrack(train)
        val = find_posetrack_split(self.root, "val")
        self.val_videos = load_posetrack(val) if val else None
        self.train_set = None  # built with the model (its clip length)
        self.augment_config = aug.AugmentConfig() if config.augment else aug.AugmentConfig.off()
        self.augment = None

    collate = staticmethod(collate_clips)

    def build_model(self, spec: str):
        """A registered name (tar-vitpose-s) or a JSON file {"arch": "tar-vitpose-s", ...fields},
        ``--set`` overrides on top; PoseTrack's keypoints."""
        import json

        from ..data import augment as aug
        from ..data.keypoints import keypoint_set
        from ..data.posetrack import PoseTrackClips
        from ..models.registry import build_model
        fields = {}
        if str(spec).endswith(".json"):
            with open(spec) as f:
                fields = json.load(f)
            spec = fields.pop("arch", None)
            if not spec:
                raise ValueError("--model JSON: needs \"arch\": \"tar-vitpose-s\" (or -b/-l/-h)")
        fields.update(self.config.model_overrides or {})
        fields["datasets"] = ("posetrack",)
        fields.pop("num_keypoints", None)
        model = build_model(spec, **fields)
        self.train_set = PoseTrackClips(self.train_videos, self.root, model.config.frames, seed=self.config.seed)
        H, W = model.config.input_size
        h, w = self.train_set.max_image_size
        cfg = aug.AugmentConfig(**{**self.augment_config.__dict__, "sigma": 3.0})  # the recipe's sigma
        base = aug.TopDownAugment([keypoint_set("posetrack")], input_size=(W, H), heatmap_size=(W // 4, H // 4),
                                  config=cfg, train=True, canvas_size=(-(-h // 32) * 32, -(-w // 32) * 32))
        self.augment = ClipAugment(base)
        return model

    def num_layers(self, model) -> int:
        return model.config.vit.depth

    @torch.no_grad()
    def prepare(self, batch, device) -> dict:
        return self.augment(batch, device)

    def loss(self, model, x: dict):
        heatmaps = model(x["clips"])
        total, _ = joints_mse(heatmaps, x["targets"], x["weights"], x["dataset_index"], [heatmaps.shape[1]])
        return total, {}

    def evaluate(self, model, dist, device, progress: bool = False) -> dict:
        """PoseTrack mAP on the val videos with ground-truth boxes (the papers' starred setting),
        flip test, frames sharded over the ranks; the same dict on every rank."""
        if not self.val_videos:
            return {}
        from ..data.posetrack import gt_frames, pred_frames
        from ..evaluation.posetrack import posetrack_map
        from ..infer.clips import ClipPredictor, clip_indices
        from ..infer.pipeline import load_image
        frozen = copy.deepcopy(model).eval()
        predictor = ClipPredictor(frozen, device=device, flip=self.config.flip_test,
                                  batch_size=self.config.eval_batch_size)
        work = [(v, f.index) for v, video in enumerate(self.val_videos) for f in video.frames
                if f.labeled and f.people]
        mine, results = work[dist.rank::dist.world_size], {}
        for s in range(0, len(mine), max(1, self.config.eval_batch_size // 2)):
            chunk = mine[s:s + max(1, self.config.eval_batch_size // 2)]
            cache, clips, boxes = {}, [], []
            for v, t in chunk:
                video = self.val_videos[v]
                idx = clip_indices(t, predictor.clip_frames, len(video.frames) - 1)
                for j in idx:
                    if (v, j) not in cache:
                        cache[(v, j)] = load_image(os.path.join(self.root, video.frames[j].file_name))
                clips.append([cache[(v, j)] for j in idx])
                people = video.frames[t].people
                boxes.append(np.array([[*p.box(grow=1.2), 1.0] for p in people], dtype=np.float64))
            for (v, t), poses in zip(chunk, predictor.predict_batch(clips, boxes)):
                results[(self.val_videos[v].name, t)] = [(p.keypoints, p.scores) for p in poses]
        gathered = all_gather_objects(results, dist)
        metrics = None
        if dist.is_main:
            merged = {k: r for part in gathered for k, r in part.items()}
            r = posetrack_map(gt_frames(self.val_videos), pred_frames(merged))
            metrics = {"coco_ap": r["total"] / 100, "posetrack_map": r["total"], "frames": r["frames"],
                       **{f"posetrack/{k}": v for k, v in r["groups"].items()}}
        return broadcast_object(metrics, dist)
