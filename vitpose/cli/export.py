"""``vitpose export``: a checkpoint as an ONNX graph (standard operators, dynamic batch).

    vitpose export --checkpoint F --format onnx OUT.onnx [--decode] [--flip] [--batch N]

Inputs: pixel_values (B, 3, H, W) ImageNet-normalised crops; with --decode also bbox_centers and
bbox_scales (B, 2), and the outputs are keypoints (B, K, 2) in image pixels, scores (B, K) and the
heatmaps; without, heatmaps (B, K, H/4, W/4). --flip adds the flip test inside the graph. The
file is checked with onnxruntime against PyTorch (1e-4 relative) unless --no-verify.
"""
from __future__ import annotations

import argparse
import sys


def cmd_export(args) -> int:
    from ..export import export_onnx
    from ..models.checkpoints import load_model

    if args.format != "onnx":
        raise ValueError(f"--format must be onnx, got {args.format!r}")
    overrides = {"arch": args.arch} if args.arch else {}
    model = load_model(args.checkpoint, **overrides)
    info = export_onnx(model, args.out, decode=args.decode, flip=args.flip, dataset_index=args.dataset_index,
                       opset=args.opset, batch=args.batch, verify=not args.no_verify)
    print(f"{args.out}: inputs {', '.join(info['inputs'])} -> outputs {', '.join(info['outputs'])}; "
          f"batch {args.batch or 'dynamic'}; {len(info['ops'])} ONNX operator types, all standard", file=sys.stderr)
    if info["max_rel_error"] is not None:
        print(f"onnxruntime vs PyTorch: {info['max_rel_error']:.2g} max relative difference", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="official / ViTPose+ / HF / vitpose checkpoint")
    p.add_argument("--arch", default=None, help="architecture, when the checkpoint does not say (see vitpose.architectures())")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="onnx (TensorRT builds engines from it)")
    p.add_argument("out", metavar="OUT.onnx")
    p.add_argument("--decode", action="store_true", help="decode the heatmaps to keypoints inside the graph")
    p.add_argument("--flip", action="store_true", help="flip test inside the graph")
    p.add_argument("--dataset-index", type=int, default=0, help="ViTPose+ dataset/decoder (0: COCO)")
    p.add_argument("--batch", type=int, default=None, help="a fixed batch size (default: dynamic)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.set_defaults(func=cmd_export)
