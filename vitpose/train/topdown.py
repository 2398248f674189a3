"""The ViTPose family's task: COCO-format data, the official augmentation on the device, UDP
targets, JointsMSE per dataset (+ output distillation), COCO AP through vitpose.evaluation.

One data folder trains a model with one decoder; several (``--data A --data B``) train ViTPose+:
one decoder and one FFN expert per dataset, batches mixing the datasets, a loss per dataset.
"""
from __future__ import annotations

import copy
import json
import os

import torch

from ..data import augment as aug
from ..data.coco import (ConcatTopDown, EvalImages, TopDownDataset, collate, find_split, gt_boxes, load_coco)
from ..evaluation.coco import coco_keypoint_eval, load_detections, predict_results
from ..models.registry import build_model
from . import distill
from .distributed import all_gather_objects, broadcast_object
from .losses import joints_mse
from .recipe import spec_arch
from .task import Task


def _model_from_spec(spec: str, overrides: dict):
    """``vitpose-s`` (a registered name), or a JSON file: {"arch": NAME, ...overrides} or the
    fields of a ViTPoseConfig."""
    from ..models.configs import ViTPoseConfig
    from ..models.vitpose import ViTPose
    if str(spec).endswith(".json"):
        if not os.path.exists(spec):
            raise FileNotFoundError(f"--model: config file not found: {spec}")
        with open(spec) as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError(f"--model {spec}: expected a JSON object, got {type(d).__name__}")
        arch = d.pop("arch", None)
        d.update(overrides)
        if arch:
            label = d.pop("name", None)
            if label is None and {"embed_dim", "depth", "num_heads"} & set(d):
                label = f"custom ({os.path.basename(spec)})"
            model = build_model(arch, **d)
            if label:
                model.config.name = label
            return model
        d.pop("family", None)
        return ViTPose(ViTPoseConfig.from_dict({**ViTPoseConfig().to_dict(), "name": "custom", **d}))
    return build_model(spec, **overrides)


