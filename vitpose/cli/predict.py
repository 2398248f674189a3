"""``vitpose predict``: keypoints for images, folders of images and videos.

    vitpose predict --checkpoint F [--boxes B.json | --detector DIR] IMAGE_OR_DIR_OR_VIDEO... --out DIR [--resume]
    torchrun --nproc-per-node N -m vitpose predict --checkpoint F ... --out SHARED_DIR

Writes, as it goes, DIR/predictions.jsonl (one JSON record per image or video frame: its poses,
or the reason it failed), then DIR/keypoints.json (COCO results, plus file_name / frame), the
drawn images (DIR/vis/) and videos (DIR/<name>_pose.mp4). Person boxes come from a boxes file,
from a transformers object detector in a local folder (--detector: RT-DETR, DETR, ... whose
labels have "person"), or else each whole image is one person. A bad item (missing or unreadable
image, bad boxes) is recorded and the others go on; the exit status is 1 when any item failed.
--resume goes on after a killed run with the same arguments and ends with the same files an
uninterrupted run writes. Under torchrun the inputs are shared out across the processes and
merged at the end into the same files (DIR must be on a filesystem every node sees).

Videos (and, with --frames, folders of frames) are tracked: each person keeps a ``track_id``
across frames (OKS assignment with motion prediction; --no-track turns it off), drawn in a colour
per track with its id. --smooth applies One-Euro smoothing per track; --detect-every N asks the
boxes file / detector every N frames and follows people from their keypoints in between. A
TAR-ViTPose checkpoint (e.g. ``tar_vitpose_b.pt``, official or ours) estimates each frame from the
clip of T frames around it.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..infer.inputs import BoxIndex, expand_inputs
from .common import add_common_arguments


def build_hooks(args) -> list:
    """Per-item stages after the pose model (``vitpose.infer.job.JobHook``), e.g. a tracker."""
    if args.no_track:
        return []
    from ..infer.tracking import TrackingHook
    return [TrackingHook(dict(metric=args.track_metric), smooth=args.smooth)]


def cmd_predict(args) -> int:
    from ..models.checkpoints import load_model
    from ..infer.job import DetectorBoxes, FileBoxes, PredictJob, Renderer, ranks_from_env
    from ..infer.clips import ClipPredictor
    from ..infer.pipeline import TopDownPredictor
    from ..models.tar_vitpose import TARViTPose

    inputs = expand_inputs(args.inputs, folders_as_videos=args.frames)
    if not inputs:
        print("vitpose predict: no images or videos found in the inputs", file=sys.stderr)
        return 1
    ranks = ranks_from_env()
    device = args.device
    if device is None and ranks.world > 1:
        import torch
        device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
    if args.detect_every < 1:
        print(f"vitpose predict: --detect-every must be >= 1 frame, got {args.detect_every}", file=sys.stderr)
        return 2
    if args.no_track and (args.smooth or args.detect_every > 1):
        print("vitpose predict: --smooth and --detect-every need tracking (drop --no-track)", file=sys.stderr)
        return 2
    model = load_model(args.checkpoint)
    if isinstance(model, TARViTPose):  # clips of T frames around each frame
        if args.mode != "eager":
            raise SystemExit(f"--mode {args.mode}: TAR-ViTPose clips run eagerly only")
        predictor = ClipPredictor(model, device=device, flip=not args.no_flip, batch_size=args.batch_size)
    else:
        predictor = TopDownPredictor(model, device=device, flip=not args.no_flip, batch_size=args.batch_size,
                                     dataset_index=args.dataset_index, mode=args.mode)
    det_thr = args.det_thr if args.det_thr is not None else (0.5 if args.detector else 0.0)
    boxes = BoxIndex(args.boxes, det_thr=det_thr) if args.boxes else None
    provider = FileBoxes(boxes) if boxes else None
    if args.detector:
        from ..infer.detect import PersonDetector
        provider = DetectorBoxes(PersonDetector(args.detector, device=predictor.device, threshold=det_thr,
                                                batch_size=args.det_batch_size, nms_iou=args.det_nms,
                                                max_people=args.max_people))
    settings = {"checkpoint": os.path.abspath(args.checkpoint), "boxes": args.boxes and os.path.abspath(args.boxes),
                "detector": args.detector and os.path.abspath(args.detector), "det_thr": det_thr,
                "det_nms": args.det_nms, "max_people": args.max_people, "batch_size": args.batch_size,
                "flip": not args.no_flip, "dataset_index": args.dataset_index, "mode": args.mode}
    hooks = build_hooks(args)
    group = None
    settings.update(track=not args.no_track, track_metric=args.track_metric, smooth=args.smooth,
                    detect_every=args.detect_every, frames=args.frames)
    if args.detect_every > 1:  # frame t's boxes come from the tracks at t - 1: one frame per group
        from ..infer.job import WholeImageBoxes
        from ..infer.tracking import PropagatedBoxes
        provider, group = PropagatedBoxes(provider or WholeImageBoxes(), hooks[0], args.detect_every), 1
    renderer = Renderer(args.out, enabled=not args.no_draw, kpt_thr=args.kpt_thr, heatmaps_of=args.heatmaps,
                        predictor=predictor)
    job = PredictJob(predictor, args.out, boxes=provider, renderer=renderer, group=group,
                     hooks=hooks, progress=not args.quiet, settings=settings, ranks=ranks)
    status = job.run(inputs, resume=args.resume)
    if boxes is not None and boxes.matched == 0 and job.processed:
        print("warning: no entry of the boxes file matched an input (see `vitpose predict --help`)",
              file=sys.stderr)
    return status


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="keypoints for images, folders or videos",
                       description=__doc__ + "\n" + BoxIndex.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR_OR_VIDEO")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--boxes", help="person boxes JSON (default: each whole image is one box)")
    source.add_argument("--detector", metavar="DIR",
                        help="a transformers object detector saved in DIR (RT-DETR, DETR, ...) finds the people; "
                             "it keeps those scored >= --det-thr, 0.5 unless given")
    p.add_argument("--det-batch-size", type=int, default=8, help="images per detector forward pass")
    p.add_argument("--det-nms", type=float, default=None, metavar="IOU",
                   help="greedy NMS of the detected people at this IoU (DETR-family detectors need none)")
    p.add_argument("--max-people", type=int, default=None, help="keep the N best detections per image")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="go on after an interrupted run: skip the items done, redo a partial last group")
    p.add_argument("--dataset-index", type=int, default=0, help="ViTPose+ dataset/decoder (0: COCO)")
    p.add_argument("--mode", default="eager", choices=["eager", "graph", "compile", "static"],
                   help="graph: each batch-size bucket replayed as a CUDA graph (lowest latency); compile: "
                        "torch.compile, then CUDA graphs; static: the buckets without capture")
    p.add_argument("--kpt-thr", type=float, default=0.3, help="draw keypoints scored above this")
    p.add_argument("--no-draw", action="store_true", help="write the JSON only")
    p.add_argument("--heatmaps", type=int, default=None, metavar="I",
                   help="also draw person I of each image (0: the first box) beside their heatmaps "
                        "(DIR/vis/<name>_heatmaps.jpg)")
    track = p.add_argument_group("video: tracking (on for videos unless --no-track)")
    track.add_argument("--no-track", action="store_true", help="no identities across video frames")
    track.add_argument("--track-metric", choices=("oks", "iou"), default="oks",
                       help="similarity of a track and a pose: keypoints (OKS) or boxes (IoU)")
    track.add_argument("--smooth", action="store_true", help="One-Euro smoothing of each track's keypoints")
    track.add_argument("--detect-every", type=int, default=1, metavar="N",
                       help="boxes from --boxes/--detector every N frames (and when no one is tracked); "
                            "between them from each track's previous keypoints")
    track.add_argument("--frames", action="store_true",
                       help="each input folder is one video, its images (sorted by name) the frames")
    p.set_defaults(func=cmd_predict, det_thr=None)  # None: 0 for boxes files, 0.5 for a detector
