"""``vitpose predict``: keypoints for images, folders of images and videos.

    vitpose predict --checkpoint F [--boxes B.json] IMAGE_OR_DIR_OR_VIDEO... --out DIR

Writes DIR/keypoints.json (COCO results, plus file_name / frame) and the drawn images
(DIR/vis/) or videos (DIR/<name>_pose.mp4). A bad item (missing or unreadable image, bad boxes)
is reported and the others go on; the exit status is 1 when any item failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..infer.inputs import BoxIndex, expand_inputs
from .common import add_common_arguments


def _image_id(path: str, fallback: int):
    stem = os.path.splitext(os.path.basename(path))[0]
    return int(stem) if stem.isdigit() else fallback


def cmd_predict(args) -> int:
    from tqdm import tqdm

    from ..models.checkpoints import load_model
    from ..infer.draw import draw_poses
    from ..infer.pipeline import TopDownPredictor, load_image
    from ..infer.video import VideoWriter, frame_count, video_frames

    model = load_model(args.checkpoint)
    predictor = TopDownPredictor(model, device=args.device, flip=not args.no_flip,
                                 batch_size=args.batch_size, dataset_index=args.dataset_index)
    boxes = BoxIndex(args.boxes, det_thr=args.det_thr) if args.boxes else None
    os.makedirs(args.out, exist_ok=True)
    vis_dir = os.path.join(args.out, "vis")
    inputs = expand_inputs(args.inputs)
    if not inputs:
        print("vitpose predict: no images or videos found in the inputs", file=sys.stderr)
        return 1
    results, failures = [], []
    frames_kept = {}  # video frames waiting to be drawn, by key
    writers = {}

    def items():
        for n, (kind, path) in enumerate(inputs):
            if kind == "image":
                yield ("image", path, None), path, (boxes.lookup(path) if boxes else None)
                continue
            try:
                frames, fps, _ = video_frames(path)
            except Exception as e:
                failures.append((path, e))
                tqdm.write(f"error: {path}: {e}", file=sys.stderr)
                bar.update(1)  # counted as one item in the total
                continue
            writers[path] = VideoWriter(os.path.join(args.out, f"{os.path.splitext(os.path.basename(path))[0]}_pose.mp4"), fps)
            for i, frame in frames:
                key = ("video", path, i)
                if not args.no_draw:
                    frames_kept[key] = frame
                yield key, frame, (boxes.lookup(path, frame=i) if boxes else None)

    total = sum(1 if k == "image" else max(1, frame_count(p)) for k, p in inputs)
    bar = tqdm(total=total, desc="predict", unit="item", disable=args.quiet or None)
    for n, ((kind, path, frame), poses) in enumerate(predictor.iter_predict(items(), errors="yield")):
        bar.update(1)
        frame_img = frames_kept.pop((kind, path, frame), None)
        if isinstance(poses, Exception):
            failures.append((path if frame is None else f"{path}:{frame}", poses))
            tqdm.write(f"error: {failures[-1][0]}: {poses}", file=sys.stderr)
            continue
        image_id = _image_id(path, n) if kind == "image" else frame
        for p in poses:
            r = p.to_coco(image_id)
            r["file_name"] = os.path.basename(path)
            if kind == "video":
                r["frame"] = frame
            results.append(r)
        if args.no_draw:
            continue
        try:
            if kind == "image":
                rgb = load_image(path).permute(1, 2, 0).numpy()
                os.makedirs(vis_dir, exist_ok=True)
                from PIL import Image
                Image.fromarray(draw_poses(rgb, poses, kpt_thr=args.kpt_thr)).save(
                    os.path.join(vis_dir, os.path.splitext(os.path.basename(path))[0] + ".jpg"))
            elif frame_img is not None:
                writers[path].write(draw_poses(frame_img, poses, kpt_thr=args.kpt_thr))
        except Exception as e:  # a drawing failure loses the picture, not the keypoints
            failures.append((path, e))
            tqdm.write(f"error drawing {path}: {e}", file=sys.stderr)
    bar.close()
    for w in writers.values():
        w.close()
    out_json = os.path.join(args.out, "keypoints.json")
    with open(out_json, "w") as f:
        json.dump(results, f)
    done = total - len(failures)
    print(f"{len(results)} poses from {done} item(s) -> {out_json}"
          + (f"; {len(failures)} failed" if failures else ""), file=sys.stderr)
    if boxes is not None and boxes.matched == 0:
        print("warning: no entry of the boxes file matched an input (see `vitpose predict --help`)",
              file=sys.stderr)
    return 1 if failures else 0


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="keypoints for images, folders or videos",
                       description=__doc__ + "\n" + BoxIndex.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR_OR_VIDEO")
    p.add_argument("--boxes", help="person boxes JSON (default: each whole image is one box)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset-index", type=int, default=0, help="ViTPose+ dataset/decoder (0: COCO)")
    p.add_argument("--kpt-thr", type=float, default=0.3, help="draw keypoints scored above this")
    p.add_argument("--no-draw", action="store_true", help="write the JSON only")
    p.set_defaults(func=cmd_predict)
