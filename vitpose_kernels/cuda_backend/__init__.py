"""CUDA C++ backends (vitpose_kernels._C). Imported by the dispatcher only when the extension
loaded; importing registers each op that has a CUDA kernel."""
import importlib

for _op in ("window_attention", "simple_decoder", "decode_heatmaps", "udp_targets", "masked_attention",
            "heatmap_key_mask"):
    try:
        importlib.import_module(f"{__name__}.{_op}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_op}":
            raise
