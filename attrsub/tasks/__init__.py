"""Stage 5, tasks: downstream tasks from the scene generator and from real captures, the paper's
fine-tuning benchmarks.

- ``base``: the ``Task`` interface, ``TaskSize`` and ``SceneTask`` (data rendered from specs);
- ``print_attack``: micro-baseline anti-spoofing (flat prints versus live 3D objects);
- ``cross_domain``: one family of shapes, textures and lights to a disjoint one;
- ``real``: synthetic-to-real on captured RGB-D frames and stereo pairs;
- ``registry``: ``TASKS`` by name and ``get_task``.

The names importers use are re-exported here, so ``from attrsub.tasks import get_task``
reads as before.
"""

from attrsub.tasks.base import MAX_SEED, MAX_VIEWS, SceneTask, Task, TaskSize, check_seed
from attrsub.tasks.cross_domain import (
    COLOURED_LIGHTS,
    SOURCE_FAMILY,
    TARGET_FAMILY,
    TASK_CAMERA,
    CrossDomainTask,
    Family,
    scene_shapes,
    scene_textures,
)
from attrsub.tasks.print_attack import (
    CARD_HALF,
    CARD_THICKNESS,
    MAX_MICRO_DEG,
    PrintAttackTask,
    is_print,
    planarity,
    plane_fit_residual,
    select_threshold,
    spoof_accuracy,
)
from attrsub.tasks.real import RealTask
from attrsub.tasks.registry import TASKS, get_task

__all__ = [
    "CARD_HALF",
    "CARD_THICKNESS",
    "COLOURED_LIGHTS",
    "MAX_MICRO_DEG",
    "MAX_SEED",
    "MAX_VIEWS",
    "SOURCE_FAMILY",
    "TARGET_FAMILY",
    "TASKS",
    "TASK_CAMERA",
    "CrossDomainTask",
    "Family",
    "PrintAttackTask",
    "RealTask",
    "SceneTask",
    "Task",
    "TaskSize",
    "check_seed",
    "get_task",
    "is_print",
    "planarity",
    "plane_fit_residual",
    "scene_shapes",
    "scene_textures",
    "select_threshold",
    "spoof_accuracy",
]
