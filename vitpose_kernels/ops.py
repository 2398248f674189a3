"""The public functional front doors: validate once, pick a backend, run it."""
from __future__ import annotations

import torch

from . import _validate, dispatch
from .reference.masked_attention import pack_key_mask as _pack_key_mask


def window_attention(q, k, v, *, grid, window=None, shift=(0, 0), pool=False, num_global=0,
                     rel_pos_h=None, rel_pos_w=None, scale=None, backend=None) -> torch.Tensor:
    """Fused windowed attention over a row-major grid of tokens, with optional global tokens.

    q, k, v: (B, H, N, D), any strides, N = num_global + Hg * Wg (global tokens first).
    window=(wh, ww) splits the grid into cells (None: one cell, i.e. full attention); shift=(sh, sw)
    moves the cell boundaries to sh + i*wh (Swin's shift, with masked pairs given zero weight);
    pool=True adds, for every grid query, the means of k and v over each tile of the unshifted
    tiling; global queries attend to all tokens and every grid query to all global tokens;
    rel_pos_h (2*wh-1, D) / rel_pos_w (2*ww-1, D) add ViTDet/SAM's decomposed relative position.

    Equivalent PyTorch code (the dense form of the spec; see vitpose_kernels.reference)::

        allowed = mask[i, j]  # same cell, or j global, or i global, or j pooled (see README)
        logits = scale * q @ cat([k, k_pooled]).T + rel_pos_bias   # rel_pos only inside cells
        out = softmax(logits.masked_fill(~allowed, -inf)) @ cat([v, v_pooled])

    backend: None picks the fastest backend that supports the inputs; "reference", "triton" or
    "cuda" forces one (NotImplementedError listing its reasons if it cannot serve the call).
    """
    args = _prepare_window_attention(q, k, v, grid=grid, window=window, shift=shift, pool=pool,
                                     num_global=num_global, rel_pos_h=rel_pos_h, rel_pos_w=rel_pos_w,
                                     scale=scale)
    return dispatch.select("window_attention", backend, q.device, *args).fn(*args)


def _prepare_window_attention(q, k, v, *, grid, window=None, shift=(0, 0), pool=False, num_global=0,
                              rel_pos_h=None, rel_pos_w=None, scale=None):
    spec = _validate.window_attention_spec(q, k, v, grid=grid, window=window, shift=shift, pool=pool,
                                           num_global=num_global, rel_pos_h=rel_pos_h,
                                           rel_pos_w=rel_pos_w, scale=scale)
    return q, k, v, rel_pos_h, rel_pos_w, spec


def simple_decoder(x, weight, bias=None, *, scale_factor=4, backend=None) -> torch.Tensor:
    """ViTPose's simple decoder (Eq. 3): ReLU, bilinear upsampling, k x k convolution (k in 1, 3).

    Equivalent PyTorch code::

        up = F.interpolate(F.relu(x), scale_factor=scale_factor, mode="bilinear", align_corners=False)
        return F.conv2d(up, weight, bias, padding=weight.shape[-1] // 2)
    """
    args = _prepare_simple_decoder(x, weight, bias, scale_factor=scale_factor)
    return dispatch.select("simple_decoder", backend, x.device, *args).fn(*args)


def _prepare_simple_decoder(x, weight, bias=None, *, scale_factor=4):
    return x, weight, bias, _validate.simple_decoder_args(x, weight, bias, scale_factor)


def decode_heatmaps(heatmaps, *, flip_heatmaps=None, flip_indices=None, input_size=(192, 256),
                    bbox_centers=None, bbox_scales=None, method="udp", blur_kernel_size=11,
                    backend=None):
    """Heatmaps (B, K, H, W) -> keypoints (B, K, 2) float32 and scores (B, K) float32.

    mmpose 1.x ``UDPHeatmap.decode`` for a whole batch: optional flip merge
    ``(heatmaps + flip_back(flip_heatmaps)) / 2`` (channels reordered by flip_indices, width
    mirrored), argmax (first index on ties) and max, DARK-UDP refinement (method="udp"; "argmax"
    skips it), scaling to crop pixels ``loc / [W-1, H-1] * input_size`` with input_size = (W, H)
    of the crop, and with bbox_centers/bbox_scales (B, 2) the transform back to image pixels
    ``kp / input_size * scale + center - scale / 2``.
    """
    args = _prepare_decode_heatmaps(heatmaps, flip_heatmaps=flip_heatmaps, flip_indices=flip_indices,
                                    input_size=input_size, bbox_centers=bbox_centers,
                                    bbox_scales=bbox_scales, method=method,
                                    blur_kernel_size=blur_kernel_size)
    return dispatch.select("decode_heatmaps", backend, heatmaps.device, *args).fn(*args)


def _prepare_decode_heatmaps(heatmaps, *, flip_heatmaps=None, flip_indices=None, input_size=(192, 256),
                             bbox_centers=None, bbox_scales=None, method="udp", blur_kernel_size=11):
    flip_indices, input_size, centers, scales = _validate.decode_heatmaps_args(
        heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales, method,
        blur_kernel_size)
    return heatmaps, flip_heatmaps, flip_indices, input_size, centers, scales, method, blur_kernel_size


def udp_targets(keypoints, visible, *, heatmap_size=(48, 64), input_size=(192, 256), sigma=2.0,
                backend=None):
    """UDP Gaussian training targets, mmpose 1.x ``UDPHeatmap.encode``, batched.

    keypoints (B, K, 2) in crop pixels, visible (B, K); heatmap_size and input_size are (W, H).
    Returns heatmaps (B, K, H, W) float32 and weights (B, K) float32.
    """
    args = _prepare_udp_targets(keypoints, visible, heatmap_size=heatmap_size, input_size=input_size,
                                sigma=sigma)
    return dispatch.select("udp_targets", backend, keypoints.device, *args).fn(*args)


