"""The work an attention call cannot avoid, from its geometry alone: useful FLOPs and floor bytes.

Useful FLOPs count only allowed (query, key) pairs (the spec, vitpose_kernels.reference): a grid
query sees the real tokens of its (shifted, possibly partial) cell, the P pooled tile means and
the G global tokens; a global query sees all N real tokens (not the pooled ones). Per pair and
head dim: forward 2 matmuls (QK^T, PV) = 4*D FLOPs; backward 5 (FlashAttention-2: QK^T
recomputed, dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q) = 10*D. Decomposed relative
position adds, per grid query, wh + ww dot products of length D (the distinct offsets it
needs), forward once and backward twice (its dq term and d rel_pos).

Floor bytes: forward reads q, k, v once and writes out once; forward+backward also reads dout,
writes dq, dk, dv, and writes then reads the fp32 log-sum-exp (B*H*N floats); rel_pos tables
read (and their gradients written) once.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Geometry:
    B: int
    H: int
    D: int
    grid: tuple
    window: tuple | None = None
    shift: tuple = (0, 0)
    pool: bool = False
    num_global: int = 0
    rel_pos: bool = False
    itemsize: int = 2

    @property
    def N(self) -> int:
        return self.num_global + self.grid[0] * self.grid[1]

    @property
    def win(self) -> tuple:
        return tuple(self.window) if self.window is not None else tuple(self.grid)

    @property
    def num_pooled(self) -> int:
        if not self.pool:
            return 0
        (hg, wg), (wh, ww) = self.grid, self.win
        return math.ceil(hg / wh) * math.ceil(wg / ww)


def cell_sizes(size: int, window: int, shift: int) -> list[int]:
    """Real tokens per cell along one axis: boundaries at shift + i*window (the spec's cells)."""
    before = (window - shift) % window
    out, start = [], -before
    while start < size:
        out.append(min(start + window, size) - max(start, 0))
        start += window
    return out


def allowed_pairs(g: Geometry) -> int:
    """(query, key) pairs of one (batch, head) that the spec lets attend."""
    (hg, wg), (wh, ww) = g.grid, g.win
    sh, sw = g.shift if g.window is not None else (0, 0)
    rows, cols = cell_sizes(hg, wh, sh), cell_sizes(wg, ww, sw)
    in_cells = sum(r * r for r in rows) * sum(c * c for c in cols)
    n_grid = hg * wg
    return in_cells + n_grid * (g.num_pooled + g.num_global) + g.num_global * g.N


def useful_flops(g: Geometry, direction: str) -> int:
    pairs = allowed_pairs(g) * g.B * g.H
    rel = 2 * g.D * sum(g.win) * g.grid[0] * g.grid[1] * g.B * g.H if g.rel_pos else 0
    if direction == "fwd":
        return 4 * g.D * pairs + rel
    if direction == "fwd+bwd":
        return 14 * g.D * pairs + 3 * rel
    raise ValueError(f"direction must be 'fwd' or 'fwd+bwd', got {direction!r}")


def tensor_bytes(g: Geometry) -> int:
    """One of q, k, v, out, dout, dq, dk, dv."""
    return g.B * g.H * g.N * g.D * g.itemsize


def floor_bytes(g: Geometry, direction: str) -> int:
    one = tensor_bytes(g)
    rel = 2 * (2 * g.win[0] - 1 + 2 * g.win[1] - 1) * g.D * g.itemsize if g.rel_pos else 0
    if direction == "fwd":
        return 4 * one + rel // 2
    if direction == "fwd+bwd":
        return 8 * one + 2 * 4 * g.B * g.H * g.N + rel
    raise ValueError(f"direction must be 'fwd' or 'fwd+bwd', got {direction!r}")
