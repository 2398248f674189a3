"""Models: ViTPose (S/B/L/H, ViTPose+, the paper's attention variants, knowledge token) and TokenPose
(T, S-v1, S-v2, B, L/D6, L/D24), their configurations and checkpoint formats, and ``build_model``
for every registered architecture."""
from .checkpoints import CheckpointError, load_model, save_model
from .configs import SIZES, TABLE5, TABLE5_PAPER, ViTPoseConfig, vitpose_config
from .knowledge import attach_knowledge_token, freeze_knowledge_token, prepare_token_training
from .registry import architectures, build_model, register_architecture
from .tokenpose import TokenPose, TokenPoseConfig, tokenpose_config
from .vitpose import ViTPose, freeze

__all__ = [
    "CheckpointError", "load_model", "save_model", "SIZES", "TABLE5", "TABLE5_PAPER", "ViTPoseConfig",
    "vitpose_config", "attach_knowledge_token", "freeze_knowledge_token", "prepare_token_training",
    "architectures", "build_model", "register_architecture", "ViTPose", "freeze",
    "TokenPose", "TokenPoseConfig", "tokenpose_config",
]
