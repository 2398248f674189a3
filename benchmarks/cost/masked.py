"""masked_attention cases of the cost model: TAR-ViTPose's JTA (joint queries over a clip's tokens,
with the heatmap mask) and GRA (a frame's tokens over the joint tokens, no mask).

The mask is data, so the useful work comes from the mask itself: the op is given one clip's
heatmap mask (Gaussian peaks, sigma 3 as TAR-ViTPose's targets, wandering over the frames)
repeated over the batch, so that every (batch, head) program column does the same work and a count
at a reduced batch scales exactly to the full one.

Useful FLOPs: 4*D per allowed (query, key) pair forward, 14*D forward+backward (as
benchmarks/cost/geometry.py). Floor bytes: forward reads q, the k and v rows that some query may
attend to, the bit-packed mask, and writes out; forward+backward also reads dout, writes dq and
every row of dk and dv (zeros included), writes and reads the fp32 logsumexp.
"""
from __future__ import annotations

import dataclasses
import functools

import torch


@dataclasses.dataclass(frozen=True)
class MaskedGeometry:
    B: int
    H: int
    D: int
    kind: str  # "jta" or "gra"
    joints: int = 17
    frames: int = 5
    grid: tuple = (16, 12)
    heatmap: tuple = (64, 48)
    itemsize: int = 2

    @property
    def lq(self) -> int:
        return self.joints if self.kind == "jta" else self.grid[0] * self.grid[1]

    @property
    def lk(self) -> int:
        return self.frames * self.grid[0] * self.grid[1] if self.kind == "jta" else self.joints


@functools.lru_cache(maxsize=None)
def clip_mask(g: MaskedGeometry) -> torch.Tensor | None:
    """One clip's JTA mask (Lq, Lk) bool from heatmap_key_mask (official layout), or None (GRA)."""
    if g.kind != "jta":
        return None
    import vitpose_kernels as vk

    gen = torch.Generator().manual_seed(0)
    T, J, (Hh, Wh) = g.frames, g.joints, g.heatmap
    centre = torch.rand(1, J, 2, generator=gen) * torch.tensor([Wh - 1.0, Hh - 1.0])
    centre = centre + torch.randn(T, J, 2, generator=gen).cumsum(0) * 1.5
    ys, xs = torch.arange(Hh).float(), torch.arange(Wh).float()
    d2 = (xs - centre[..., 0, None, None]) ** 2 + (ys[:, None] - centre[..., 1, None, None]) ** 2
    maps = torch.exp(-d2 / 18.0) + 0.02 * torch.rand(T, J, Hh, Wh, generator=gen)
    return vk.heatmap_key_mask(maps[None], g.grid, packed=False, backend="reference")[0, 0]


def allowed_pairs(g: MaskedGeometry) -> int:
    """Allowed (query, key) pairs of one (batch, head)."""
    m = clip_mask(g)
    return g.lq * g.lk if m is None else int(m.sum())


def keys_seen(g: MaskedGeometry) -> int:
    """Keys of one (batch, head) that at least one query may attend to."""
    m = clip_mask(g)
    return g.lk if m is None else int(m.any(0).sum())


def useful_flops(g: MaskedGeometry, direction: str) -> int:
    pairs = allowed_pairs(g) * g.B * g.H
    return {"fwd": 4, "fwd+bwd": 14}[direction] * g.D * pairs


def tensor_bytes(g: MaskedGeometry) -> int:
    """q, k, v, out and their gradients together."""
    return 4 * g.B * g.H * (g.lq + g.lk) * g.D * g.itemsize


def floor_bytes(g: MaskedGeometry, direction: str) -> int:
    row = g.B * g.H * g.D * g.itemsize
    mask = 0 if clip_mask(g) is None else g.B * g.lq * -(-g.lk // 32) * 4
    fwd = 2 * g.lq * row + 2 * keys_seen(g) * row + mask
    if direction == "fwd":
        return fwd
    return fwd + 2 * g.lq * row + 2 * g.lk * row + 2 * 4 * g.B * g.H * g.lq


def inputs(g: MaskedGeometry, B: int, H: int, dtype, grad: bool, dry: bool):
    """q, k, v as contiguous (B, H, L, D) leaves (what the op itself costs: a caller whose
    projections have another layout adds its own gradient copies), the mask repeated over the batch
    as (B, 1, Lq, W) words, dout."""
    import vitpose_kernels as vk

    make = torch.zeros if dry else torch.randn
    torch.manual_seed(0)
    q, k, v = (make(B, H, n, g.D, dtype=dtype).requires_grad_(grad) for n in (g.lq, g.lk, g.lk))
    m = clip_mask(g)
    words = None if m is None else vk.pack_key_mask(m).expand(B, 1, -1, -1)
    dout = make(B, H, g.lq, g.D, dtype=dtype)
    return (q, k, v), (q, k, v), words, dout
