"""Training recipes, one per architecture family, and the registry the trainer reads them from.

The ViTPose numbers are those of the official mmpose 0.x configs,
github.com/ViTAE-Transformer/ViTPose, configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/:

| size | config file                                                       | lr   | layer decay | drop path | batch/GPU |
| ---- | ----------------------------------------------------------------- | ---- | ----------- | --------- | --------- |
| S    | ViTPose_small_coco_256x192.py (and _simple_)                      | 5e-4 | 0.80        | 0.10      | 64        |
| B    | ViTPose_base_coco_256x192.py (and _simple_)                       | 5e-4 | 0.75        | 0.30      | 64        |
| L    | ViTPose_large_coco_256x192.py (and _simple_)                      | 5e-4 | 0.80        | 0.50      | 64        |
| H    | ViTPose_huge_coco_256x192.py (and _simple_)                       | 5e-4 | 0.85        | 0.55      | 64        |
| S+   | vitPose+_small_coco+aic+mpii+ap10k+apt36k+wholebody_256x192_udp.py | 1e-3 | 0.80        | 0.10      | 128       |
| B+   | vitPose+_base_... (same name pattern)                             | 1e-3 | 0.75        | 0.30      | 128       |
| L+   | vitPose+_large_...                                                | 1e-3 | 0.80        | 0.50      | 128       |
| H+   | vitPose+_huge_...                                                 | 1e-3 | 0.80        | 0.55      | 128       |

Every one of those files: AdamW, betas (0.9, 0.999), weight decay 0.1 through mmcv_custom's
LayerDecayOptimizerConstructor (num_layers = depth), grad_clip max_norm 1 (L2), lr_config
policy 'step' with linear warmup over 500 iterations from ratio 0.001, steps at epochs 170 and
200 (gamma 0.1, mmcv's default), 210 epochs, evaluation every 10 epochs (save_best AP),
TopDownGenerateTarget UDP sigma 2, JointsMSELoss(use_target_weight=True). The official runs used
8 GPUs (global batch 512 / 1024). bf16 autocast is this project's choice for mixed precision.

Other families register theirs: ``register_family(name, matches=..., recipe=..., task=...)``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

CONFIG_DIR = "github.com/ViTAE-Transformer/ViTPose configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/"

# size -> (config file, lr, layer_decay_rate, drop_path_rate, samples_per_gpu)
VITPOSE_TABLE = {
    "S": ("ViTPose_small_coco_256x192.py", 5e-4, 0.80, 0.10, 64),
    "B": ("ViTPose_base_coco_256x192.py", 5e-4, 0.75, 0.30, 64),
    "L": ("ViTPose_large_coco_256x192.py", 5e-4, 0.80, 0.50, 64),
    "H": ("ViTPose_huge_coco_256x192.py", 5e-4, 0.85, 0.55, 64),
}
_PLUS = "vitPose+_{}_coco+aic+mpii+ap10k+apt36k+wholebody_256x192_udp.py"
VITPOSE_PLUS_TABLE = {
    "S": (_PLUS.format("small"), 1e-3, 0.80, 0.10, 128),
    "B": (_PLUS.format("base"), 1e-3, 0.75, 0.30, 128),
    "L": (_PLUS.format("large"), 1e-3, 0.80, 0.50, 128),
    "H": (_PLUS.format("huge"), 1e-3, 0.80, 0.55, 128),
}


@dataclass
class Recipe:
    """Everything about how a family is trained, apart from the model and the data."""
    family: str
    source: str                       # where the numbers come from
    lr: float = 5e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.1
    layer_decay: float | None = 0.75  # None: one learning rate for all
    drop_path: float | None = None    # what the paper's model of that size uses (informational)
    grad_clip: float | None = 1.0
    optimizer: str = "adamw"          # "adamw" or "adam"
    schedule: str = "step"            # "step" (milestones in epochs) or "cosine"
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    lr_steps: tuple = (170, 200)
    lr_gamma: float = 0.1
    epochs: int = 210
    batch_size: int = 64              # per GPU
    precision: str = "bf16"           # on CUDA; CPUs train in fp32 unless asked
    eval_every: int = 10
    sigma: float = 2.0
    notes: list = field(default_factory=list)

    def for_run(self, epochs: int, steps_per_epoch: int, **overrides) -> "Recipe":
        """The recipe fitted to a run of ``epochs``: the lr steps scaled from the recipe's length
        (170/210, 200/210), the warmup at most a fifth of the run. Explicit overrides win."""
        r = dataclasses.replace(self, notes=list(self.notes))
        if epochs != self.epochs and "lr_steps" not in overrides:
            r.lr_steps = tuple(max(1, round(s * epochs / self.epochs)) for s in self.lr_steps)
            r.notes.append(f"lr steps {list(self.lr_steps)} of {self.epochs} epochs scaled to {list(r.lr_steps)} "
                           f"of {epochs}")
        total = max(1, epochs * steps_per_epoch)
        if "warmup_iters" not in overrides and r.warmup_iters > total // 5:
            r.notes.append(f"warmup {r.warmup_iters} iterations capped to {total // 5} (a fifth of {total})")
            r.warmup_iters = total // 5
        r.epochs = epochs
        for k, v in overrides.items():
            if not hasattr(r, k):
                raise ValueError(f"unknown recipe field {k!r}; known: {[f.name for f in dataclasses.fields(Recipe)]}")
            setattr(r, k, tuple(v) if isinstance(v, list) else v)
        return r

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def vitpose_size(config) -> str | None:
    """'S' / 'B' / 'L' / 'H' for a config of one of the paper's sizes, else None."""
    from ..models.configs import SIZES
    for name, s in SIZES.items():
        if config.embed_dim == s["embed_dim"] and config.depth == s["depth"]:
            return name
    return None


