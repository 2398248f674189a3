"""Training: ``vitpose.train(data=..., model=..., epochs=..., batch_size=..., out=...)`` and
``vitpose train`` (the same arguments), on one process or under torchrun.

Modules: ``trainer`` (the loop, TrainConfig), ``recipe`` (the official numbers, family registry),
``optim`` (layer-wise lr decay groups, schedule), ``checkpoint`` (atomic, verified files),
``distributed`` (DDP, sharded batches), ``task`` (the dataset interface a family implements),
``topdown`` (ViTPose's task), ``losses``, ``distill`` (output and knowledge-token distillation),
``logs``. The package itself is callable: ``vitpose.train(...)`` is ``vitpose.train.train(...)``.
"""
import sys
import types

from .recipe import Recipe, families, family_for, register_family, vitpose_recipe
from .task import Task
from .topdown import TopDownTask, _is_vitpose_spec
from .trainer import TrainConfig, Trainer, train

register_family("vitpose", matches=_is_vitpose_spec, recipe=vitpose_recipe, task=TopDownTask)
from .tokenpose import TokenPoseTask, is_tokenpose_spec, tokenpose_recipe  # noqa: E402
register_family("tokenpose", matches=is_tokenpose_spec, recipe=tokenpose_recipe, task=TokenPoseTask)
from .tar import TARTask, is_tar_spec, tar_recipe  # noqa: E402  (TAR-ViTPose on PoseTrack-format videos)
register_family("tar-vitpose", matches=is_tar_spec, recipe=tar_recipe, task=TARTask)

__all__ = ["train", "Trainer", "TrainConfig", "Recipe", "Task", "TopDownTask", "register_family", "families",
           "family_for", "vitpose_recipe"]


class _CallablePackage(types.ModuleType):
    """``vitpose.train`` is this package and also the function: vitpose.train(data=..., ...)."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
