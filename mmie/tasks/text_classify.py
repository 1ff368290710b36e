"""Text classification (``model.name = "text_classifier"``): the safety classifier's task.

Batch (the ``labelled_text`` data view of text records): ``text`` [B, L] token rows
(``BOS tokens EOS PAD...``) and ``label`` [B] class ids. Outputs ``logits`` [B, C] and
``targets`` [B], what ``cross_entropy`` reads; the default evaluator reports accuracy and
per-class precision, recall and F1 on ``data.eval_split`` (mmie/evaluate/text_classification.py).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from mmie.tasks.base import Task


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool, ema_params: Any = None) -> dict[str, jax.Array]:
  """Class logits of the token rows; ``ema_params`` is accepted and unused (no momentum
  encoder reads a classifier's outputs)."""
  del ema_params
  logits = apply_fn({"params": params}, batch["text"], train=train, rngs={"dropout": rng})
  if logits.ndim != 2:
    raise ValueError(f"text_classify: the model must return logits [batch, classes]; got shape "
                     f"{logits.shape}. Use model.name='text_classifier'.")
  return {"logits": logits, "targets": batch["label"]}


def example_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  return {"text": np.zeros((batch_size, config.data.context_length), np.int32),
          "label": np.zeros((batch_size,), np.int32)}


TASK = Task(name="text_classify", forward=forward, batch_keys=("text", "label"),
            example_batch=example_batch, init_args=lambda batch: (batch["text"],),
            data_view="labelled_text",
            default_evals={"eval": {"type": "text_classification", "prefix": "eval/"}})
