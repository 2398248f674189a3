"""What Triton kernels execute, counted in the interpreter (TRITON_INTERPRET=1).

Every executed `tl.dot` adds 2*M*N*K FLOPs (times any batch dimension); every `tl.load` /
`tl.store` (also atomics and tensor-descriptor loads, which the interpreter lowers to masked
loads/stores) adds the bytes of its active lanes, and the bytes of its masked-off lanes
separately. Counts are kept per launch (kernel name, grid, programs) so that a run at reduced
batch and heads can be scaled launch by launch to the target.

Besides the executed bytes (every active lane of every load: what the kernel asks the memory
system for, an upper bound of DRAM traffic), each launch keeps the number of distinct 32-byte
sectors it touched, loads and stores apart: a lower bound of DRAM traffic (perfect reuse in
L2 within one launch).

`dry=True` records each launch (grid, argument types and values, constexprs, launch options)
without running its programs: a run at the full target size then gives the exact grids and the
specialization the GPU would compile, while the kernels cost nothing.

The hooks wrap methods of triton.runtime.interpreter (triton 3.x); `TritonCounter()` raises
RuntimeError naming what is missing when a Triton version no longer has them, instead of
silently counting nothing.
"""
from __future__ import annotations

import inspect
import os
import threading

import numpy as np

from .launches import SECTOR, Counts, Launch

# (class attribute, parameter names it must take): checked before patching.
_HOOKS = {
    "InterpreterBuilder.create_dot": ("a", "b", "d"),
    "InterpreterBuilder.create_masked_load": ("ptrs", "mask", "other"),
    "InterpreterBuilder.create_masked_store": ("ptrs", "value", "mask"),
    "InterpreterBuilder.create_atomic_rmw": ("ptr", "val", "mask"),
    "InterpreterBuilder.create_atomic_cas": ("ptr", "cmp", "val"),
    "InterpreterBuilder.create_dot_scaled": (),
    "InterpreterBuilder.set_grid_idx": ("x", "y", "z"),
    "GridExecutor.__call__": (),
}


def _describe(value):
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        return ("tensor", str(value.dtype).replace("torch.", ""), int(value.data_ptr()))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if value is None:
        return ("none",)
    return ("other", repr(value))


def _resolve(interp, dotted: str):
    cls_name, attr = dotted.split(".")
    cls = getattr(interp, cls_name, None)
    if cls is None or not hasattr(cls, attr):
        raise RuntimeError(f"cost model: triton.runtime.interpreter has no {dotted}; this Triton version "
                           "is not supported by benchmarks/cost/triton_counter.py (written for triton 3.x)")
    return cls, attr


def check_hooks() -> None:
    """Raise RuntimeError if the interpreter internals the counter wraps are not there."""
    import triton.runtime.interpreter as interp

    for dotted, params in _HOOKS.items():
        cls, attr = _resolve(interp, dotted)
        names = inspect.signature(getattr(cls, attr)).parameters
        missing = [p for p in params if p not in names]
        if missing:
            raise RuntimeError(f"cost model: {dotted} no longer takes {missing} (has {list(names)}); "
                               "update benchmarks/cost/triton_counter.py for this Triton version")
    if not hasattr(interp, "interpreter_builder"):
        raise RuntimeError("cost model: triton.runtime.interpreter.interpreter_builder is missing")


def _elt_bytes(ptrs) -> int:
    return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)