def vitpose_recipe(model) -> Recipe:
    """The official recipe of the model's size (ViTPose+ when it has experts or several heads);
    custom sizes take ViTPose-S's numbers (the smallest official model)."""
    cfg = model.config
    plus = cfg.experts > 1 or len(cfg.datasets) > 1
    size = vitpose_size(cfg)
    table = VITPOSE_PLUS_TABLE if plus else VITPOSE_TABLE
    source, lr, decay, drop, batch = table[size or "S"]
    r = Recipe("vitpose", CONFIG_DIR + source, lr=lr, layer_decay=decay, drop_path=drop, batch_size=batch)
    if size is None:
        r.notes.append(f"custom size ({cfg.embed_dim}-d, depth {cfg.depth}): ViTPose-S's numbers; drop path "
                       f"is the model config's ({cfg.drop_path_rate})")
        r.drop_path = cfg.drop_path_rate
    return r


# ------------------------------------------------------------------------------------------------
# Families: which recipe and which task (data, augmentation, loss, evaluation) a model trains with
# ------------------------------------------------------------------------------------------------
@dataclass
class Family:
    name: str
    matches: Callable[[str], bool]            # a --model argument (name or JSON config path) -> ours?
    recipe: Callable[[nn.Module], Recipe]     # the model -> its recipe
    task: Callable                            # task(train_config, dist) -> a vitpose.train.task.Task


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, *, matches, recipe, task) -> None:
    """Teach the trainer a model family: ``matches(model_spec)`` says whether a ``--model``
    argument (a registered name or a JSON config file) belongs to it."""
    if name in _FAMILIES:
        raise ValueError(f"training family {name!r} is registered already")
    _FAMILIES[name] = Family(name, matches, recipe, task)


def spec_arch(spec, keys=("arch", "family"), default: str = "") -> str | None:
    """What a ``--model`` argument names, lowercased, for a family's ``matches``: a registered name
    as it is, or a JSON config's first non-empty ``keys`` entry (else ``default``); None for a JSON
    file that cannot be read as an object (each family decides whether that is its problem)."""
    spec = str(spec)
    if not spec.endswith(".json"):
        return spec.lower()
    try:
        with open(spec) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    return str(next((d[k] for k in keys if d.get(k)), default)).lower()


def families() -> list[str]:
    return sorted(_FAMILIES)


def family_for(model_spec) -> Family:
    for fam in _FAMILIES.values():
        if fam.matches(model_spec):
            return fam
    raise ValueError(f"no training recipe for --model {model_spec!r}; known families: {families()} "
                     "(vitpose.train.register_family adds one)")
