"""One kernel launch and the work it executed, for every backend's counter (Triton interpreter,
CUDA emulator), and the scaling of a reduced-size run to the target size."""
from __future__ import annotations

import dataclasses

import numpy as np

SECTOR = 32  # bytes: the DRAM/L2 access granularity of NVIDIA GPUs


@dataclasses.dataclass
class Counts:
    """Executed work of one launch (or a sum of launches)."""
    programs: int = 0
    dots: int = 0
    flops: int = 0
    loads: int = 0
    load_bytes: int = 0
    load_masked_bytes: int = 0
    stores: int = 0
    store_bytes: int = 0
    store_masked_bytes: int = 0
    atomic_bytes: int = 0  # read-modify-write: counted once here, not in loads/stores
    load_sector_bytes: int = 0  # distinct 32-byte sectors read, x 32
    store_sector_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.load_bytes + self.store_bytes + 2 * self.atomic_bytes

    @property
    def masked_bytes(self) -> int:
        return self.load_masked_bytes + self.store_masked_bytes

    @property
    def sector_bytes(self) -> int:
        return self.load_sector_bytes + self.store_sector_bytes

    def add(self, other: "Counts", scale: float = 1.0) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name) * scale)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(bytes=self.bytes, masked_bytes=self.masked_bytes, sector_bytes=self.sector_bytes)
        return d


@dataclasses.dataclass
class Launch:
    kernel: str
    module: str
    grid: tuple
    counts: Counts
    args: dict  # name -> ("tensor", dtype, data_ptr) | ("int", v) | ("float", v) | ("bool", v) | ("none",)
    constexprs: dict
    options: dict  # launch keywords that are not kernel arguments: num_warps, num_stages, ...

    @property
    def programs(self) -> int:
        return int(np.prod(self.grid))


def _compared(constexprs: dict) -> dict:
    # Numbers and flags decide tiling and masking; strings (precision modes such as the
    # interpreter's bf16 upcast) change how a dot is computed, not its shape.
    return {k: v for k, v in constexprs.items() if not isinstance(v, str)}


def scaled_launches(run: list[Launch], full: list[Launch]) -> list[tuple[Launch, float]]:
    """Pairs each launch of a reduced-size run with its factor to the full-size run: the ratio of
    program counts (kernels walk one (batch, head) per program column, so per-program work does
    not depend on batch and heads). Raises if the two runs did not launch the same kernels."""
    if [lnch.kernel for lnch in run] != [lnch.kernel for lnch in full]:
        raise RuntimeError("cost model: the reduced and full-size runs launched different kernels: "
                           f"{[lnch.kernel for lnch in run]} vs {[lnch.kernel for lnch in full]}")
    out = []
    for small, big in zip(run, full):
        if small.counts.programs != small.programs:
            raise RuntimeError(f"cost model: {small.kernel} ran {small.counts.programs} programs of a "
                               f"{small.grid} grid")
        a, b = _compared(small.constexprs), _compared(big.constexprs)
        if a != b:
            raise RuntimeError(f"cost model: {small.kernel} was launched with {a} in the counted run but {b} "
                               "at the full size: the counted work would not be the full-size kernel's")
        out.append((small, big.programs / small.programs))
    return out

