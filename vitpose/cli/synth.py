"""``vitpose synth``: a COCO-format keypoint dataset of rendered stick-figure people.

    vitpose synth OUT --images N --seed S [--val-images M]
    vitpose synth OUT --video --videos N --frames F --seed S [--val-videos M] [--val-label-every K]

writes OUT/annotations/{train,val}.json and OUT/images/. The same seed gives the same files.
With --video: moving people (smooth paths, occlusions, motion blur) as PoseTrack18 videos,
OUT/annotations/{train,val}/<video>.json and OUT/images/{train,val}/<video>/<frame>.jpg
(``vitpose.data.synth_video``), for TAR-ViTPose (``vitpose train --model tar-vitpose-s``).
"""
from __future__ import annotations

import sys


def cmd_synth(args) -> int:
    if args.video:
        from ..data.synth_video import write_video_dataset
        if args.videos is None:
            raise ValueError("--video needs --videos N (training videos)")
        counts = write_video_dataset(args.out, args.videos, args.val_videos, frames=args.frames, seed=args.seed,
                                     val_label_every=args.val_label_every, progress=not args.quiet)
        print(f"{args.out}: " + ", ".join(f"{split} {n} people" for split, n in counts.items()), file=sys.stderr)
        return 0
    if args.images is None:
        raise ValueError("--images N is needed (or --video with --videos N)")
    from ..data.synth import write_dataset
    counts = write_dataset(args.out, args.images, args.val_images, seed=args.seed, progress=not args.quiet)
    print(f"{args.out}: " + ", ".join(f"{split} {n} people" for split, n in counts.items()), file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic COCO-format keypoint dataset", description=__doc__)
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--images", type=int, default=None, help="training images")
    p.add_argument("--val-images", type=int, default=None, help="validation images (default: images / 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    video = p.add_argument_group("videos (PoseTrack format)")
    video.add_argument("--video", action="store_true", help="videos of moving people instead of images")
    video.add_argument("--videos", type=int, default=None, help="training videos")
    video.add_argument("--val-videos", type=int, default=None, help="validation videos (default: videos / 4)")
    video.add_argument("--frames", type=int, default=24, help="frames per video")
    video.add_argument("--val-label-every", type=int, default=1,
                       help="label every K-th validation frame (PoseTrack: 4)")
    p.set_defaults(func=cmd_synth)
