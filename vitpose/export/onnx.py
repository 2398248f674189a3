"""ONNX export of a pose model: heatmaps, or keypoints with the decoding inside the graph.

    info = export_onnx(model, "vitpose-b.onnx", decode=True, flip=True)

The graph holds the reference formulation of every vitpose_kernels op (standard ONNX operators:
MatMul, Softmax, Conv, Resize, ...): while ``torch.onnx.export`` traces, the dispatcher routes
each op to its reference whatever backend the model asks for (``vitpose_kernels.dispatch``), so
no custom operator reaches the file and onnxruntime, TensorRT or any other ONNX runtime runs it.
The batch dimension is dynamic; the image size is the model's.

Inputs and outputs:
  pixel_values  (B, 3, H, W) float32, ImageNet-normalised crops (``model.example_inputs`` says
                otherwise for models that take clips)
  heatmaps      (B, K, H/4, W/4)                                         [decode=False]
  bbox_centers, bbox_scales (B, 2) float32: the crop's box in image pixels  [decode=True]
  keypoints     (B, K, 2) float32 in image pixels, scores (B, K), and the heatmaps [decode=True]
flip=True runs the mirrored crops in the same graph and merges their heatmaps (the flip test).

Other architectures export through the same path. A model that takes something other than one
(B, 3, H, W) image provides ``example_inputs(batch) -> dict[name, tensor]`` (dimension 0 of each
is the batch; TAR-ViTPose: clips (B, T, 3, H, W)); the exporter calls ``model(*inputs)`` (plus
``dataset_index`` when the forward takes one) and expects heatmaps (B, K, h, w) back. The crop
size comes from ``model.config.img_size`` (H, W), the flip order from ``model.datasets`` (or
``model.config.datasets``) and the decoding from ``model.decode_method`` ("udp" if absent;
TokenPose: "dark").
"""
from __future__ import annotations

import copy
import inspect
import os
import warnings

import torch
import torch.nn as nn

import vitpose_kernels
from vitpose_kernels.reference.decode_heatmaps import flip_back

DEFAULT_OPSET = 17  # LayerNormalization is a standard operator from opset 17


class PoseGraph(nn.Module):
    """What is exported: the model, the optional flip test, the optional decoding."""

    def __init__(self, model: nn.Module, *, decode: bool, flip: bool, dataset_index: int = 0):
        super().__init__()
        from ..data.keypoints import keypoint_set
        self.model, self.decode, self.flip = model, decode, flip
        cfg = getattr(model, "config", None)
        img_size = getattr(cfg, "img_size", None)
        if img_size is None:
            raise ValueError(f"{type(model).__name__} has no config.img_size (H, W): the exporter needs the crop size")
        self.input_size = (int(img_size[1]), int(img_size[0]))  # (W, H)
        datasets = tuple(getattr(model, "datasets", None) or getattr(cfg, "datasets", ("coco",)))
        self.method = getattr(model, "decode_method", "udp")
        keypoints = keypoint_set(datasets[min(dataset_index, len(datasets) - 1)])
        if flip and keypoints.flip_indices is None:
            raise ValueError(f"flip=True needs the mirror order of {keypoints.name!r} keypoints, which is not known")
        self.register_buffer("flip_indices", torch.tensor(keypoints.flip_indices or (), dtype=torch.long),
                             persistent=False)
        self.takes_dataset_index = "dataset_index" in inspect.signature(model.forward).parameters
        self.dataset_index = dataset_index

    def input_names(self) -> list[str]:
        return list(example_inputs(self.model, 1)) + (["bbox_centers", "bbox_scales"] if self.decode else [])

    def output_names(self) -> list[str]:
        return ["keypoints", "scores", "heatmaps"] if self.decode else ["heatmaps"]

    def forward(self, *inputs):
        n_model = len(inputs) - (2 if self.decode else 0)
        x = inputs[:n_model]
        if self.flip:
            x = tuple(torch.cat([t, t.flip(-1)]) for t in x)
        kwargs = {"dataset_index": self.dataset_index} if self.takes_dataset_index else {}
        heatmaps = self.model(*x, **kwargs).float()
        if self.flip:  # the flip test: decode_heatmaps' own merge, done before it
            B = inputs[0].shape[0]
            heatmaps = (heatmaps[:B] + flip_back(heatmaps[B:], self.flip_indices)) * 0.5
        if not self.decode:
            return heatmaps
        centers, scales = inputs[n_model:]
        keypoints, scores = vitpose_kernels.decode_heatmaps(heatmaps, input_size=self.input_size,
                                                            bbox_centers=centers, bbox_scales=scales,
                                                            method=self.method)
        return keypoints, scores, heatmaps