def _prepare_udp_targets(keypoints, visible, *, heatmap_size=(48, 64), input_size=(192, 256), sigma=2.0):
    return (keypoints, visible) + _validate.udp_targets_args(keypoints, visible, heatmap_size, input_size, sigma)


def masked_attention(q, k, v, key_mask=None, *, scale=None, backend=None) -> torch.Tensor:
    """Fused attention of Lq queries over Lk keys with a per-(query, key) mask (TAR-ViTPose's JTA;
    without a mask its GRA).

    q (B, H, Lq, D); k, v (B, H, Lk, D); any strides; Lq and Lk independent. key_mask: None, or
    True where query i may attend to key j (the opposite of nn.MultiheadAttention's attn_mask: pass
    ``~attn_mask``), bool of shape (Lq|1, Lk), (B|1, Lq|1, Lk), (B*H, Lq|1, Lk) or
    (B|1, H|1, Lq|1, Lk), or the same bit-packed as int32 words along Lk (``pack_key_mask``,
    ``heatmap_key_mask``). A query with no allowed key outputs zeros (zero gradients).
    scale: default D ** -0.5. Returns (B, H, Lq, D) in q's dtype.

    Equivalent PyTorch code (the spec: vitpose_kernels/reference/masked_attention.py)::

        logits = scale * q @ k.transpose(-1, -2)
        logits = logits.masked_fill(~key_mask, -inf)
        probs = softmax(logits, -1).nan_to_num(0.0)     # rows without keys: zeros
        return probs @ v

    backend: None picks the fastest backend that supports the inputs; "reference", "triton" or
    "cuda" forces one (NotImplementedError listing its reasons if it cannot serve the call).
    """
    args = _prepare_masked_attention(q, k, v, key_mask, scale=scale)
    return dispatch.select("masked_attention", backend, q.device, *args).fn(*args)


def _prepare_masked_attention(q, k, v, key_mask=None, *, scale=None):
    key_mask, scale = _validate.masked_attention_args(q, k, v, key_mask, scale)
    if key_mask is not None:
        if key_mask.dtype == torch.bool:
            key_mask = _pack_key_mask(key_mask)
        if key_mask.stride(-1) != 1:
            key_mask = key_mask.contiguous()
    return q, k, v, key_mask, scale


def pack_key_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool (..., Lk) -> int32 (..., ceil(Lk/32)), bit i of word w = mask[..., 32*w + i]; any
    shape masked_attention accepts, for reuse across calls (each layer of TAR's JTA)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() == 0:
        raise ValueError("mask must have a key dimension (its last), got a 0-D tensor")
    return _pack_key_mask(mask)


def heatmap_key_mask(heatmaps, grid, *, threshold=0.2, layout="official", packed=True, backend=None):
    """TAR-ViTPose's JTA key mask from the initial heatmaps of a clip, on the device.

    heatmaps (B, T, J, Hh, Wh) (the official (B*T, J, Hh, Wh) viewed per clip); grid (Hf, Wf) the
    feature grid. Each map is normalised (h - min) / (max - min + 1e-6), resized bilinearly to
    the grid (align_corners=False) and thresholded: a key is allowed unless its value is
    < threshold (0.2 in the paper). Returns masked_attention's key mask for the J joint queries over
    the T*Hf*Wf tokens of the clip (frame-major), shared by the heads: (B, 1, J, ceil(T*Hf*Wf/32))
    int32 words with packed=True, else (B, 1, J, T*Hf*Wf) bool. layout="official" reproduces the
    official forward's ``.view`` of the (T, J) masks as (J, T) (row j, chunk t <- frame, joint =
    divmod(j*T + t, J)), which is what its checkpoints were trained with; layout="paper": row j,
    chunk t <- frame t, joint j.

    Equivalent PyTorch code (the official generate_attn_mask; vitpose_kernels/reference)::

        h = (h - h.amin((2, 3), True)) / (h.amax((2, 3), True) - h.amin((2, 3), True) + 1e-6)
        allowed = ~(F.interpolate(h, size=grid, mode="bilinear") < threshold)  # (B*T, J, Hf, Wf)
        mask = allowed.view(B, J, T, Hf * Wf)   # official layout; paper: .view(B, T, J, -1).transpose(1, 2)
    """
    args = _prepare_heatmap_key_mask(heatmaps, grid, threshold=threshold, layout=layout, packed=packed)
    return dispatch.select("heatmap_key_mask", backend, heatmaps.device, *args).fn(*args)


def _prepare_heatmap_key_mask(heatmaps, grid, *, threshold=0.2, layout="official", packed=True):
    return (heatmaps,) + _validate.heatmap_key_mask_args(heatmaps, grid, threshold, layout, packed)


_PREPARE = {"window_attention": _prepare_window_attention, "simple_decoder": _prepare_simple_decoder,
            "decode_heatmaps": _prepare_decode_heatmaps, "udp_targets": _prepare_udp_targets,
            "masked_attention": _prepare_masked_attention, "heatmap_key_mask": _prepare_heatmap_key_mask}


def explain(op: str, *args, **kwargs) -> dict[str, list[str]]:
    """Why each backend would or would not serve this call: ``{backend: reasons}`` (empty: it can),
    in the order automatic dispatch tries them. Same arguments as the op, without ``backend``."""
    if op not in _PREPARE:
        raise ValueError(f"op must be one of {tuple(_PREPARE)}, got op={op!r}")
    prepared = _PREPARE[op](*args, **kwargs)
    first = prepared[0]
    order = dispatch.PRIORITY["cuda" if first.device.type == "cuda" else "cpu"]
    return {name: dispatch.reasons(op, name, *prepared) for name in order}
