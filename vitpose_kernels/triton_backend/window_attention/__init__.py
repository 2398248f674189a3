"""Triton window_attention (the spec: vitpose_kernels.reference.window_attention). Design note.

Files: tiles.py (jit helpers: tile decoding, loads, softmax steps), forward.py, backward.py
(kernels), host.py (launch plans cached per shape, launches, support predicate, registration).
The op's schema, fakes and autograd formula are shared with the CUDA backend
(vitpose_kernels._attention_ops); this package only supplies its forward and backward.

TODO: design note (tiling, packing, masks, saved tensors, backward reduction).
"""
from .host import (MAX_HEAD_DIM, MAX_REL_ROWS, pack_axis, plan, window_attention,  # noqa: F401
                   window_attention_backward_op, window_attention_op, window_attention_reasons)
from . import backward, forward, tiles  # noqa: F401
