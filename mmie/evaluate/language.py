"""Evaluators for models that produce text: perplexity (language models) and BLEU (seq2seq).

Their protocol with the model is small and explicit:

* perplexity: ``model.apply({"params": p}, tokens[:, :-1])`` returns next-token logits
  [B, L-1, V]; targets are ``tokens[:, 1:]``, scored where they are not ``pad_id``.
* BLEU: the model has a ``generate(source_tokens, max_length=...)`` method returning token
  ids [B, T]; the split has ``source`` (int [N, Ls]) and ``references`` (one string per example,
  or sacrebleu's list of reference streams); outputs are detokenised by the data's tokenizer.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mmie.evaluate import text_metrics
from mmie.evaluate.context import EvalContext

Evaluator = Callable[[Any], dict[str, float]]


def _batches(array: np.ndarray, batch_size: int, fill: int):
  """Fixed-shape batches (the last padded with ``fill``) and the count of real rows in each."""
  for start in range(0, len(array), batch_size):
    chunk = array[start:start + batch_size]
    real = len(chunk)
    if real < batch_size:
      pad = np.full((batch_size - real,) + chunk.shape[1:], fill, chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    yield chunk, real


def perplexity(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Token-level perplexity ``exp(mean NLL)`` of a language model on the split's texts."""
  tokens = np.asarray(ctx.split(spec["split"])["text"])
  if tokens.ndim != 2 or tokens.shape[1] < 2:
    raise ValueError(f"The perplexity evaluator needs token rows [N, L >= 2]; split"
                     f" {spec['split']!r} has text of shape {tokens.shape}.")
  pad_id = int(spec["pad_id"])
  model = ctx.model

  def sums(params, batch):
    logits = model.apply({"params": params}, batch[:, :-1])
    if logits.ndim != 3 or logits.shape[:2] != batch[:, 1:].shape:
      raise ValueError(f"The perplexity evaluator needs next-token logits [B, L-1, V] from"
                       f" the model; {type(model).__name__} returned shape {logits.shape}.")
    targets = batch[:, 1:]
    return text_metrics.token_nll_sum(logits, targets, targets != pad_id)

  sums = ctx.jit(sums)

  def evaluate(params: Any) -> dict[str, float]:
    total, count = 0.0, 0.0
    for batch, _ in _batches(tokens, spec["batch_size"], pad_id):
      s, c = sums(params, batch)
      total, count = total + float(s), count + float(c)
    return {"perplexity": text_metrics.perplexity_from_sums(total, count),
            "token_nll": total / max(count, 1.0)}

  evaluate.chance = {}  # type: ignore[attr-defined]
  return evaluate


def bleu(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Corpus BLEU (sacrebleu) of the model's generations against the split's references."""
  split = ctx.split(spec["split"])
  missing = [k for k in ("source", "references") if k not in split]
  if missing:
    raise ValueError(f"The bleu evaluator needs a parallel-text split with 'source' tokens and"
                     f" 'references' strings; split {spec['split']!r} lacks {missing}"
                     f" (it has {sorted(split)}).")
  generate = getattr(type(ctx.model), "generate", None)
  if generate is None:
    raise ValueError(f"The bleu evaluator needs a model with generate(source, max_length=...);"
                     f" {type(ctx.model).__name__} has none.")
  source = np.asarray(split["source"])
  references = split["references"]
  model, max_length = ctx.model, int(spec["max_length"])
  run = ctx.jit(lambda params, batch: model.apply({"params": params}, batch,
                                                  max_length=max_length, method=generate))

  def evaluate(params: Any) -> dict[str, float]:
    hypotheses = []
    for batch, real in _batches(source, spec["batch_size"], int(spec["pad_id"])):
      ids = np.asarray(run(params, batch))[:real]
      hypotheses.extend(ctx.decode(row) for row in ids)
    return text_metrics.bleu(hypotheses, references)

  evaluate.chance = {}  # type: ignore[attr-defined]
  return evaluate
