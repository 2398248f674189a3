"""``vitpose train``: train a model on COCO-format data, on one process or under torchrun.

    vitpose train --data DIR --model NAME_OR_CONFIG --epochs E --batch-size B --out RUN
    vitpose train --resume RUN                       # continue an interrupted run
    torchrun --nproc-per-node 8 -m vitpose train ...  # DDP (NCCL on GPUs, gloo on CPUs)

DIR holds annotations/{train,val}.json + images/ (``vitpose synth``) or the COCO 2017 layout.
Give --data several times to train ViTPose+ (a decoder and an FFN expert per dataset).
RUN receives checkpoints/, log.csv, eval.csv, curves.png, metrics.json, best.safetensors and
model.safetensors. A SIGTERM writes a checkpoint and exits with status 143.
"""
from __future__ import annotations

import argparse
import json


def _override(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE (a model config field), got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def cmd_train(args) -> int:
    from ..train.trainer import INTERRUPTED_EXIT, train
    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command", "set", "no_flip_test", "no_augment",
                                                             "quiet") and v is not None}
    if args.set:
        opts["model_overrides"] = dict(args.set)
    if args.no_flip_test:
        opts["flip_test"] = False
    if args.no_augment:
        opts["augment"] = False
    if args.quiet:
        opts["progress"] = False
    metrics = train(**opts)
    return INTERRUPTED_EXIT if metrics["status"] == "interrupted" else 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train ViTPose on COCO-format data", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--data", action="append", help="dataset folder (repeat for ViTPose+ multi-dataset)")
    g.add_argument("--model", help="vitpose-s/b/l/h, or a JSON config ({\"arch\": \"vitpose-s\", ...} or ViTPoseConfig fields)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per process")
    g.add_argument("--out", help="run folder")
    g.add_argument("--resume", help="run folder (its latest checkpoint) or a checkpoint file")
    g.add_argument("--set", type=_override, action="append", metavar="KEY=VALUE",
                   help="model config override, e.g. --set img_size=[128,96] (JSON values)")
    g.add_argument("--init", help="MAE-pretrained ViT or ViTPose checkpoint to start from")
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: this rank's GPU, else cpu)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="default auto: bf16 on CUDA, fp32 on CPU")
    g.add_argument("--workers", type=int, help="DataLoader workers decoding images (default 2)")
    g.add_argument("--seed", type=int)
    r = p.add_argument_group("recipe overrides (default: the official config of the model's size)")
    r.add_argument("--lr", type=float)
    r.add_argument("--weight-decay", type=float)
    r.add_argument("--layer-decay", type=float)
    r.add_argument("--warmup-iters", type=int)
    r.add_argument("--lr-steps", type=int, nargs="+", help="epochs at which the lr drops 10x")
    r.add_argument("--grad-clip", type=float, help="max L2 norm, 0 = off")
    r.add_argument("--no-augment", action="store_true", help="plain crops (no flip / half-body / scale / rotation)")
    v = p.add_argument_group("variants")
    v.add_argument("--freeze", choices=("mhsa", "ffn"), help="partial fine-tuning (Table 6)")
    v.add_argument("--teacher", help="output distillation from this checkpoint (Eq. 4, Table 8)")
    v.add_argument("--distill-weight", type=float)
    v.add_argument("--knowledge-token", help="Eq. 6: a trained knowledge token (.safetensors) or a model holding one")
    v.add_argument("--train-knowledge-token", type=int, metavar="N",
                   help="Eq. 5: train only N new knowledge tokens on the (frozen) model, e.g. with --init teacher.pth")
    e = p.add_argument_group("evaluation, checkpoints, logs")
    e.add_argument("--eval-every", type=int, help="epochs between COCO AP evaluations (0: never; default 10)")
    e.add_argument("--val-boxes", help="person detections JSON for the val split (default: ground-truth boxes)")
    e.add_argument("--eval-batch-size", type=int)
    e.add_argument("--no-flip-test", action="store_true")
    e.add_argument("--checkpoint-every", type=int, help="steps (default 500; also every epoch)")
    e.add_argument("--keep-checkpoints", type=int)
    e.add_argument("--log-every", type=int, help="steps between log lines (default 10)")
    e.add_argument("--stop-after-steps", type=int, help="stop as on SIGTERM after N steps (time-boxed runs)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
