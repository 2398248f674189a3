"""``build_model(name, **overrides)``: an untrained model of any architecture this package implements.

Each model family registers its names here (``register_architecture``), so ``build_model`` and
``load_model(..., arch=...)`` know every architecture without importing them all up front.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``build_model(name, **overrides)`` call ``builder(**overrides)``."""
    key = name.lower()
    if key in _BUILDERS:
        raise ValueError(f"architecture {name!r} is registered already")
    _BUILDERS[key] = builder


def architectures() -> list[str]:
    """Every name ``build_model`` accepts."""
    return sorted(_BUILDERS)


def build_model(name: str, **overrides) -> nn.Module:
    """An untrained model: ``build_model("vitpose-b")``, ``build_model("vitpose-s", head="simple")``,
    ``build_model("tokenpose-l-d24", img_size=(384, 288))``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string such as 'vitpose-b', got {type(name).__name__}")
    builder = _BUILDERS.get(name.lower())
    if builder is None:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(architectures())}")
    return builder(**overrides)


def _vitpose_builder(size: str):
    def build(**overrides):
        from .configs import vitpose_config
        from .vitpose import ViTPose
        return ViTPose(vitpose_config(size, **overrides))
    return build


for _size in ("S", "B", "L", "H"):
    register_architecture(f"vitpose-{_size.lower()}", _vitpose_builder(_size))


def _tokenpose_builder(variant: str):
    def build(**overrides):
        from .tokenpose import TokenPose, tokenpose_config
        return TokenPose(tokenpose_config(variant, **overrides))
    return build


def _register_tokenpose() -> None:
    from .tokenpose import ARCHITECTURES  # tokenpose-t, -s-v1, -s-v2, -b, -l-d6, -l-d24
    for name, variant in ARCHITECTURES.items():
        register_architecture(name, _tokenpose_builder(variant))


_register_tokenpose()


def _tar_vitpose_builder(size: str):
    def build(**overrides):
        from .tar_vitpose import TARViTPose, tar_vitpose_config
        return TARViTPose(tar_vitpose_config(size, **overrides))
    return build


for _size in ("S", "B", "L", "H"):  # build_model("tar-vitpose-b", frames=5)
    register_architecture(f"tar-vitpose-{_size.lower()}", _tar_vitpose_builder(_size))