def example_inputs(model: nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """The model's own ``example_inputs(batch)``, else one (B, 3, H, W) image batch."""
    if hasattr(model, "example_inputs"):
        return dict(model.example_inputs(batch))
    H, W = model.config.img_size
    return {"pixel_values": torch.randn(batch, 3, H, W)}


def graph_inputs(graph: PoseGraph, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the exported graph (for checks): crops, and boxes when it decodes."""
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v
           for k, v in example_inputs(graph.model, batch).items()}
    if graph.decode:
        out["bbox_centers"] = torch.rand(batch, 2, generator=g) * 400 + 50
        out["bbox_scales"] = torch.rand(batch, 2, generator=g) * 200 + 60
    return out


def prepare(model: nn.Module) -> nn.Module:
    """An fp32 CPU copy in eval mode, BatchNorm folded where the model can fold it."""
    model = copy.deepcopy(model).float().cpu().eval()
    if hasattr(model, "fold_batchnorm"):
        model.fold_batchnorm()
    return model


def export_onnx(model: nn.Module, path, *, decode: bool = False, flip: bool = False, dataset_index: int = 0,
                opset: int = DEFAULT_OPSET, batch: int | None = None, verify: bool = True,
                rtol: float = 1e-4) -> dict:
    """Write the ONNX file; returns {"inputs", "outputs", "ops", "max_rel_error" (onnxruntime
    against PyTorch at batch 1 and 3, None without verify)}. batch=None: dynamic batch."""
    # eval() on the wrapper too: the exporter restores the wrapper's mode, recursively, afterwards.
    graph = PoseGraph(prepare(model), decode=decode, flip=flip, dataset_index=dataset_index).eval()
    example = graph_inputs(graph, batch or 2)
    names = graph.input_names()
    dynamic = None if batch else {n: {0: "batch"} for n in names + graph.output_names()}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        # The tracer's notes on Python values it records as constants (sizes, shape checks): the
        # graph's geometry is fixed by design; only the batch is dynamic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # flips: kept as Slice ops
        with torch.no_grad():
            torch.onnx.export(graph, tuple(example[n] for n in names), path, dynamo=False, input_names=names,
                              output_names=graph.output_names(), dynamic_axes=dynamic, opset_version=opset,
                              do_constant_folding=True)
    info = {"path": path, "inputs": names, "outputs": graph.output_names(), "ops": onnx_ops(path),
            "max_rel_error": None}
    if verify:
        info["max_rel_error"] = compare_onnxruntime(graph, path, batches=(batch,) if batch else (1, 3))
        if info["max_rel_error"] > rtol:
            raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {info['max_rel_error']:.3g} "
                               f"(relative, > {rtol}); please report this with the model's config")
    return info


def onnx_ops(path: str) -> list[str]:
    import onnx
    model = onnx.load(path, load_external_data=False)
    return sorted({n.op_type for n in model.graph.node})


def compare_onnxruntime(graph: PoseGraph, path: str, batches=(1, 3)) -> float:
    """The largest relative difference between onnxruntime and PyTorch over random inputs at these
    batch sizes: heatmaps against PyTorch's (relative to their largest value); the decoded scores
    and keypoints against PyTorch's decoding *of onnxruntime's heatmaps* (relative to the largest
    score and to the box size), so that the decoding graph is checked on its own.

    Keypoints are compared where the DARK Newton step stays within one heatmap pixel of the
    maximum, the regime of a trained model's peaked heatmaps. On the flat heatmaps of random
    weights the step is ill-conditioned (it can move a point by tens of pixels) and amplifies
    float rounding in the blur; those points are left out of the comparison."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0

    def rel(got, want, scale, where=None):
        err = (torch.as_tensor(got) - want).abs()
        if where is not None:
            err = err[where]
        return float(err.max()) / max(scale, 1e-12) if err.numel() else 0.0

    for b in batches:
        inputs = graph_inputs(graph, b, seed=b)
        with torch.no_grad():
            want = graph(*inputs.values())
        got = dict(zip(graph.output_names(), session.run(None, {k: v.numpy() for k, v in inputs.items()})))
        want_heatmaps = want[-1] if graph.decode else want
        worst = max(worst, rel(got["heatmaps"], want_heatmaps, float(want_heatmaps.abs().max())))
        if graph.decode:
            heatmaps = torch.from_numpy(got["heatmaps"])
            kp, sc = vitpose_kernels.decode_heatmaps(heatmaps, input_size=graph.input_size, backend="reference",
                                                     bbox_centers=inputs["bbox_centers"],
                                                     bbox_scales=inputs["bbox_scales"], method=graph.method)
            H, W = heatmaps.shape[-2:]
            lattice = dict(input_size=(W - 1, H - 1), backend="reference")  # in heatmap pixels
            own = dict(input_size=(W, H), backend="reference") if graph.method == "dark" else lattice  # ditto
            step = (vitpose_kernels.decode_heatmaps(heatmaps, method=graph.method, **own)[0]
                    - vitpose_kernels.decode_heatmaps(heatmaps, method="argmax", **lattice)[0]).abs().amax(-1)
            worst = max(worst, rel(got["scores"], sc, float(sc.abs().max())),
                        rel(got["keypoints"], kp, float(inputs["bbox_scales"].max()), where=step <= 1.0))
    return worst