class TopDownTask(Task):
    def __init__(self, config, dist):
        super().__init__(config, dist)
        dirs = config.data if isinstance(config.data, (list, tuple)) else [config.data]
        self.data_dirs = [os.fspath(d) for d in dirs]
        splits = []
        for d in self.data_dirs:
            s = find_split(d, "train")
            if s is None:
                raise FileNotFoundError(f"--data {d}: no training split (expected {d}/annotations/train.json + "
                                        f"{d}/images/, or the COCO layout annotations/person_keypoints_train2017.json "
                                        "+ train2017/)")
            splits.append(s)
        augment = self.default_augment() if config.augment else aug.AugmentConfig.off()
        if config.augment_overrides:
            import dataclasses
            known = {f.name for f in dataclasses.fields(aug.AugmentConfig)}
            bad = sorted(set(config.augment_overrides) - known)
            if bad:
                raise ValueError(f"unknown augmentation setting(s) {bad}; known: {sorted(known)}")
            augment = dataclasses.replace(augment, **config.augment_overrides)
        sets = [TopDownDataset(s, augment=augment, seed=config.seed, dataset_index=i) for i, s in enumerate(splits)]
        K = max(ds.keypoints.num_keypoints for ds in sets)
        for ds in sets:
            ds.pad_to = K
        self.datasets = sets
        self.keypoint_sets = [ds.keypoints for ds in sets]
        self.train_set = sets[0] if len(sets) == 1 else ConcatTopDown(sets)
        self.val = [find_split(d, "val") for d in self.data_dirs]
        self._val_coco = {}
        self.augment_config = augment
        self.augment = None
        self.teacher = None
        if config.val_boxes and not os.path.exists(config.val_boxes):
            raise FileNotFoundError(f"--val-boxes: detections file not found: {config.val_boxes}")
        for ks, v in zip(self.keypoint_sets, self.val):
            if v is not None and config.eval_every != 0 and ks.sigmas is None:
                raise ValueError(f"{v.ann_file}: its category has no 'sigmas' (K={ks.num_keypoints}); COCO AP "
                                 "needs the OKS sigma of every keypoint: add \"sigmas\": [...] to the category")

    collate = staticmethod(collate)

    def default_augment(self) -> aug.AugmentConfig:
        """The family's augmentation numbers (ViTPose's official ones here)."""
        return aug.AugmentConfig()

    # ---- model -----------------------------------------------------------------------------------
    def build_model(self, spec: str):
        names = tuple(ks.name for ks in self.keypoint_sets)
        overrides = dict(self.config.model_overrides or {})
        overrides["datasets"] = names
        overrides.pop("num_keypoints", None)
        if len(names) > 1:
            overrides.setdefault("experts", len(names))
        model = _model_from_spec(spec, overrides)
        self.attach_augment(model)
        return model

    augment_class = aug.TopDownAugment

    def attach_augment(self, model, config: aug.AugmentConfig | None = None) -> None:
        """The device-side augmentation for the model's input and heatmap sizes ((H, W) in its config)."""
        cfg = model.config
        # One canvas size for the run (the largest image, rounded up to 32): crops independent of
        # the batch composition, so N processes compute what one does.
        h = max(ds.max_image_size[0] for ds in self.datasets)
        w = max(ds.max_image_size[1] for ds in self.datasets)
        self.augment = self.augment_class(self.keypoint_sets, input_size=(cfg.img_size[1], cfg.img_size[0]),
                                          heatmap_size=(cfg.heatmap_size[1], cfg.heatmap_size[0]),
                                          config=config or self.augment_config, train=True,
                                          canvas_size=(-(-h // 32) * 32, -(-w // 32) * 32))

    def attach_teacher(self, model, device) -> None:
        if self.config.teacher:
            self.teacher = distill.load_teacher(self.config.teacher, device, model)

    def num_layers(self, model) -> int:
        return model.config.depth

    def train_mode(self, model) -> None:
        # Eq. 5 tunes a token on a frozen teacher: its BatchNorm statistics and drop path stay as in
        # inference, so the teacher is exactly the trained model.
        model.train(not self.config.train_knowledge_token)

    # ---- a training step -------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, batch, device) -> dict:
        return self.augment(batch, device)

    def loss(self, model, x: dict):
        counts = [ks.num_keypoints for ks in self.keypoint_sets]
        heatmaps = _pad_keypoints(model(x["pixels"], x["dataset_index"]), x["targets"].shape[1])
        total, per = joints_mse(heatmaps, x["targets"], x["weights"], x["dataset_index"], counts)
        logs = {f"loss_{ks.name}": v.detach() for ks, v in zip(self.keypoint_sets, per)} if len(per) > 1 else {}
        if self.teacher is not None:
            with torch.no_grad():
                soft = _pad_keypoints(self.teacher(x["pixels"], x["dataset_index"]), heatmaps.shape[1])
            kd = distill.distillation_mse(heatmaps, soft, x["dataset_index"], counts)
            logs["loss_gt"], logs["loss_distill"] = total.detach(), kd.detach()
            total = total + self.config.distill_weight * kd
        return total, logs

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self, model, dist, device, progress: bool = False) -> dict:
        """COCO AP on every dataset's val split (flip test, rescoring, OKS-NMS), images sharded
        over the ranks and the results gathered; the same dict on every rank. coco_ap: the first
        dataset's AP."""
        from ..infer.pipeline import TopDownPredictor
        out = {}
        # A private copy: the predictor folds BatchNorm and may cast to bf16; the trained model stays.
        frozen = copy.deepcopy(model).eval()
        for d, (ks, split) in enumerate(zip(self.keypoint_sets, self.val)):
            if split is None:
                continue
            if d not in self._val_coco:
                self._val_coco[d] = load_coco(split.ann_file)
            coco = self._val_coco[d]
            boxes = (load_detections(self.config.val_boxes) if d == 0 and self.config.val_boxes else gt_boxes(coco))
            ids = sorted(i for i in coco.getImgIds() if i in boxes)
            mine = ids[dist.rank::dist.world_size]
            from .trainer import ignore_sigterm
            loader = torch.utils.data.DataLoader(EvalImages(coco, split.image_dir, boxes, mine), batch_size=None,
                                                 num_workers=min(self.config.workers, 4), worker_init_fn=ignore_sigterm)
            predictor = TopDownPredictor(frozen, device=device, flip=self.config.flip_test,
                                         batch_size=self.config.eval_batch_size, dataset_index=d)
            errors = []
            results, failed = predict_results(predictor, iter(loader), total=len(mine), progress=progress,
                                              on_error=lambda k, e: errors.append(f"image {k}: {e}"), sigmas=ks.sigmas)
            gathered = all_gather_objects((results, failed, errors[:5]), dist)
            stats = None
            if dist.is_main:
                everything = [r for part in gathered for r in part[0]]
                stats = coco_keypoint_eval(coco, everything, sigmas=ks.sigmas)
                stats.update(num_images=len(ids), num_failed=sum(p[1] for p in gathered),
                             errors=[e for p in gathered for e in p[2]][:5])
            stats = broadcast_object(stats, dist)
            prefix = "" if d == 0 else f"{ks.name}/"
            out.update({f"{prefix}{k}": v for k, v in stats.items()})
            if d == 0:
                out["coco_ap"] = stats["AP"]
            else:
                out[f"coco_ap/{ks.name}"] = stats["AP"]
        return out

    def finish(self, model, run_dir: str) -> None:
        if self.config.train_knowledge_token:
            from ..models.knowledge import save_knowledge_token
            save_knowledge_token(model, os.path.join(run_dir, "knowledge_token.safetensors"))


def _pad_keypoints(heatmaps, K: int):
    """A batch whose samples all use a decoder of fewer keypoints comes back with fewer channels;
    zeros up to the batch's K (weight 0 there)."""
    missing = K - heatmaps.shape[1]
    return torch.nn.functional.pad(heatmaps, (0, 0, 0, 0, 0, missing)) if missing > 0 else heatmaps


def _is_vitpose_spec(spec) -> bool:
    arch = spec_arch(spec, default="vitpose")
    return arch is None or arch.startswith("vitpose")  # None: the task reports the unreadable file
