"""The registered downstream tasks, by name: what ``--task`` and a preset's tasks name."""

from __future__ import annotations

from attrsub.errors import ConfigError
from attrsub.tasks.base import Task
from attrsub.tasks.cross_domain import CrossDomainTask
from attrsub.tasks.print_attack import PrintAttackTask
from attrsub.tasks.real import RealTask

TASKS: dict[str, Task] = {
    "print_attack": PrintAttackTask(
        name="print_attack",
        description="micro-baseline anti-spoofing: flat prints vs live 3D objects, +-5 deg",
        main_metric="test/depth_absrel",
    ),
    "cross_domain": CrossDomainTask(
        name="cross_domain",
        description="train on boxes+cylinders/checker+stripes, test on spheres+height "
        "fields/noise+patchwork under coloured lights (THuman -> 2K2K)",
        main_metric="cross_domain/depth_absrel",
    ),
    "real": RealTask(
        name="real",
        description="synthetic-to-real: fine-tune on real RGB-D frames (ViSP castel), test on "
        "held-out frames, chessboard stereo pairs and Middlebury Aloe",
        main_metric="test/depth_absrel",
    ),
}


def get_task(name: str) -> Task:
    """The registered task called ``name``; ConfigError lists the valid names otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks are {', '.join(sorted(TASKS))}")
    return TASKS[name]
