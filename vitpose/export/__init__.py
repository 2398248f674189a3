"""Export of pose models for other runtimes: ONNX (``export_onnx``), for onnxruntime, TensorRT
(``benchmarks/tensorrt_engine.py`` builds and times an engine on a GPU) and the rest."""
from .onnx import PoseGraph, export_onnx

__all__ = ["PoseGraph", "export_onnx"]
