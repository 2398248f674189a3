"""One kernel launch and the work it executed, for every backend's counter (Triton interpreter,
CUDA emulator), and the scaling of a reduced-size run to the target size."""
from __future__ import annotations

import dataclasses

import numpy as np

SECTOR = 32  # bytes: the DRAM/L2 access granularity of NVIDIA GPUs
L2_BYTES = 50 * 2 ** 20  # H100 SXM and H200: 50 MB of L2 (the HBM model's assumption is checked against it)


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
    load_sector_bytes: int = 0  # distinct 32-byte sectors read in the launch, x 32
    store_sector_bytes: int = 0
    # The HBM model (benchmarks/README.md): per program (CTA), the distinct sectors it reads
    # before it has touched them itself, and the distinct sectors it writes; summed over programs.
    hbm_load_bytes: int = 0
    hbm_store_bytes: int = 0
    # The largest distinct footprint (sectors read or written, x 32) of one program: the data a
    # program could re-read from L2. A maximum, not a sum: never scaled.
    max_program_bytes: int = 0
    # The loads the model calls L2 hits (sectors) and their LRU reuse distances summed (distinct
    # sectors the program touched between the two accesses): what the L2 must hold per program.
    hit_sectors: int = 0
    hit_distance_sectors: int = 0
    max_reuse_bytes: int = 0  # a maximum, never scaled

    @property
    def bytes(self) -> int:
        return self.load_bytes + self.store_bytes + 2 * self.atomic_bytes

    @property
    def masked_bytes(self) -> int:
        return self.load_masked_bytes + self.store_masked_bytes

    @property
    def sector_bytes(self) -> int:
        return self.load_sector_bytes + self.store_sector_bytes

    @property
    def hbm_bytes(self) -> int:
        return self.hbm_load_bytes + self.hbm_store_bytes

    def add(self, other: "Counts", scale: float = 1.0) -> None:
        for f in dataclasses.fields(self):
            if f.name in ("max_program_bytes", "max_reuse_bytes"):
                setattr(self, f.name, max(getattr(self, f.name), getattr(other, f.name)))
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name) * scale)

    @property
    def mean_reuse_bytes(self) -> float | None:
        return self.hit_distance_sectors * SECTOR / self.hit_sectors if self.hit_sectors else None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(bytes=self.bytes, masked_bytes=self.masked_bytes, sector_bytes=self.sector_bytes,
                 hbm_bytes=self.hbm_bytes, mean_reuse_bytes=self.mean_reuse_bytes)
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


class ProgramTraffic:
    """The HBM model for one program (CTA), fed its memory instructions in program order.

    A sector (32 bytes) is read from HBM by the program's first access to it if that access is a
    load; a later load of it, or a load after the program wrote it, hits L2 (the model's
    assumption: one program's footprint, a few hundred KB, stays in the 50 MB L2 while the program
    runs; benchmarks/README.md). Every distinct sector the program writes is written back once."""

    LIMIT = 1 << 22  # sector entries kept before compacting (bounded memory on long programs)

    def __init__(self):
        self._events: list[tuple[np.ndarray, bool]] = []
        self._n = 0
        self._compacted = False

    def add(self, sectors: np.ndarray, is_store: bool) -> None:
        self._events.append((np.unique(sectors), is_store))
        self._n += self._events[-1][0].size
        if self._n > self.LIMIT:
            self._compact()

    def _first(self):
        secs = np.concatenate([e[0] for e in self._events])
        kinds = np.concatenate([np.full(e[0].size, e[1], dtype=bool) for e in self._events])
        uniq, first = np.unique(secs, return_index=True)  # each sector's first access
        return uniq, kinds[first], np.unique(secs[kinds])

    def _compact(self) -> None:
        uniq, first_store, stored = self._first()
        later = np.setdiff1d(stored, uniq[first_store], assume_unique=True)  # stored after a first load
        self._events = [(uniq[first_store], True), (uniq[~first_store], False), (later, True)]
        self._n = uniq.size + later.size
        self._compacted = True

    def totals(self) -> tuple[int, int, int]:
        """(sectors read from HBM, sectors written, distinct sectors touched)."""
        if not self._events:
            return 0, 0, 0
        uniq, first_store, stored = self._first()
        return int(np.count_nonzero(~first_store)), int(stored.size), int(uniq.size)

    def reuse(self) -> tuple[int, int, int] | None:
        """The loads the model calls L2 hits: (their sectors, the sum and the maximum of their LRU
        reuse distances in sectors), at instruction granularity: a hit's distance is the number of
        distinct sectors whose latest access lies strictly between its previous access and it.
        None once the program was compacted (its order is gone)."""
        if self._compacted or not self._events:
            return None if self._compacted else (0, 0, 0)
        _, ids = np.unique(np.concatenate([e[0] for e in self._events]), return_inverse=True)
        last = np.full(ids.max() + 1, -1, dtype=np.int64)  # instruction of each sector's latest access
        live = np.zeros(len(self._events), dtype=np.int64)  # sectors whose latest access is instruction i
        hits = total = worst = 0
        start = 0
        for i, (secs, is_store) in enumerate(self._events):
            cur = ids[start:start + secs.size]
            start += secs.size
            prev = last[cur]
            seen = prev >= 0
            if not is_store and seen.any():
                before = np.concatenate([[0], np.cumsum(live[:i])])  # before[x] = live[0:x].sum()
                dist = before[i] - before[prev[seen] + 1]
                hits += int(dist.size)
                total += int(dist.sum())
                worst = max(worst, int(dist.max()))
            np.subtract.at(live, prev[seen], 1)
            live[i] = cur.size
            last[cur] = i
        return hits, total, worst
