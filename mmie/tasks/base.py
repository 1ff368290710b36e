"""The task protocol: how a batch becomes the named inputs of a loss."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

Forward = Callable[..., dict[str, jax.Array]]


def image_text_example(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like an image-text batch of the config's data."""
  size = config.data.image_size
  return {"image": np.zeros((batch_size, size, size, 3), np.float32),
          "text": np.zeros((batch_size, config.data.context_length), np.int32)}


def image_text_init_args(batch: Mapping[str, Any]) -> tuple[Any, ...]:
  return batch["image"], batch["text"]


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
  # Zeros shaped like one batch (for init, loss-state init and AOT compiles), and which of
  # its arrays ``model.init`` takes, in order.
  example_batch: Callable[[Any, int], dict[str, np.ndarray]] = image_text_example
  init_args: Callable[[Mapping[str, Any]], tuple[Any, ...]] = image_text_init_args
  # What a batch is (mmie/data/pipeline.py VIEWS): 'image_text', 'text' (captions alone) or
  # 'parallel_text'. The pipeline builds the task's view; data.name must be of its kind.
  data_view: str = "image_text"
  # ``config.evals`` when the config names none: {name: evaluator spec}.
  default_evals: Mapping[str, Mapping[str, Any]] = MappingProxyType({})
