"""CPU backends: vectorised PyTorch/numpy implementations for CPU tensors, faster than the
reference where it matters on a CPU (decode_heatmaps). Importing registers each op it has."""
import importlib

for _op in ("window_attention", "simple_decoder", "decode_heatmaps", "udp_targets"):
    try:  # an op without a CPU implementation is simply absent (the reference serves it)
        importlib.import_module(f"{__name__}.{_op}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_op}":
            raise
