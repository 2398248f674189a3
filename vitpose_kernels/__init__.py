"""vitpose_kernels: fused Triton and CUDA kernels for ViTPose-style vision transformers.

Ops (each with a pure-PyTorch reference that is the spec, and backend dispatch):
window_attention, simple_decoder, decode_heatmaps, udp_targets, masked_attention (with
heatmap_key_mask and pack_key_mask for its masks). ``backends()`` tells which
backends run on this machine and why the others do not; ``python -m vitpose_kernels.info``
prints the report.
"""
from .dispatch import backends
from .ops import (decode_heatmaps, explain, heatmap_key_mask, masked_attention, pack_key_mask, simple_decoder,
                  udp_targets, window_attention)
from .patch import PatchReport, patch, route_sdpa, unpatch

# Import the backends and probe the machine now, not inside the first (maybe traced) call:
# torch.compile(fullgraph=True) cannot trace module imports.
from . import dispatch as _dispatch  # noqa: E402

_dispatch.probe()

__version__ = "0.1.0"

__all__ = ["window_attention", "simple_decoder", "decode_heatmaps", "udp_targets", "masked_attention",
           "heatmap_key_mask", "pack_key_mask", "backends",
           "explain", "patch", "unpatch", "route_sdpa", "PatchReport", "__version__"]
