"""Sequence-to-sequence (translation) task: teacher-forced next-token prediction.

Batch: ``source`` [B, S] and ``target`` [B, T] token ids in the tokenizer's row format
``BOS tokens EOS PAD...`` (mmie/data/tokenizer.py), optional ``source_mask`` / ``target_mask``
[B, *] (1 = token). The decoder reads ``target[:, :-1]`` and predicts ``target[:, 1:]``; padded
targets are masked out, so ``cross_entropy`` (mmie.losses) averages over real tokens only.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
import jax.numpy as jnp

from mmie.tasks.base import Task

# The tokenizer contract (mmie/data/tokenizer.py: pad=0); a pipeline with another pad id
# supplies explicit masks instead.
PAD_ID = 0


def shift_targets(tokens: jax.Array, token_mask: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[B, T] rows -> (inputs [B, T-1], targets [B, T-1], mask [B, T-1] float)."""
  if tokens.ndim != 2 or tokens.shape[1] < 2:
    raise ValueError(f"next-token prediction needs int tokens [batch, length >= 2]; got shape "
                     f"{tokens.shape}.")
  valid = tokens != PAD_ID if token_mask is None else token_mask > 0
  return tokens[:, :-1], tokens[:, 1:], valid[:, 1:].astype(jnp.float32)


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool, ema_params: Any = None) -> dict[str, jax.Array]:
  """``Seq2SeqTransformer`` logits for the shifted targets -> ``logits``/``targets``/``mask``.

  ``ema_params`` (``train.ema_decay``) is accepted and unused, as in the LM task.
  """
  inputs, targets, mask = shift_targets(batch["target"], batch.get("target_mask"))
  logits = apply_fn({"params": params}, batch["source"], inputs, batch.get("source_mask"),
                    train=train, rngs={"dropout": rng})
  return {"logits": logits, "targets": targets, "mask": mask}


def example_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  length = config.data.context_length
  return {"source": np.zeros((batch_size, length), np.int32),
          "target": np.zeros((batch_size, length), np.int32)}


TASK = Task(name="seq2seq", forward=forward, batch_keys=("source", "target"),
            example_batch=example_batch,
            init_args=lambda batch: (batch["source"], batch["target"][:, :-1]),
            data_view="parallel_text",
            default_evals={"bleu": {"type": "bleu", "prefix": "eval/"}})
