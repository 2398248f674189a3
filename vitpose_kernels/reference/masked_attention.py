"""Reference masked_attention: the spec, in plain differentiable PyTorch.

Interface (vitpose_kernels.masked_attention; TAR-ViTPose's JTA and GRA build on it)::

    masked_attention(q, k, v, key_mask=None, *, scale=None, backend=None) -> out
    q (B, H, Lq, D); k, v (B, H, Lk, D), Lq != Lk allowed, any strides; out (B, H, Lq, D) in q's dtype
    out[b, h, i] = sum_j softmax_j(scale * q[b, h, i] . k[b, h, j] | key j allowed for i) v[b, h, j]
    scale defaults to D ** -0.5.

key_mask: True = query i MAY attend to key j. This is the opposite of nn.MultiheadAttention's
bool ``attn_mask`` (True = masked out): an official ``attn_mask`` is passed as ``~attn_mask``.
Accepted forms (the last dim is the key axis; every other size-1 dim broadcasts):
    None                      plain cross-attention (TAR's GRA)
    bool (Lq|1, Lk)           one mask for every batch element and head
    bool (B|1, Lq|1, Lk)      per batch element, shared by the heads (TAR's JTA: one mask per clip)
    bool (B*H, Lq|1, Lk)      nn.MultiheadAttention's 3-D layout, row b*H + h (only when H > 1)
    bool (B|1, H|1, Lq|1, Lk) the general form
    int32 (..., ceil(Lk/32))  the same shapes bit-packed: bit i of word w is key 32*w + i (bits past
                              Lk are ignored); ``pack_key_mask`` / ``heatmap_key_mask`` produce it.
Every backend receives the canonical form: int32 words (B|1, H|1, Lq|1, W), W = ceil(Lk/32).

A query row whose mask excludes every key outputs zeros and passes zero gradients (its saved
logsumexp is +inf). nn.MultiheadAttention's math path (the one TAR-ViTPose's training forward
takes, need_weights=True) returns NaN for such a row; its fused inference path and SDPA's
memory-efficient kernel return zeros, as here.

TAR-ViTPose's official masks (github zgspose/TARViTPose, models/best/TAR_ViTPose.py,
``generate_attn_mask`` and ``forward``), which the companion op ``heatmap_key_mask``
(vitpose_kernels/reference/heatmap_key_mask.py) reproduces:
  - each initial heatmap (frame t, joint j) is min-max normalised, (h - min) / (max - min + 1e-6),
    resized to the feature grid with F.interpolate(bilinear, align_corners=False), and a key is
    EXCLUDED where the value is < threshold (0.2): key allowed <=> not (value < threshold);
  - the (B, T, J, Hf*Wf) mask is repeated over the heads (so one mask per clip suffices here) and
    then *viewed* (not permuted) as (B, J, T, Hf*Wf): query row j, frame chunk t takes the map of
    (frame, joint) = divmod(j*T + t, J). The keys are the T frames' tokens, frame-major. The paper's
    reading (row j, chunk t <- frame t, joint j) is heatmap_key_mask's layout="paper".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BITS = 32  # keys per packed word


def mask_words(num_keys: int) -> int:
    """Words per row of a bit-packed mask over `num_keys` keys."""
    return -(-num_keys // BITS)


def pack_key_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool (..., Lk) -> int32 (..., ceil(Lk/32)): bit i of word w is mask[..., 32*w + i]."""
    lk = mask.shape[-1]
    bits = F.pad(mask.to(torch.int32), (0, mask_words(lk) * BITS - lk))
    bits = bits.unflatten(-1, (mask_words(lk), BITS))
    shifts = torch.arange(BITS, dtype=torch.int32, device=mask.device)
    # Distinct powers of two: their int32 sum (wrapping at bit 31) is their bitwise OR.
    return (bits << shifts).sum(-1, dtype=torch.int32)


def unpack_key_mask(words: torch.Tensor, num_keys: int) -> torch.Tensor:
    """int32 (..., W) -> bool (..., num_keys); the inverse of pack_key_mask."""
    shifts = torch.arange(BITS, dtype=torch.int32, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1  # arithmetic shift: bit 31 still reads correctly
    return bits.flatten(-2)[..., :num_keys].bool()


def masked_attention(q, k, v, key_mask, scale: float) -> torch.Tensor:
    """See the module docstring. key_mask: None or the canonical int32 words (B|1, H|1, Lq|1, W).
    Logits in the input dtype, softmax in float32 (float64 kept for gradcheck), output in q's dtype."""
    acc = torch.promote_types(q.dtype, torch.float32)
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    if key_mask is None:
        probs = torch.softmax(logits, dim=-1, dtype=acc)
    else:
        allowed = unpack_key_mask(key_mask, k.shape[2])
        has_key = allowed.any(dim=-1, keepdim=True)
        logits = logits.masked_fill(~allowed, float("-inf"))
        # A row without keys gets finite logits (a uniform softmax) that are then zeroed: zero
        # output and exactly zero gradients, no NaN anywhere.
        logits = logits.masked_fill(~has_key, 0.0)
        probs = torch.softmax(logits, dim=-1, dtype=acc) * has_key
    return torch.matmul(probs.to(v.dtype), v).to(q.dtype)
