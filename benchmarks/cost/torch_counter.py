"""What the PyTorch ops around and inside an op execute: bytes, FLOPs and live memory.

A TorchDispatchMode that sees every aten op of a forward and backward, including the ones a
custom op's implementation runs (the mode re-enters for the custom op's CPU kernel, which
TorchDispatchMode alone would hide), and counts
  - bytes: each op reads the distinct elements of its tensor inputs and writes its fresh
    outputs and mutated arguments; views, allocations and metadata ops move nothing;
  - FLOPs: torch.utils.flop_counter's formulas (matmul, einsum/bmm, conv, SDPA);
  - live memory: every storage created inside is tracked until it is freed (its PyObject is
    preserved by PyTorch as long as the storage lives), giving the peak bytes above what
    existed before, i.e. what torch.cuda.max_memory_allocated shows on a GPU for the same
    step (minus the allocator's rounding).
Composite ops that arrive whole (below autograd, e.g. matmul inside a custom op) are decomposed
under the mode, so that what they run is counted. Ops that `skip()` says belong to a kernel
launch (the Triton interpreter's own copies) are not counted, their storages still are.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

# Ops that overwrite their first argument without reading it.
_WRITE_ONLY = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_"}
# Allocation and metadata ops: no memory traffic (fresh uninitialised storage or no data access).
_NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_", "resize_",
               "lift_fresh", "_local_scalar_dense", "is_same_size", "_has_compatible_shallow_copy_type",
               "record_stream"}


def footprint(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a (possibly expanded) tensor view covers."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


@dataclasses.dataclass
class OpCounts:
    calls: int = 0
    flops: int = 0
    read_bytes: int = 0
    write_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.read_bytes + self.write_bytes


def _storages(tree) -> set:
    return {t.untyped_storage().data_ptr() for t in tree_flatten(tree)[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"}


def _traffic(func, args, kwargs, out) -> tuple[int, int]:
    name = func._schema.name.split("::")[-1]
    if name in _NO_TRAFFIC:
        return 0, 0
    read = write = 0
    mutated = set()
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            val = kwargs.get(a.name) if a.kwarg_only or i >= len(args) else args[i]
            for t in tree_flatten(val)[0]:
                if isinstance(t, torch.Tensor):
                    mutated.add(id(t))
                    write += footprint(t)
                    if name not in _WRITE_ONLY and not a.is_out:
                        read += footprint(t)
    inputs = _storages((args, kwargs))
    fresh = [t for t in tree_flatten(out)[0]
             if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs]
    if not mutated and not fresh:
        return 0, 0  # a view (also the schema-less ones such as _unsafe_view)
    for t in tree_flatten((args, kwargs))[0]:
        if isinstance(t, torch.Tensor) and id(t) not in mutated:
            read += footprint(t)
    write += sum(footprint(t) for t in fresh)
    return read, write


class TorchCounter(TorchDispatchMode):
    """with TorchCounter() as tcount: ... -> tcount.ops {op name: OpCounts}, tcount.peak_bytes."""

    def __init__(self, skip: Callable[[], bool] = lambda: False, on_alloc: Callable | None = None,
                 on_free: Callable | None = None):
        super().__init__()
        self.skip = skip
        self.on_alloc, self.on_free = on_alloc, on_free
        self.ops: dict[str, OpCounts] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, int] = {}

    # ---------------------------------------------------------------- live memory
    def _free(self, key: int) -> None:
        nbytes = self._live.pop(key, 0)
        self.live_bytes -= nbytes
        if self.on_free is not None:
            self.on_free(key)

    def _track(self, out, inputs) -> None:
        """Starts tracking the storages an op created (not those of its inputs: views, or tensors
        that existed before the mode)."""
        seen = _storages(inputs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key in self._live or key in seen or st.nbytes() == 0:
                continue
            self._live[key] = st.nbytes()
            self.live_bytes += st.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(st, self._free, key)
            if self.on_alloc is not None:
                self.on_alloc(key, st.nbytes())

    # ---------------------------------------------------------------- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace not in ("aten", "prim", "prims"):
            # A custom op: run its CPU kernel with this mode active, so that the aten ops inside
            # (allocations, small reductions, clones) are seen too.
            with self:
                out = func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
            self._track(out, (args, kwargs))
            return out
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            # Below autograd (inside a custom op) composite ops such as matmul arrive whole: count
            # the ops they decompose into instead.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        self._track(out, (args, kwargs))
        if not self.skip():
            c = self.ops.setdefault(str(func.overloadpacket).replace("aten.", ""), OpCounts())
            c.calls += 1
            read, write = _traffic(func, args, kwargs, out)
            c.read_bytes += read
            c.write_bytes += write
            formula = flop_registry.get(func.overloadpacket)
            if formula is not None:
                c.flops += int(formula(*args, **kwargs, out_val=out))
        return out

    def totals(self) -> OpCounts:
        t = OpCounts()
        for c in self.ops.values():
            t.calls += c.calls
            t.flops += c.flops
            t.read_bytes += c.read_bytes
            t.write_bytes += c.write_bytes
        return t
