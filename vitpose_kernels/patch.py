"""Swap ``window_attention`` into vision transformers people already use, in place.

``patch(model)`` walks the modules; every module whose exact class is a key of ``ADAPTERS`` gets
its class swapped for a generated subclass whose ``forward`` calls the op. Parameters, buffers,
``state_dict`` keys and ``isinstance`` checks are untouched (the subclass adds no state), so
``print``, saving and loading work as before; ``unpatch(model)`` puts the original class back.
Adding a model is one row in the table: a forward that gathers q, k, v from the module's own
layers and calls the op, plus a one-line description of the layout for the report.

Where the attention module only ever sees one window (ViTDet, SAM), the row patches the *layer*
instead, so that the op sees the whole grid and no window partition is materialized: the grid
is zero-padded to a multiple of the window exactly as the original does (the padded tokens are
attended to, unmasked, as in the original), the op runs on the padded grid, and the output is
cropped back.

``route_sdpa()`` is the catch-all for any other model: while active, calls of
``torch.nn.functional.scaled_dot_product_attention`` that are plain full self-attention go to the
op; everything else passes through untouched.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import dispatch
from .ops import window_attention

# ----------------------------------------------------------------------------- helpers


def _collecting_attentions() -> bool:
    """True while a transformers model was asked for ``output_attentions``: the op returns no
    attention weights, so patched modules fall back to their original forward for that call."""
    if torch.compiler.is_compiling():
        return False
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return False
    collected = _active_collector.get()
    return collected is not None and "attentions" in collected


def _config_grid(config) -> tuple[int, int] | None:
    """(Hg, Wg) of the model's nominal input, from image_size / patch_size; None if unknown."""
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if size is None or patch is None:
        return None
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    return size[0] // patch[0], size[1] // patch[1]


def _full_grid(n_grid: int, config) -> tuple[int, int]:
    # Full attention without relative position does not depend on the grid's shape, so when the
    # input is not the nominal size (interpolated position embeddings) a 1 x n row is exact.
    grid = _config_grid(config)
    return grid if grid is not None and grid[0] * grid[1] == n_grid else (1, n_grid)


