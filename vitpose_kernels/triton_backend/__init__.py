"""Triton backends. Importing this package registers every Triton op with the dispatcher; it
raises ImportError when triton is missing, which the dispatcher reports as the reason."""
import importlib

import triton  # noqa: F401  (the dispatcher turns an ImportError here into a reason)

for _op in ("window_attention", "simple_decoder", "decode_heatmaps", "udp_targets", "masked_attention",
            "heatmap_key_mask"):
    try:  # each op module registers itself; an op without a Triton kernel yet is simply absent
        importlib.import_module(f"{__name__}.{_op}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_op}":
            raise
