"""Sec. 3.4, token-based distillation with a knowledge token.

Eq. 5: append a learnable token t to a trained, frozen teacher and tune only t:
    ``params = prepare_token_training(teacher)``  -> optimize ``params`` against K_gt.
Eq. 6: the tuned token t*, frozen, joins the student's visual tokens while the student trains:
    ``attach_knowledge_token(student, teacher)`` (or a tensor, or a file from save_knowledge_token).

In this implementation the token is a global token of every ``window_attention`` call: it attends
to all tokens and every grid token attends to it, whatever the layer's windows.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .vitpose import ViTPose


def add_knowledge_token(model: ViTPose, num_tokens: int = 1) -> nn.Parameter:
    """Give a model (e.g. a trained teacher) fresh learnable token(s); returns the parameter."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    ref = model.backbone.pos_embed
    token = nn.Parameter(torch.empty(1, num_tokens, ref.shape[-1], device=ref.device, dtype=ref.dtype))
    nn.init.trunc_normal_(token, std=0.02)
    model.backbone.knowledge_token = token
    model.config.num_knowledge_tokens = num_tokens
    return token


def prepare_token_training(teacher: ViTPose, num_tokens: int = 1) -> list[nn.Parameter]:
    """Eq. 5 setup: freeze the whole teacher, add a token if it has none, return [token] to optimize."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    token = teacher.backbone.knowledge_token
    if token is None:
        token = add_knowledge_token(teacher, num_tokens)
    token.requires_grad_(True)
    return [token]


def freeze_knowledge_token(model: ViTPose) -> None:
    token = model.backbone.knowledge_token
    if token is None:
        raise ValueError("this model has no knowledge token (config.num_knowledge_tokens == 0)")
    token.requires_grad_(False)


def knowledge_token(source) -> torch.Tensor:
    """The token (1, T, C) of a ViTPose model, a tensor (C,), (T, C) or (1, T, C), or a file."""
    if isinstance(source, ViTPose):
        if source.backbone.knowledge_token is None:
            raise ValueError("the source model has no knowledge token; train one with prepare_token_training")
        return source.backbone.knowledge_token.detach()
    if isinstance(source, (str, os.PathLike)):
        return load_knowledge_token(source)
    if not isinstance(source, torch.Tensor):
        raise TypeError(f"a knowledge token comes from a ViTPose, a tensor or a file, got {type(source).__name__}")
    t = source.detach()
    if t.dim() == 1:
        t = t[None]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[0] != 1:
        raise ValueError(f"a knowledge token must be (C,), (T, C) or (1, T, C), got shape={tuple(source.shape)}")
    return t


def attach_knowledge_token(student: ViTPose, source, *, projection: nn.Module | None = None,
                           freeze: bool = True) -> nn.Parameter:
    """Eq. 6: put a trained token t* into the student (frozen by default). When the teacher is wider
    than the student (ViTPose-L -> B), pass ``projection`` mapping its width to the student's."""
    t = knowledge_token(source)
    if projection is not None:
        with torch.no_grad():
            t = projection(t)
    C = student.config.embed_dim
    if t.shape[-1] != C:
        raise ValueError(f"the knowledge token has width {t.shape[-1]} but the student's embed_dim is {C}; "
                         "pass projection=nn.Linear(teacher_dim, student_dim) (trained or fixed)")
    ref = student.backbone.pos_embed
    token = nn.Parameter(t.to(ref.device, ref.dtype).clone(), requires_grad=not freeze)
    student.backbone.knowledge_token = token
    student.config.num_knowledge_tokens = t.shape[1]
    return token


def save_knowledge_token(model_or_token, path) -> None:
    from safetensors.torch import save_file
    save_file({"knowledge_token": knowledge_token(model_or_token).float().contiguous().cpu()}, str(path))


def load_knowledge_token(path) -> torch.Tensor:
    from safetensors.torch import load_file
    if not os.path.exists(path):
        raise FileNotFoundError(f"knowledge token file not found: {path}")
    tensors = load_file(str(path))
    if "knowledge_token" not in tensors:
        raise ValueError(f"{path} holds no 'knowledge_token' (keys: {sorted(tensors)})")
    return tensors["knowledge_token"]