def _resized_rel_pos(table: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """The (2*size - 1, D) table the original uses for a size-`size` axis: linearly interpolated
    when the stored table was made for another size (a global layer at a new resolution)."""
    if table is None or table.shape[0] == 2 * size - 1:
        return table
    resized = F.interpolate(table.t()[None], size=2 * size - 1, mode="linear")
    return resized[0].t()


def _padded_window_attention(x: torch.Tensor, qkv: nn.Linear, heads: int, window: int, scale: float,
                             rel_pos: tuple, backend: str | None) -> torch.Tensor:
    """ViTDet/SAM attention over a (B, Hg, Wg, C) grid, before the output projection.

    window > 0: zero-pad the grid at the bottom/right to a multiple of the window (the padded
    tokens are projected and attended like real ones, as in the original window_partition),
    attend within windows on the padded grid, crop. window == 0: global attention on the grid.
    """
    B, hg, wg, C = x.shape
    if window > 0:
        x = F.pad(x, (0, 0, 0, -wg % window, 0, -hg % window))
    ph, pw = x.shape[1], x.shape[2]
    q, k, v = qkv(x).reshape(B, ph * pw, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    cell = (window, window) if window > 0 else (ph, pw)
    out = window_attention(q, k, v, grid=(ph, pw), window=cell if window > 0 else None, scale=scale,
                           rel_pos_h=_resized_rel_pos(rel_pos[0], cell[0]),
                           rel_pos_w=_resized_rel_pos(rel_pos[1], cell[1]), backend=backend)
    out = out.transpose(1, 2).reshape(B, ph, pw, -1)
    return out[:, :hg, :wg] if (ph, pw) != (hg, wg) else out


def _call_original(module: nn.Module, *args, **kwargs):
    return type(module)._vk_original.forward(module, *args, **kwargs)


# ----------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class Adapter:
    """One row of the table: how a module class maps onto window_attention."""

    forward: Callable  # replaces the class's forward; self._vk_backend is the backend to force
    describe: Callable[[nn.Module], str]  # the layout, one line, for the report and print()


def _full_attention_adapter(q: str, k: str, v: str, out: str | None, num_global: Callable) -> Adapter:
    """ViT-style self-attention modules: separate q/k/v projections, full attention over
    [global tokens, patch grid]; `num_global(config)` counts the leading class/register tokens."""

    def forward(self, hidden_states, *args, **kwargs):
        mask = args[0] if args else kwargs.get("attention_mask")
        dropout = getattr(self, "attention_dropout", getattr(self, "dropout_prob", 0.0))
        if mask is not None or (self.training and dropout > 0) or _collecting_attentions():
            return _call_original(self, hidden_states, *args, **kwargs)
        B, N, _ = hidden_states.shape
        heads = self.num_attention_heads
        qs, ks, vs = (getattr(self, name)(hidden_states).view(B, N, heads, -1).transpose(1, 2)
                      for name in (q, k, v))
        g = num_global(self.config)
        ctx = window_attention(qs, ks, vs, grid=_full_grid(N - g, self.config), num_global=g,
                               scale=self.scaling, backend=self._vk_backend)
        ctx = ctx.transpose(1, 2).reshape(B, N, -1)
        return (getattr(self, out)(ctx) if out else ctx), None

    def describe(module):
        g = num_global(module.config)
        return f"full attention, {g} global token(s) + patch grid"

    return Adapter(forward, describe)


def _vitdet_layer_forward(self, hidden_states, output_attentions=False):
    if output_attentions:
        return _call_original(self, hidden_states, output_attentions)
    attn = self.attention
    x = hidden_states.permute(0, 2, 3, 1)
    rel_pos = (attn.rel_pos_h, attn.rel_pos_w) if attn.use_relative_position_embeddings else (None, None)
    y = _padded_window_attention(self.norm1(x), attn.qkv, attn.num_heads, self.window_size, attn.scale,
                                 rel_pos, self._vk_backend)
    x = x + self.drop_path(attn.proj(y))
    x = x + self.drop_path(self.mlp(self.norm2(x)))
    x = x.permute(0, 3, 1, 2)
    if self.use_residual_block:
        x = self.residual(x)
    return (x,)


def _sam_layer_forward(self, hidden_states):
    attn = self.attn
    if (self.training and attn.dropout > 0) or _collecting_attentions():
        return _call_original(self, hidden_states)
    rel_pos = (attn.rel_pos_h, attn.rel_pos_w) if attn.use_rel_pos else (None, None)
    y = _padded_window_attention(self.layer_norm1(hidden_states), attn.qkv, attn.num_attention_heads,
                                 self.window_size, attn.scale, rel_pos, self._vk_backend)
    x = hidden_states + attn.proj(y)
    return x + self.mlp(self.layer_norm2(x))


def _describe_windowed(attn_name: str, rel_pos_flag: str):
    def describe(layer):
        rel = "decomposed rel-pos" if getattr(getattr(layer, attn_name), rel_pos_flag) else "no rel-pos"
        if layer.window_size > 0:
            w = layer.window_size
            return f"window {w}x{w} on the zero-padded grid (pad, attend, crop), {rel}"
        return f"global attention over the grid, {rel}"
    return describe


def _no_global(config) -> int:
    return 0


def _cls_token(config) -> int:
    return 1


def _cls_and_registers(config) -> int:
    return 1 + getattr(config, "num_register_tokens", 0)


_VIT_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
_M = "transformers.models."

# Exact class (module path + qualified name) -> adapter. Classes are named rather than imported
# so that this file imports without transformers, and a model missing from the installed
# version is simply never matched.
ADAPTERS: dict[str, Adapter] = {
    _M + "vit.modeling_vit.ViTAttention": _full_attention_adapter(*_VIT_NAMES, _cls_token),
    _M + "vitpose_backbone.modeling_vitpose_backbone.VitPoseBackboneSelfAttention":
        _full_attention_adapter("query", "key", "value", None, _no_global),
    _M + "dinov2.modeling_dinov2.Dinov2Attention": _full_attention_adapter(*_VIT_NAMES, _cls_and_registers),
    _M + "dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersAttention":
        _full_attention_adapter(*_VIT_NAMES, _cls_and_registers),
    _M + "vitdet.modeling_vitdet.VitDetLayer":
        Adapter(_vitdet_layer_forward, _describe_windowed("attention", "use_relative_position_embeddings")),
    _M + "sam.modeling_sam.SamVisionLayer":
        Adapter(_sam_layer_forward, _describe_windowed("attn", "use_rel_pos")),
}

_SWIN = ("shifted windows with a learned per-head relative position bias table: an additive "
         "per-head bias is outside the window_attention spec")
UNSUPPORTED: dict[str, str] = {
    _M + "swin.modeling_swin.SwinAttention": _SWIN,
    _M + "swinv2.modeling_swinv2.Swinv2Attention": _SWIN + " (and cosine attention with a learned "
                                                            "logit scale)",
    _M + "swinv2.modeling_swinv2.Swinv2SelfAttention": _SWIN,
    _M + "sam.modeling_sam.SamAttention": "SAM's mask decoder attention: token<->image cross-attention "
                                          "(q and k/v differ in length) is outside the spec, and its "
                                          "self-attention spans a handful of prompt tokens",
}


def _class_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ----------------------------------------------------------------------------- patch / unpatch


@dataclass
class PatchReport:
    """What `patch` did: (module name, class, how) for each patched module, and
    (module name, class, why) for each attention-like module it left as it was."""

    backend: str | None
    patched: list[tuple[str, str, str]] = field(default_factory=list)
    untouched: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"vitpose_kernels.patch: {len(self.patched)} module(s) patched "
                 f"(backend={self.backend or 'auto'}), {len(self.untouched)} left untouched"]
        lines += [f"  patched    {name} ({cls}): {how}" for name, cls, how in self.patched]
        lines += [f"  untouched  {name} ({cls}): {why}" for name, cls, why in self.untouched]
        return "\n".join(lines)


_PATCHED_CLASSES: dict[tuple[type, str | None], type] = {}


def _new_patched(original: type, backend: str | None):
    """Unpickling a patched module: a new, empty instance of the patched class of `original`
    (made on the spot in a fresh process), whose state pickle then restores."""
    cls = _patched_class(original, ADAPTERS[_class_key(original)], backend)
    return cls.__new__(cls)


def _reduce_patched(self, protocol):
    # The generated class has the original's name (so that printing and isinstance read as before),
    # which pickle would resolve to the original class and refuse ("not the same object"). Pickle
    # it as "the patched class of <original>" instead: torch.save / pickle.dumps / deepcopy of a
    # patched model work, and the copy is patched the same way.
    rv = object.__reduce_ex__(self, protocol)
    return (_new_patched, (type(self)._vk_original, type(self)._vk_backend)) + tuple(rv[2:])


def _patched_class(cls: type, adapter: Adapter, backend: str | None) -> type:
    """A subclass of `cls` with the adapter's forward; cached so that isinstance and
    torch.compile see one class per (original class, backend)."""
    key = (cls, backend)
    if key not in _PATCHED_CLASSES:
        def extra_repr(self):
            base = cls.extra_repr(self)
            tag = (f"vitpose_kernels.window_attention[backend={self._vk_backend or 'auto'}]: "
                   f"{adapter.describe(self)}")
            return f"{base}, {tag}" if base else tag

        _PATCHED_CLASSES[key] = type(cls.__name__, (cls,), {
            "forward": adapter.forward, "extra_repr": extra_repr, "_vk_original": cls,
            "_vk_backend": backend, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__reduce_ex__": _reduce_patched,
        })
    return _PATCHED_CLASSES[key]


def _is_attention_like(cls: type) -> bool:
    return cls.__name__.endswith("Attention")


def patch(model: nn.Module, *, attention: bool = True, backend: str | None = None) -> PatchReport:
    """Swap window_attention into `model` in place; returns a `PatchReport`.

    attention=False leaves attention alone (the report then lists nothing patched). backend is
    passed to every op call (None: the fastest that supports each call). Patching a patched model
    re-patches it with the new backend. Modules that fall outside the op (Swin's bias table,
    cross-attention, unknown attention classes) are left as they are and listed with the reason.
    """
    if backend is not None and backend not in dispatch.BACKENDS:
        raise ValueError(f"backend must be one of {dispatch.BACKENDS} or None, got backend={backend!r}")
    dispatch.backends()  # probe the machine now: importing backends inside torch.compile cannot trace
    unpatch(model)
    report = PatchReport(backend)
    if not attention:
        return report
    handled: list[str] = []  # patched or reported modules: their ancestors and descendants are not reported

    def related(name: str) -> bool:
        a = name + "."
        return any(h == name or not h or not name or a.startswith(h + ".") or h.startswith(a)
                   for h in handled)

    modules = list(model.named_modules())
    for name, module in modules:  # first the patches, so that reports can skip their relatives
        cls = type(module)
        adapter = ADAPTERS.get(_class_key(cls))
        if adapter is not None:
            module.__class__ = _patched_class(cls, adapter, backend)
            report.patched.append((name, cls.__name__, adapter.describe(module)))
            handled.append(name)
    for name, module in modules:
        cls = type(module)
        why = UNSUPPORTED.get(_class_key(cls))
        if why is None and _is_attention_like(cls) and not hasattr(cls, "_vk_original"):
            why = "no adapter for this attention class (try vitpose_kernels.route_sdpa())"
        if why is not None and not related(name):
            report.untouched.append((name, cls.__name__, why))
            handled.append(name)
    return report


def unpatch(model: nn.Module) -> list[str]:
    """Put the original class back on every patched module; returns their names."""
    restored = []
    for name, module in model.named_modules():
        original = type(module).__dict__.get("_vk_original")
        if original is not None:
            module.__class__ = original
            restored.append(name)
    return restored


# ----------------------------------------------------------------------------- route_sdpa

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@dataclass
class SdpaRoute:
    """Counts of what `route_sdpa` did while active; `passed` maps a reason to a count."""

    backend: str | None
    routed: int = 0
    passed: dict[str, int] = field(default_factory=dict)


def _not_routable(a: dict) -> str | None:
    """Why one scaled_dot_product_attention call is not plain full self-attention."""
    extra = set(a) - set(_SDPA_ARGS)
    if extra:
        return f"unknown arguments {sorted(extra)}"
    q, k, v = a.get("query"), a.get("key"), a.get("value")
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return "q, k, v are not all tensors"
    if q.dim() != 4 or not (q.shape == k.shape == v.shape):
        return "not (B, H, N, D) with q, k, v of one shape"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return "dtypes other than one of float16/bfloat16/float32"
    if a.get("attn_mask") is not None:
        return "attn_mask"
    if a.get("dropout_p", 0.0) != 0.0:
        return "dropout_p > 0"
    if a.get("is_causal", False):
        return "is_causal"
    if a.get("enable_gqa", False):
        return "enable_gqa"
    if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[2] == 0:
        return "empty tensor"
    return None


@contextlib.contextmanager
def route_sdpa(backend: str | None = None):
    """While active, ``torch.nn.functional.scaled_dot_product_attention(q, k, v)`` calls with
    (B, H, N, D) tensors of one shape, no mask, no dropout, not causal, default or given scale, run
    as ``window_attention(q, k, v, grid=(1, N), scale=scale, backend=backend)`` (full attention);
    any other call goes to the original function. Yields an `SdpaRoute` with counts.

    It replaces the attribute on the torch.nn.functional module, so code that imported the
    function by name before entering is not routed; not thread-safe (one global attribute).
    """
    if backend is not None and backend not in dispatch.BACKENDS:
        raise ValueError(f"backend must be one of {dispatch.BACKENDS} or None, got backend={backend!r}")
    original = F.scaled_dot_product_attention
    stats = SdpaRoute(backend)

    def routed(*args, **kwargs):
        bound = dict(zip(_SDPA_ARGS, args), **kwargs)
        why = _not_routable(bound) if len(args) <= len(_SDPA_ARGS) else "extra positional arguments"
        if why is not None:
            stats.passed[why] = stats.passed.get(why, 0) + 1
            return original(*args, **kwargs)
        stats.routed += 1
        q = bound["query"]
        return window_attention(q, bound["key"], bound["value"], grid=(1, q.shape[2]),
                                scale=bound.get("scale"), backend=backend)

    routed.__wrapped__ = original
    F.scaled_dot_product_attention = routed
    try:
        yield stats
    finally:
        F.scaled_dot_product_attention = original
