"""Stage 3, model: our VGGT-architecture model, its configs and weights, the base a run starts from.

At ``vggt-1b`` the state dict equals VGGT's released one (names and shapes), so a
user's ``model.pt`` loads strictly; ``vggt-small`` and ``vggt-tiny`` are the same
architecture shrunk for CPU runs.
"""

from attrsub.model.config import CONFIGS, ModelConfig, get_config
from attrsub.model.heads import POSE_DIM
from attrsub.model.vggt import VGGT
from attrsub.model.weights import build, check_state_dict, load, read_state_dict, save

__all__ = [
    "CONFIGS",
    "POSE_DIM",
    "VGGT",
    "ModelConfig",
    "build",
    "check_state_dict",
    "get_config",
    "load",
    "read_state_dict",
    "save",
]
