"""``vitpose evaluate``: COCO keypoint AP of a checkpoint on detector boxes.

    vitpose evaluate --checkpoint F --ann A.json --dets D.json --images DIR
"""
from __future__ import annotations

import sys

from .common import add_common_arguments


def cmd_evaluate(args) -> int:
    from ..models.checkpoints import load_model
    from ..evaluation.coco import evaluate

    model = load_model(args.checkpoint)
    stats = evaluate(model, args.ann, args.dets, args.images, out_file=args.out, det_thr=args.det_thr,
                     batch_size=args.batch_size, flip=not args.no_flip, device=args.device,
                     progress=not args.quiet, max_images=args.max_images)
    for name, v in stats.items():
        print(f"{name:>12}: {v:.4f}" if isinstance(v, float) else f"{name:>12}: {v}")
    print(f"results -> {args.out}", file=sys.stderr)
    return 1 if stats["num_failed"] else 0


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="COCO keypoint AP on detector boxes")
    add_common_arguments(e)
    e.add_argument("--ann", required=True, help="COCO keypoint annotations JSON")
    e.add_argument("--dets", required=True, help="COCO person detections JSON")
    e.add_argument("--images", required=True, help="folder of the annotated images")
    e.add_argument("--out", default="result_keypoints.json",
                   help="the keypoint results JSON (COCO format, after rescoring and OKS-NMS)")
    e.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    e.set_defaults(func=cmd_evaluate)
