"""Language-modelling task: every position predicts the next token of the same row.

Batch: ``text`` [B, L] in the tokenizer's ``BOS tokens EOS PAD...`` format (the key the
image-text pipeline already yields, so captions train an LM as they are), optional
``text_mask`` [B, L]. Returns ``logits``/``targets``/``mask`` for ``cross_entropy``, whose
``nll`` metric is the per-token negative log-likelihood (perplexity = exp(nll)).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from mmie.tasks.base import Task
from mmie.tasks.seq2seq import shift_targets


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool, ema_params: Any = None) -> dict[str, jax.Array]:
  """``DecoderLM`` logits for ``text[:, :-1]`` against ``text[:, 1:]``, padding masked.

  ``ema_params`` (``train.ema_decay``: an averaged copy of the weights kept in the state) is
  accepted and unused: no LM loss reads momentum-encoder outputs.
  """
  inputs, targets, mask = shift_targets(batch["text"], batch.get("text_mask"))
  logits = apply_fn({"params": params}, inputs, train=train, rngs={"dropout": rng})
  return {"logits": logits, "targets": targets, "mask": mask}


def example_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  return {"text": np.zeros((batch_size, config.data.context_length), np.int32)}


TASK = Task(name="lm", forward=forward, batch_keys=("text",), example_batch=example_batch,
            init_args=lambda batch: (batch["text"][:, :-1],), data_view="text",
            default_evals={"lm": {"type": "perplexity", "prefix": "eval/"}})