class TritonCounter:
    """Context manager: counts every kernel launched through the Triton interpreter inside it.

    `launches` lists them in order. With dry=True the programs are not run (see module doc)."""

    def __init__(self, dry: bool = False):
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("cost model: TRITON_INTERPRET=1 must be set before triton kernels are defined "
                               "(the counter instruments the interpreter)")
        check_hooks()
        self.dry = dry
        self.launches: list[Launch] = []
        self._cur: Counts | None = None
        self._sectors: dict[str, list] = {"load": [], "store": []}
        self._in_launch = threading.local()
        self._saved = []

    # ---------------------------------------------------------------- state
    def in_launch(self) -> bool:
        """True while the interpreter runs a kernel (its own tensor copies are not the op's work)."""
        return getattr(self._in_launch, "v", False)

    # Global buffers need no registration here (the interpreter sees every pointer).
    def watch(self, *tensors) -> None:
        pass

    def on_alloc(self, ptr: int, nbytes: int) -> None:
        pass

    def on_free(self, ptr: int) -> None:
        pass

    # ---------------------------------------------------------------- counting
    def _lanes(self, kind: str, ptrs, mask) -> None:
        c = self._cur
        if c is None:
            return
        p = np.asarray(ptrs.data)
        m = np.broadcast_to(np.asarray(mask.data, dtype=bool), p.shape) if mask is not None else np.ones(p.shape, bool)
        elt = _elt_bytes(ptrs)
        active = int(np.count_nonzero(m))
        if kind == "load":
            c.loads += 1
            c.load_bytes += active * elt
            c.load_masked_bytes += (p.size - active) * elt
        else:
            c.stores += 1
            c.store_bytes += active * elt
            c.store_masked_bytes += (p.size - active) * elt
        if active:
            addr = p[m].astype(np.uint64)
            first, last = addr // SECTOR, (addr + np.uint64(elt - 1)) // SECTOR
            secs = self._sectors[kind]
            secs.append(first)
            if elt > 1:
                secs.append(last)
            if sum(a.size for a in secs) > 1 << 22:  # keep memory bounded on long launches
                self._sectors[kind] = [np.unique(np.concatenate(secs))]

    def _close_sectors(self) -> None:
        c = self._cur
        for kind in ("load", "store"):
            secs = self._sectors[kind]
            n = int(np.unique(np.concatenate(secs)).size) if secs else 0
            setattr(c, f"{kind}_sector_bytes", getattr(c, f"{kind}_sector_bytes") + n * SECTOR)
            self._sectors[kind] = []

    # ---------------------------------------------------------------- patching
    def __enter__(self):
        import triton.runtime.interpreter as interp

        counter = self
        B, GE = interp.InterpreterBuilder, interp.GridExecutor
        orig = {name: getattr(B, name) for name in ("create_dot", "create_masked_load", "create_masked_store",
                                                    "create_atomic_rmw", "create_atomic_cas", "create_dot_scaled",
                                                    "set_grid_idx")}
        orig_call = GE.__call__

        def create_dot(self, a, b, d, *args, **kwargs):
            out = orig["create_dot"](self, a, b, d, *args, **kwargs)
            c = counter._cur
            if c is not None:
                sa, sb = np.shape(a.data), np.shape(b.data)
                if len(sa) < 2 or len(sb) < 2 or sa[-1] != sb[-2]:
                    raise RuntimeError(f"cost model: unexpected tl.dot operand shapes {sa} x {sb}")
                batch = int(np.prod(sa[:-2])) if len(sa) > 2 else 1
                c.dots += 1
                c.flops += 2 * batch * sa[-2] * sb[-1] * sa[-1]
            return out

        def create_masked_load(self, ptrs, mask, other, *args, **kwargs):
            counter._lanes("load", ptrs, mask)
            return orig["create_masked_load"](self, ptrs, mask, other, *args, **kwargs)

        def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
            counter._lanes("store", ptrs, mask)
            return orig["create_masked_store"](self, ptrs, value, mask, *args, **kwargs)

        def create_atomic_rmw(self, rmwOp, ptr, val, mask, *args, **kwargs):
            c = counter._cur
            if c is not None:
                p = np.asarray(ptr.data)
                m = np.broadcast_to(np.asarray(mask.data, dtype=bool), p.shape)
                c.atomic_bytes += int(np.count_nonzero(m)) * _elt_bytes(ptr)
            return orig["create_atomic_rmw"](self, rmwOp, ptr, val, mask, *args, **kwargs)

        def create_atomic_cas(self, ptr, cmp, val, *args, **kwargs):
            c = counter._cur
            if c is not None:
                c.atomic_bytes += int(np.asarray(ptr.data).size) * _elt_bytes(ptr)
            return orig["create_atomic_cas"](self, ptr, cmp, val, *args, **kwargs)

        def create_dot_scaled(self, *args, **kwargs):
            raise NotImplementedError("cost model: tl.dot_scaled is not counted by benchmarks/cost/triton_counter.py")

        def set_grid_idx(self, x, y, z):
            if counter._cur is not None:
                counter._cur.programs += 1
            return orig["set_grid_idx"](self, x, y, z)

        def call(self, *args_dev, **kwargs):
            names = inspect.getfullargspec(self.fn)
            known = set(names.args) | set(names.kwonlyargs)
            options = {k: v for k, v in kwargs.items() if k not in known}
            bound = inspect.getcallargs(self.fn, *args_dev, **{k: v for k, v in kwargs.items() if k in known})
            grid = self.grid(bound) if callable(self.grid) else self.grid
            grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
            launch = Launch(kernel=self.fn.__name__, module=getattr(self.fn, "__module__", "?"), grid=grid,
                            counts=Counts(),
                            args={k: _describe(v) for k, v in bound.items() if k not in self.constexprs},
                            constexprs={k: bound[k] for k in self.constexprs}, options=options)
            counter.launches.append(launch)
            if counter.dry:
                launch.counts.programs = launch.programs
                return None
            counter._cur = launch.counts
            counter._in_launch.v = True
            try:
                return orig_call(self, *args_dev, **kwargs)
            finally:
                counter._close_sectors()
                counter._cur = None
                counter._in_launch.v = False

        patches = [(B, "create_dot", create_dot), (B, "create_masked_load", create_masked_load),
                   (B, "create_masked_store", create_masked_store), (B, "create_atomic_rmw", create_atomic_rmw),
                   (B, "create_atomic_cas", create_atomic_cas), (B, "create_dot_scaled", create_dot_scaled),
                   (B, "set_grid_idx", set_grid_idx)]
        patches.append((GE, "__call__", call))
        for cls, name, fn in patches:
            self._saved.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, fn)
        return self

    def __exit__(self, *exc):
        for cls, name, fn in reversed(self._saved):
            setattr(cls, name, fn)
        self._saved.clear()
        return False

