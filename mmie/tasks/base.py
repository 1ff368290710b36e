"""The task protocol: how a batch becomes the named inputs of a loss."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax

Forward = Callable[..., dict[str, jax.Array]]


class Task(NamedTuple):
  """A task is a few pure functions, not a trainer.

  ``forward(apply_fn, params, batch, *, rng, train, ema_params=None)`` runs the model (and,
  given EMA params, the momentum encoder) and returns the named
  arrays the loss consumes (for example ``image_emb``, ``text_emb``, ``logit_scale``), so the
  train step never branches on the kind of model or loss.
  """

  name: str
  forward: Forward
  batch_keys: tuple[str, ...]


def check_batch(task: Task, batch: Mapping[str, Any]) -> None:
  """Fails early, naming the missing keys, when the data does not fit the task."""
  missing = [k for k in task.batch_keys if k not in batch]
  if missing:
    raise KeyError(f"Task {task.name!r} needs batch keys {list(task.batch_keys)};"
                   f" the data pipeline gave {sorted(batch)} (missing {missing}).")
