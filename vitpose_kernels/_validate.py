"""Input checks shared by every backend, run once in the front door.

Each check raises ValueError/TypeError naming the argument, what was seen and what was expected,
so that no kernel ever sees an input it would crash on or silently mis-read.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# float64 is accepted for gradcheck; the Triton and CUDA backends give it a reason and decline.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_float(name: str, t, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({names}), got {name}.dtype={t.dtype}")


def check_rank(name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got {name}.shape={tuple(t.shape)}")


def pair(name: str, value, *, minimum: int) -> tuple[int, int]:
    """Normalize an int or a pair of ints, each >= minimum."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
        ok = all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if a < minimum or b < minimum:
        raise ValueError(f"{name} must be >= {minimum} in both dimensions, got {name}={value!r}")
    return int(a), int(b)


def check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); expected finite values")


def check_same_device(**tensors) -> None:
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devs}")


@dataclass(frozen=True)
class AttentionSpec:
    """A validated window_attention call: every backend receives one of these."""

    grid: tuple[int, int]
    window: tuple[int, int]  # the whole grid when the caller said window=None
    shift: tuple[int, int]
    pool: bool
    num_global: int
    scale: float
    full: bool  # window=None: one cell covering the grid

    @property
    def num_pooled(self) -> int:
        (hg, wg), (wh, ww) = self.grid, self.window
        return -(-hg // wh) * -(-wg // ww) if self.pool else 0


def window_attention_spec(q, k, v, *, grid, window, shift, pool, num_global, rel_pos_h, rel_pos_w,
                          scale) -> AttentionSpec:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
        check_rank(name, t, 4, "(B, H, N, D)")
    if not (q.shape == k.shape == v.shape):
        raise ValueError("q, k and v must have the same shape (B, H, N, D), got "
                         f"q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}, v.shape={tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(q=q, k=k, v=v, rel_pos_h=rel_pos_h, rel_pos_w=rel_pos_w)
    B, H, N, D = q.shape
    if B == 0 or H == 0:
        raise ValueError(f"q is an empty batch, q.shape={tuple(q.shape)}; expected B >= 1 and H >= 1")
    grid = pair("grid", grid, minimum=1)
    if not isinstance(num_global, int) or isinstance(num_global, bool) or num_global < 0:
        raise ValueError(f"num_global must be an int >= 0, got num_global={num_global!r}")
    if N != num_global + grid[0] * grid[1]:
        raise ValueError(f"q.shape[2] (N) must equal num_global + Hg*Wg = {num_global} + "
                         f"{grid[0]}*{grid[1]} = {num_global + grid[0] * grid[1]}, got N={N}")
    if D == 0:
        raise ValueError(f"head dim must be >= 1, got q.shape={tuple(q.shape)}")
    full = window is None
    window = grid if full else pair("window", window, minimum=1)
    shift = pair("shift", shift, minimum=0)
    if shift[0] >= window[0] or shift[1] >= window[1]:
        raise ValueError(f"shift must satisfy 0 <= shift < window in both dimensions, got "
                         f"shift={shift}, window={window}")
    if not isinstance(pool, bool):
        raise TypeError(f"pool must be a bool, got {pool!r}")
    for name, t, size in (("rel_pos_h", rel_pos_h, window[0]), ("rel_pos_w", rel_pos_w, window[1])):
        if t is None:
            continue
        check_float(name, t)
        if tuple(t.shape) != (2 * size - 1, D):
            what = "grid" if full else "window"
            raise ValueError(f"{name} must have shape (2*{size}-1, D) = ({2 * size - 1}, {D}) for this "
                             f"{what}, got {name}.shape={tuple(t.shape)}")
    if scale is None:
        scale = D ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {scale!r}")
    return AttentionSpec(grid, window, shift, pool, num_global, float(scale), full)


def simple_decoder_args(x, weight, bias, scale_factor) -> int:
    check_float("x", x)
    check_rank("x", x, 4, "(B, C, h, w)")
    check_float("weight", weight)
    check_rank("weight", weight, 4, "(K, C, k, k)")
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch, x.shape={tuple(x.shape)}; expected B >= 1")
    K, C, kh, kw = weight.shape
    if kh != kw or kh not in (1, 3):
        raise ValueError(f"weight must be (K, C, k, k) with k in (1, 3), got weight.shape={tuple(weight.shape)}")
    if x.shape[1] != C:
        raise ValueError(f"x.shape[1] (C={x.shape[1]}) must match weight.shape[1] (C={C})")
    if bias is not None:
        check_float("bias", bias)
        if tuple(bias.shape) != (K,):
            raise ValueError(f"bias must have shape (K,) = ({K},), got bias.shape={tuple(bias.shape)}")
    check_same_device(x=x, weight=weight, bias=bias)
    if not isinstance(scale_factor, int) or isinstance(scale_factor, bool) or scale_factor < 1:
        raise ValueError(f"scale_factor must be an int >= 1, got scale_factor={scale_factor!r}")
    return scale_factor


def size_pair(name: str, value) -> tuple[int, int]:
    return pair(name, value, minimum=2)


def decode_heatmaps_args(heatmaps, flip_heatmaps, flip_indices, input_size, bbox_centers, bbox_scales,
                         method, blur_kernel_size):
    check_float("heatmaps", heatmaps)
    check_rank("heatmaps", heatmaps, 4, "(B, K, H, W)")
    B, K, Hh, Wh = heatmaps.shape
    if Hh < 2 or Wh < 2:
        raise ValueError(f"heatmaps must be at least 2x2, got heatmaps.shape={tuple(heatmaps.shape)}")
    check_finite("heatmaps", heatmaps)
    if flip_heatmaps is not None:
        check_float("flip_heatmaps", flip_heatmaps)
        if flip_heatmaps.shape != heatmaps.shape:
            raise ValueError(f"flip_heatmaps must match heatmaps.shape={tuple(heatmaps.shape)}, "
                             f"got flip_heatmaps.shape={tuple(flip_heatmaps.shape)}")
        check_finite("flip_heatmaps", flip_heatmaps)
        if flip_indices is None:
            raise ValueError("flip_indices is required with flip_heatmaps (e.g. vitpose.COCO_FLIP_INDICES)")
        flip_indices = torch.as_tensor(flip_indices, dtype=torch.long, device=heatmaps.device)
        if flip_indices.shape != (K,) or bool(((flip_indices < 0) | (flip_indices >= K)).any()):
            raise ValueError(f"flip_indices must be a permutation of range(K={K}), got {flip_indices.tolist()}")
    elif flip_indices is not None:
        raise ValueError("flip_indices was given without flip_heatmaps")
    input_size = size_pair("input_size", tuple(input_size) if not isinstance(input_size, int) else input_size)
    if (bbox_centers is None) != (bbox_scales is None):
        raise ValueError("bbox_centers and bbox_scales must be given together")
    boxes = []
    for name, t in (("bbox_centers", bbox_centers), ("bbox_scales", bbox_scales)):
        if t is None:
            boxes.append(None)
            continue
        t = torch.as_tensor(t, device=heatmaps.device)
        check_float(name, t, (torch.float32, torch.float64, torch.float16, torch.bfloat16))
        if tuple(t.shape) != (B, 2):
            raise ValueError(f"{name} must have shape (B, 2) = ({B}, 2), got {name}.shape={tuple(t.shape)}")
        boxes.append(t.float())
    if method not in ("udp", "argmax"):
        raise ValueError(f"method must be 'udp' or 'argmax', got method={method!r}")
    if not isinstance(blur_kernel_size, int) or blur_kernel_size < 1 or blur_kernel_size % 2 == 0:
        raise ValueError(f"blur_kernel_size must be an odd int >= 1, got {blur_kernel_size!r}")
    return flip_indices, input_size, boxes[0], boxes[1]


def udp_targets_args(keypoints, visible, heatmap_size, input_size, sigma):
    check_float("keypoints", keypoints, (torch.float32, torch.float64, torch.float16, torch.bfloat16))
    check_rank("keypoints", keypoints, 3, "(B, K, 2)")
    if keypoints.shape[2] != 2:
        raise ValueError(f"keypoints must be (B, K, 2), got keypoints.shape={tuple(keypoints.shape)}")
    if not isinstance(visible, torch.Tensor):
        raise TypeError(f"visible must be a torch.Tensor, got {type(visible).__name__}")
    if tuple(visible.shape) != tuple(keypoints.shape[:2]):
        raise ValueError(f"visible must have shape (B, K) = {tuple(keypoints.shape[:2])}, "
                         f"got visible.shape={tuple(visible.shape)}")
    check_same_device(keypoints=keypoints, visible=visible)
    heatmap_size = size_pair("heatmap_size", heatmap_size)
    input_size = size_pair("input_size", input_size)
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number, got sigma={sigma!r}")
    return heatmap_size, input_size, float(sigma)


def masked_attention_args(q, k, v, key_mask, scale):
    """-> (key_mask as a 4-D (B|1, H|1, Lq|1, Lk) bool or (..., W) int32 view, scale)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
        check_rank(name, t, 4, "(B, H, L, D)")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(q=q, k=k, v=v)
    B, H, Lq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, H, Lk, D), got k.shape={tuple(k.shape)}, "
                         f"v.shape={tuple(v.shape)}")
    if k.shape[:2] != q.shape[:2] or k.shape[3] != D:
        raise ValueError(f"k must be (B, H, Lk, D) = ({B}, {H}, Lk, {D}) to match q.shape={tuple(q.shape)}, "
                         f"got k.shape={tuple(k.shape)}")
    Lk = k.shape[2]
    if min(B, H, Lq, Lk, D) == 0:
        raise ValueError(f"empty input: q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}; "
                         "expected B, H, Lq, Lk, D >= 1")
    if key_mask is not None:
        key_mask = key_mask_view(key_mask, B, H, Lq, Lk, q.device)
    if scale is None:
        scale = D ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {scale!r}")
    return key_mask, float(scale)


def key_mask_view(key_mask, B: int, H: int, Lq: int, Lk: int, device) -> torch.Tensor:
    """A bool (True = may attend) or bit-packed int32 key mask as a 4-D (B|1, H|1, Lq|1, last) view."""
    hint = ("key_mask must be a bool tensor (True = the query may attend to the key; for "
            "nn.MultiheadAttention's attn_mask, where True means masked, pass ~attn_mask) or an int32 "
            "bit-packed mask from vitpose_kernels.pack_key_mask")
    if not isinstance(key_mask, torch.Tensor):
        raise TypeError(f"{hint}, got {type(key_mask).__name__}")
    if key_mask.dtype not in (torch.bool, torch.int32):
        raise TypeError(f"{hint}, got key_mask.dtype={key_mask.dtype}")
    if key_mask.device != device:
        raise ValueError(f"key_mask must be on q's device {device}, got key_mask.device={key_mask.device}")
    packed = key_mask.dtype == torch.int32
    last = -(-Lk // 32) if packed else Lk
    what = f"ceil(Lk/32) = {last} words (Lk={Lk})" if packed else f"Lk = {Lk}"
    shape = tuple(key_mask.shape)
    forms = (f"(Lq|1, {last}), (B|1, Lq|1, {last}), (B*H, Lq|1, {last}) or (B|1, H|1, Lq|1, {last}) "
             f"with B={B}, H={H}, Lq={Lq}")
    if not 2 <= key_mask.dim() <= 4:
        raise ValueError(f"key_mask must be 2-, 3- or 4-D, one of {forms}; got key_mask.shape={shape}")
    if shape[-1] != last:
        raise ValueError(f"key_mask.shape[-1] must be {what}, got key_mask.shape={shape}")
    m = key_mask
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        n = shape[0]
        if n in (1, B):
            m = m[:, None]
        elif H > 1 and n == B * H:  # nn.MultiheadAttention: row b*H + h
            m = m.unflatten(0, (B, H))
        else:
            raise ValueError(f"a 3-D key_mask's first dim must be 1, B={B} or B*H={B * H}, got "
                             f"key_mask.shape={shape}")
    for i, (name, full) in enumerate((("B", B), ("H", H), ("Lq", Lq))):
        if m.shape[i] not in (1, full):
            raise ValueError(f"key_mask does not broadcast to (B, H, Lq, Lk) = ({B}, {H}, {Lq}, {Lk}): "
                             f"its {name} dim is {m.shape[i]} (key_mask.shape={shape}); accepted: {forms}")
    return m


def heatmap_key_mask_args(heatmaps, grid, threshold, layout, packed):
    check_float("heatmaps", heatmaps)
    check_rank("heatmaps", heatmaps, 5, "(B, T, J, Hh, Wh): a clip of T frames' J heatmaps")
    if min(heatmaps.shape) == 0:
        raise ValueError(f"heatmaps is empty, heatmaps.shape={tuple(heatmaps.shape)}")
    grid = pair("grid", grid, minimum=1)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold != threshold:
        raise TypeError(f"threshold must be a number, got threshold={threshold!r}")
    if layout not in ("official", "paper"):
        raise ValueError(f"layout must be 'official' or 'paper', got layout={layout!r}")
    if not isinstance(packed, bool):
        raise TypeError(f"packed must be a bool, got packed={packed!r}")
    return grid, float(threshold), layout, packed
