"""The tasks a policy can be evaluated on, by name or by the record in its checkpoint.

``arm`` is the bundled planar arm; ``metaworld:NAME`` a Meta-World task on MuJoCo. Both
environments share one interface: ``reset(seed)``, ``step(action) -> (obs, done, info)``,
``state()``, ``hold_action()`` (what the robot does with no fresh action) and ``config.dt``.
"""

from __future__ import annotations

import numpy as np

from bac_ros.sim.arm import ArmEnv, ArmTaskConfig
from bac_ros.sim.metaworld import MetaWorldEnv, MetaWorldTaskConfig, task_from_record

Task = ArmTaskConfig | MetaWorldTaskConfig
Env = ArmEnv | MetaWorldEnv


def task_of(policy) -> Task:
    """The task a checkpoint was trained on (its config's ``task``; none recorded: the arm)."""
    record = policy.config.get("task")
    return ArmTaskConfig() if record is None else task_from_record(record)


def parse_task(name: str) -> Task:
    """``arm`` -> the bundled arm; ``metaworld:NAME`` -> that Meta-World task."""
    if name == "arm":
        return ArmTaskConfig()
    family, _, task = name.partition(":")
    if family != "metaworld" or not task:
        raise ValueError(f"task must be 'arm' or 'metaworld:TASK' (e.g. metaworld:pick-place); "
                         f"got {name!r}")
    return MetaWorldTaskConfig(task=task)


def task_name(task: Task) -> str:
    """What :func:`parse_task` reads back: the ``task`` of sim_node and ``bac record``."""
    return f"metaworld:{task.task}" if isinstance(task, MetaWorldTaskConfig) else "arm"


#: The arm's one camera, as its image messages name it (its checkpoints record no camera).
ARM_CAMERA = "camera"


def image_frame_id(task: Task) -> str:
    """The ``header.frame_id`` of the task's image messages: the Meta-World camera rendered
    (what a checkpoint's :attr:`Policy.camera_frame` must match), or the arm's one camera."""
    return task.camera if isinstance(task, MetaWorldTaskConfig) else ARM_CAMERA


def make_env(task: Task, images: bool) -> Env:
    if isinstance(task, MetaWorldTaskConfig):
        return MetaWorldEnv(task, render_images=images)
    return ArmEnv(task, render_images=images)




def task_demos(task: Task, episodes: int, seed: int = 0, images: bool = False
               ) -> dict[str, np.ndarray]:
    """Expert demonstrations of ``task`` in the replay-buffer layout (what schedules are
    profiled on: recorded task observations, never the evaluation episodes)."""
    if isinstance(task, MetaWorldTaskConfig):
        from bac_ros.sim.metaworld import generate_demos

        return generate_demos(task, episodes, seed=seed, with_images=images)
    from bac_ros.sim.demos import generate_demos

    return generate_demos(episodes, seed=seed, with_images=images, task=task)
