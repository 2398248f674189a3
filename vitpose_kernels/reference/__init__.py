"""The spec: one pure-PyTorch, differentiable, device-agnostic implementation of every op.

Every other backend is tested against these functions (tests/parity.py). They take arguments
already checked by vitpose_kernels._validate; call them through the public front door
(`vitpose_kernels.window_attention(..., backend="reference")`) unless you are writing a backend.
"""
from .decode_heatmaps import decode_heatmaps
from .heatmap_key_mask import heatmap_key_mask
from .masked_attention import masked_attention, pack_key_mask, unpack_key_mask
from .simple_decoder import simple_decoder
from .udp_targets import udp_targets
from .window_attention import pooled_tokens, window_attention

__all__ = ["window_attention", "pooled_tokens", "simple_decoder", "decode_heatmaps", "udp_targets",
           "masked_attention", "pack_key_mask", "unpack_key_mask", "heatmap_key_mask"]

from ..dispatch import register as _register

for _op, _fn in (("window_attention", window_attention), ("simple_decoder", simple_decoder),
                 ("decode_heatmaps", decode_heatmaps), ("udp_targets", udp_targets),
                 ("masked_attention", masked_attention), ("heatmap_key_mask", heatmap_key_mask)):
    _register(_op, "reference")(_fn)
