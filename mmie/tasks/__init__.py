"""Tasks by name: the explicit registry the config's ``task`` key resolves through.

``config.task`` is a call-string like every other named choice: ``"matching"`` or
``"matching(random_negatives=0.5)"``. Its keyword arguments are the task's options, the
keyword-only parameters of its ``forward`` after the protocol's own (``rng``, ``train``,
``ema_params``); they are bound and checked when the run is built, before anything compiles.
"""

from __future__ import annotations

import functools
import inspect

from mmie.config import ConfigError
from mmie.registry import bind_arguments, parse_call
from mmie.tasks import classify, contrastive, lm, matching, preference, seq2seq, ssl
from mmie.tasks import text_classify
from mmie.tasks import ppo
from mmie.tasks.base import Task

TASKS: dict[str, Task] = {
    task.name: task for task in (contrastive.TASK, matching.TASK, seq2seq.TASK, lm.TASK,
                                 ssl.TASK, classify.TASK, preference.REWARD_TASK,
                                 preference.DPO_TASK)
}
TASKS[text_classify.TASK.name] = text_classify.TASK
TASKS[ppo.TASK.name] = ppo.TASK
_PROTOCOL = frozenset({"apply_fn", "params", "batch", "rng", "train", "ema_params"})


def task_options(task: Task) -> dict[str, inspect.Parameter]:
  """The options a task's ``forward`` takes beyond the protocol, by name."""
  return {name: p for name, p in inspect.signature(task.forward).parameters.items()
          if name not in _PROTOCOL and p.kind == p.KEYWORD_ONLY}


def get_task(spec: str) -> Task:
  """The task ``spec`` names, its options bound into ``forward``; a ConfigError otherwise."""
  try:
    call = parse_call(spec)
  except ValueError as e:
    raise ConfigError(f"Config key task={spec!r}: {e}") from None
  if call.name not in TASKS:
    raise ConfigError(f"Config key task={spec!r} is unknown; known tasks: {sorted(TASKS)}.")
  task = TASKS[call.name]
  if not call.args and not call.kwargs:
    return task
  options = task_options(task)
  accepts = "(" + ", ".join(f"{n}={p.default!r}" for n, p in options.items()) + ")"
  if call.args or set(call.kwargs) - set(options):
    raise ConfigError(f"Config key task={spec!r}: task {call.name!r} takes keyword options "
                      f"{accepts if options else '(none)'}.")
  kwargs = bind_arguments(task.forward, (), call.kwargs, what=f"task {call.name!r}")
  return task._replace(forward=functools.partial(task.forward, **kwargs))


def task_name(spec: str | None) -> str | None:
  """The bare task name of a ``task`` call-string (None when it does not parse)."""
  try:
    return parse_call(spec).name if spec else None
  except ValueError:
    return None


__all__ = ["Task", "TASKS", "get_task", "task_name", "task_options"]
