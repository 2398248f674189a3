"""``vitpose synth``: a COCO-format keypoint dataset of rendered stick-figure people.

    vitpose synth OUT --images N --seed S [--val-images M]

writes OUT/annotations/{train,val}.json and OUT/images/. The same seed gives the same files.
"""
from __future__ import annotations

import sys


def cmd_synth(args) -> int:
    from ..data.synth import write_dataset
    counts = write_dataset(args.out, args.images, args.val_images, seed=args.seed, progress=not args.quiet)
    print(f"{args.out}: " + ", ".join(f"{split} {n} people" for split, n in counts.items()), file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic COCO-format keypoint dataset", description=__doc__)
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--images", type=int, required=True, help="training images")
    p.add_argument("--val-images", type=int, default=None, help="validation images (default: images / 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)
