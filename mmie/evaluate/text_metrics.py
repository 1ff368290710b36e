"""Metrics on generated or predicted text: perplexity (language models) and BLEU (translation)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def token_nll_sum(logits: jax.Array, targets: jax.Array,
                  mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of masked token negative log-likelihoods, number of masked tokens), in float32.

  ``logits`` [B, L, V], ``targets`` int [B, L], ``mask`` [B, L] (1 = count this token). Sums,
  not means, so batches of different fill can be accumulated exactly.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  mask = mask.astype(jnp.float32)
  return jnp.sum(nll * mask), jnp.sum(mask)


def perplexity(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> float:
  """``exp(mean token NLL)`` over the masked tokens (all tokens when ``mask`` is None)."""
  if logits.ndim != 3 or logits.shape[:2] != targets.shape:
    raise ValueError(f"perplexity needs logits [B, L, V] and targets [B, L]; got"
                     f" {logits.shape} and {targets.shape}.")
  mask = jnp.ones(targets.shape) if mask is None else mask
  total, count = token_nll_sum(logits, targets, mask)
  return perplexity_from_sums(float(total), float(count))


def perplexity_from_sums(nll_sum: float, token_count: float) -> float:
  if token_count <= 0:
    raise ValueError("perplexity: the mask selects no tokens; nothing to score.")
  return float(np.exp(nll_sum / token_count))


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]] | Sequence[str], *,
         tokenize: str = "13a", lowercase: bool = False) -> dict[str, float]:
  """Corpus BLEU by sacrebleu (Post 2018): the standard, comparable implementation.

  ``references`` is either one reference per hypothesis (a list of strings) or sacrebleu's
  layout: a list of reference *streams*, each with one string per hypothesis.
  Returns ``bleu`` (0-100) and the brevity penalty.
  """
  import sacrebleu  # Deferred: only translation evaluation needs it.

  hypotheses = list(hypotheses)
  streams = [list(references)] if references and isinstance(references[0], str) else [
      list(r) for r in references]
  for i, stream in enumerate(streams):
    if len(stream) != len(hypotheses):
      raise ValueError(f"bleu: reference stream {i} has {len(stream)} sentences for"
                       f" {len(hypotheses)} hypotheses; each stream needs one per hypothesis.")
  score = sacrebleu.corpus_bleu(hypotheses, streams, tokenize=tokenize, lowercase=lowercase)
  return {"bleu": float(score.score), "bleu_brevity_penalty": float(score.bp)}
