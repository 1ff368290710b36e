"""Tasks by name: the explicit registry the config's ``task`` key resolves through."""

from mmie.config import ConfigError
from mmie.tasks import contrastive, lm, matching, seq2seq
from mmie.tasks.base import Task

TASKS: dict[str, Task] = {
    task.name: task for task in (contrastive.TASK, matching.TASK, seq2seq.TASK, lm.TASK)
}


def get_task(name: str) -> Task:
  """The task called ``name``; a clear error listing the known tasks otherwise."""
  if name not in TASKS:
    raise ConfigError(f"Config key task={name!r} is unknown; known tasks: {sorted(TASKS)}.")
  return TASKS[name]


__all__ = ["Task", "TASKS", "get_task"]
