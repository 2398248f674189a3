"""End-to-end pose estimation on the CPU: crop + model + decode, PyTorch against the same model in onnxruntime.

    python benchmarks/cpu_predict.py                     # ViTPose-S, 8 people in a 1280x720 frame, flip on
    python benchmarks/cpu_predict.py --size B --people 1,8 --threads 2

Rows, per call on N person boxes of one frame (median over --rep calls), people per second:
  pytorch                 TopDownPredictor.run_boxes on the CPU: one grid_sample for the crops,
                          the model (reference attention ops) on the crops and their mirrors, and
                          decode_heatmaps (the CPU backend)
  onnxruntime + decode    the same crops, then the model *and* the flip test *and* the decoding
                          in one onnxruntime graph (``vitpose export --decode --flip``)
  onnxruntime, heatmaps   the same crops, the model and the flip merge in onnxruntime, the decoding
                          by the CPU backend
  of which: decode        the CPU backend's share of the pytorch row
Crops are computed by the same code in every row; each onnxruntime row's keypoint scores (the
heatmap maxima) are compared with the pytorch row's (largest difference relative to the largest
score). Random weights give flat heatmaps on which the DARK step is ill-conditioned, so the
keypoint positions themselves are not a fair comparison here.
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def scene(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (3, 720, 1280), generator=g, dtype=torch.uint8)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([1100.0, 400.0])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([120.0, 200.0]) + torch.tensor([60.0, 100.0])
    return frame, torch.cat([xy, wh], 1).numpy()


def run(args, vp, rows, notes):
    import onnxruntime as ort

    import vitpose_kernels as vk
    from vitpose.export import export_onnx
    from vitpose.infer.pipeline import mosaic_layout, paste
    torch.set_num_threads(args.threads)
    cfg = vp.vitpose_config(args.size) if not args.smoke else vp.vitpose_config(args.size, embed_dim=32, depth=1,
                                                                                num_heads=2)
    model = vp.ViTPose(cfg).eval()
    with torch.no_grad():  # visible responses (the default head init is tiny)
        for name, t in model.state_dict().items():
            if "head" in name and t.is_floating_point() and not name.endswith(("running_var", "running_mean")):
                t.normal_(0, 0.05)
    predictor = vp.TopDownPredictor(copy.deepcopy(model), device="cpu", flip=True, batch_size=max(args.people))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for decode in (True, False):
            path = f"{tmp}/m{int(decode)}.onnx"
            export_onnx(model, path, decode=decode, flip=True, verify=False)
            sessions[decode] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    c = predictor.constants()
    for n in args.people:
        frame, boxes = scene(n)

        def crops():  # the crops every row starts from: the pipeline's own code
            origins, hw = mosaic_layout([frame.shape[1:]])
            canvas = paste(frame.new_zeros(3, *hw, dtype=torch.float32), [frame], origins)
            b = torch.as_tensor(boxes, dtype=torch.float32)
            centers, scales = vp.infer.pipeline.box_to_center_scale(b, predictor.input_size)
            org = torch.tensor(origins, dtype=torch.float32).expand(n, 2)
            sizes = torch.tensor([[frame.shape[2], frame.shape[1]]], dtype=torch.float32).expand(n, 2)
            x = vp.infer.pipeline.crop_from_canvas(canvas, org, sizes, centers, scales, predictor.input_size,
                                                   c["lattice"], c["size1"])
            return vp.infer.pipeline.normalize(x, c["mean"], c["std"]), centers, scales

        def ort_decode():
            x, centers, scales = crops()
            return sessions[True].run(None, {"pixel_values": x.numpy(), "bbox_centers": centers.numpy(),
                                             "bbox_scales": scales.numpy()})[1]

        def ort_heatmaps():
            x, centers, scales = crops()
            hm = torch.from_numpy(sessions[False].run(None, {"pixel_values": x.numpy()})[0])
            return vk.decode_heatmaps(hm, input_size=predictor.input_size, bbox_centers=centers,
                                      bbox_scales=scales)[1]

        with torch.inference_mode():
            heatmaps = torch.from_numpy(sessions[False].run(None, {"pixel_values": crops()[0].numpy()})[0])
        cases = {"pytorch": lambda: predictor.run_boxes([frame], [0] * n, boxes)[1],
                 "onnxruntime + decode in graph": ort_decode,
                 "onnxruntime, heatmaps + cpu decode": ort_heatmaps,
                 "of which: decode (cpu backend)": lambda: vk.decode_heatmaps(heatmaps, input_size=predictor.input_size)[0]}
        want = None
        for name, fn in cases.items():
            with torch.inference_mode():
                t = common.bench(fn, device="cpu", warmup=1, rep=args.rep, max_seconds=20)
                out = torch.as_tensor(fn())
            row = {"what": name, "people": n, "threads": args.threads, **t, "people_per_s": n / (t["median_ms"] * 1e-3)}
            if name == "pytorch":
                want = out
            elif not name.startswith("of which"):
                row["max_score_rel_diff"] = float((out - want).abs().max() / want.abs().max())
            rows.append(row)
    notes.append(f"ViTPose-{args.size}{' (smoke: tiny)' if args.smoke else ''}, flip test on, "
                 f"{args.threads} thread(s) for torch and onnxruntime")


def render(results) -> str:
    body = [[r["what"], str(r["people"]), f"{r['median_ms']:.1f}", f"{r['people_per_s']:,.1f}",
             common.fmt(r.get("max_score_rel_diff"), ".2g")] for r in results["rows"]]
    table = common.format_table(["end to end, CPU", "people", "ms", "people/s", "scores vs pytorch"], body)
    return "\n".join([common.environment_line(results["environment"]), "", table, ""]
                     + [f"note: {n}" for n in results["notes"]])


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--size", default="S")
    p.add_argument("--people", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    common.add_run_args(p, rep=5)
    args = p.parse_args(argv)
    args.people = [int(x) for x in args.people.split(",") if x.strip()]
    if args.smoke:
        args.people, args.rep = args.people[:1], 2
    vp = common.import_vitpose("ViTPose", "vitpose_config", "TopDownPredictor")
    import vitpose.infer.pipeline  # noqa: F401  (vp.infer.pipeline below)
    t0 = time.perf_counter()
    results = {"environment": common.environment("cpu"), "rows": [], "notes": []}
    run(args, vp, results["rows"], results["notes"])
    common.finish(results, args.out, f"cpu_predict_{args.size}" + ("_smoke" if args.smoke else ""), render, None, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
