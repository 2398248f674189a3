"""TensorRT: an engine built from ``vitpose export`` ONNX, timed and checked against PyTorch (GPU).

    python benchmarks/tensorrt_engine.py                    # ViTPose-B, fp16 engine, batches 1, 8, 64
    python benchmarks/tensorrt_engine.py --sizes S,B --batches 1,32 --decode --flip
    python benchmarks/tensorrt_engine.py --smoke            # tiny model: export and checks only

Steps per size: random-weight ViTPose (the numbers do not depend on the weights), exported with
``vitpose.export.export_onnx`` (dynamic batch), an engine built with the TensorRT Python API
(optimisation profile min 1 / opt / max = the largest batch; --precision fp16 | bf16 | fp32),
then per batch: the engine's median latency and images/s, against PyTorch on the same GPU (fused
kernels, bf16, eager and mode="graph"), and the engine's largest relative difference to the
PyTorch fp32 heatmaps. Without the ``tensorrt`` module the engine is built and timed with
``trtexec`` when it is on PATH; without either, the rows say so (GPU-owed: TensorRT is not
installed with this package, ``pip install tensorrt`` on the GPU machine).
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


# ----------------------------------------------------------------------------- TensorRT

def build_engine(onnx_path: str, shapes: dict, precision: str):
    """An ICudaEngine from the ONNX file; shapes: {input: (min, opt, max)}."""
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 8 << 30)
    if precision in ("fp16", "bf16"):
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


class EngineRunner:
    """Runs an engine on torch CUDA tensors (name-based I/O of TensorRT 10)."""

    def __init__(self, engine):
        import tensorrt as trt
        self.engine, self.context = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def __call__(self, feeds: dict) -> dict:
        out = {}
        for name in self.inputs:
            t = feeds[name].contiguous()
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, out[name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        torch.cuda.current_stream().wait_stream(self.stream)
        return out


def trtexec_rows(onnx_path: str, name: str, H: int, W: int, batches, precision: str, rep: int) -> list[dict]:
    """Build and time with trtexec (no Python module): its own latency / throughput report."""
    exe = shutil.which("trtexec")
    rows = []
    for b in batches:
        cmd = [exe, f"--onnx={onnx_path}", f"--minShapes={name}:1x3x{H}x{W}",
               f"--optShapes={name}:{b}x3x{H}x{W}", f"--maxShapes={name}:{max(batches)}x3x{H}x{W}",
               f"--shapes={name}:{b}x3x{H}x{W}", f"--iterations={rep}"]
        if precision != "fp32":
            cmd.append(f"--{precision}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        m = re.search(r"GPU Compute Time: min = [\d.]+ ms, max = [\d.]+ ms, mean = [\d.]+ ms, median = ([\d.]+) ms",
                      proc.stdout)
        if proc.returncode or not m:
            rows.append({"batch": b, "skipped": f"trtexec failed (rc {proc.returncode}): {proc.stdout[-300:]}"})
        else:
            ms = float(m.group(1))
            rows.append({"batch": b, "median_ms": ms, "images_per_s": b / (ms * 1e-3), "via": "trtexec"})
    return rows


# ----------------------------------------------------------------------------- the run

def run(args, vp, rows, notes, budget):
    from vitpose.export import export_onnx
    gpu = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401
        have_trt = "python"
    except ImportError:
        have_trt = "trtexec" if shutil.which("trtexec") else None
        notes.append("the tensorrt module is not installed" + ("; trtexec is used" if have_trt else
                     " and trtexec is not on PATH: engines not built (pip install tensorrt)"))
    for size in args.sizes:
        cfg = vp.vitpose_config(size) if not args.smoke else vp.vitpose_config(size, embed_dim=32, depth=1, num_heads=2)
        model = vp.ViTPose(cfg).eval()
        H, W = cfg.img_size
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / f"vitpose-{size}.onnx")
            t = time.perf_counter()
            info = export_onnx(model, path, decode=args.decode, flip=args.flip, verify=args.smoke)
            notes.append(f"{size}: exported in {time.perf_counter() - t:.1f} s, {len(info['ops'])} operator types"
                         + (f", onnxruntime max rel error {info['max_rel_error']:.2g}" if info["max_rel_error"] else ""))
            if not gpu or have_trt is None:
                rows.append({"size": size, "runtime": "tensorrt", "skipped": "no GPU" if not gpu else "no TensorRT"})
                continue
            if have_trt == "trtexec":
                rows += [{"size": size, "runtime": "tensorrt", **r} for r in
                         trtexec_rows(path, "pixel_values", H, W, args.batches, args.precision, args.rep)]
                continue
            shapes = {"pixel_values": ((1, 3, H, W), (max(args.batches), 3, H, W), (max(args.batches), 3, H, W))}
            if args.decode:
                shapes.update({n: ((1, 2), (max(args.batches), 2), (max(args.batches), 2))
                               for n in ("bbox_centers", "bbox_scales")})
            t = time.perf_counter()
            engine = EngineRunner(build_engine(path, shapes, args.precision))
            notes.append(f"{size}: TensorRT {args.precision} engine built in {time.perf_counter() - t:.0f} s")
        fused = vp.TopDownPredictor(copy.deepcopy(model), device="cuda").model  # bf16, BatchNorm folded
        ref32 = model.cuda().float()
        for b in args.batches:
            if not budget.allows(5):
                rows.append({"size": size, "batch": b, "skipped": budget.skip_reason(5)})
                continue
            x = torch.randn(b, 3, H, W, device="cuda")
            feeds = {"pixel_values": x}
            if args.decode:
                feeds["bbox_centers"] = torch.rand(b, 2, device="cuda") * 400
                feeds["bbox_scales"] = torch.rand(b, 2, device="cuda") * 200 + 50
            got = engine(feeds)["heatmaps"]
            with torch.no_grad():
                want = ref32(x) if not args.flip else None
            row = {"size": size, "runtime": "tensorrt", "batch": b, "precision": args.precision}
            if want is not None:
                row["max_rel_error_vs_fp32"] = float((got - want).abs().max() / want.abs().max())
            row.update(common.bench(lambda: engine(feeds), device="cuda", rep=args.rep, max_seconds=2))
            row["images_per_s"] = b / (row["median_ms"] * 1e-3)
            rows.append(row)
            xb = x.bfloat16()
            t = common.bench(lambda: fused(xb), device="cuda", rep=args.rep, max_seconds=2)
            rows.append({"size": size, "runtime": "pytorch fused bf16 (eager)", "batch": b, **t,
                         "images_per_s": b / (t["median_ms"] * 1e-3)})


def render(results) -> str:
    body = []
    for r in results["rows"]:
        body.append([r.get("size", ""), r.get("runtime", ""), common.fmt(r.get("batch")),
                     common.fmt(r.get("median_ms"), ".3f"), common.fmt(r.get("images_per_s")),
                     common.fmt(r.get("max_rel_error_vs_fp32"), ".2g"), r.get("skipped", "")[:70]])
    table = common.format_table(["size", "runtime", "batch", "ms", "img/s", "rel err", "note"], body,
                                align="<<>>>><")
    return "\n".join([common.environment_line(results["environment"]), "", table, ""]
                     + [f"note: {n}" for n in results["notes"]])


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--sizes", default="B")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--decode", action="store_true", help="export with the decoding inside the graph")
    p.add_argument("--flip", action="store_true", help="export with the flip test inside the graph")
    common.add_run_args(p, rep=50)
    args = p.parse_args(argv)
    common.stop_on_sigterm()
    args.sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    args.batches = sorted(int(b) for b in args.batches.split(",") if b.strip())
    gpu = torch.cuda.is_available()
    if not gpu and not args.smoke:
        print("tensorrt_engine.py builds and times a TensorRT engine on a GPU and none is visible here. "
              "Nothing measured (GPU-owed). `--smoke` exports a tiny model and checks it with onnxruntime.")
        return 0
    if args.smoke:
        args.batches, args.rep = args.batches[:1], min(args.rep, 3)
    vp = common.import_vitpose("ViTPose", "vitpose_config", "TopDownPredictor")
    t0 = time.perf_counter()
    device = torch.device("cuda" if gpu else "cpu")
    results = {"environment": common.environment(device), "smoke": args.smoke, "rows": [], "notes": [],
               "budget_s": args.budget_s}
    try:
        run(args, vp, results["rows"], results["notes"], common.Budget(args.budget_s))
    except common.Interrupted as e:
        results["notes"].append(f"interrupted ({e}): rows not run are missing")
    common.finish(results, args.out, f"tensorrt_{'gpu' if gpu else 'cpu'}{'_smoke' if args.smoke else ''}", render,
                  None, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
