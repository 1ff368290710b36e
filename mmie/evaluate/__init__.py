"""Evaluators: each is ``evaluate(params) -> {name: value}``, built once from the config."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mmie.evaluate.embed import embed_in_batches, two_tower_embedders
from mmie.evaluate.retrieval import retrieval_metrics
from mmie.evaluate.zeroshot import class_embeddings, zeroshot_metrics

Evaluator = Callable[[Any], dict[str, float]]


def build_contrastive_evaluator(config: Any, model: Any) -> Evaluator:
  """Retrieval and zero-shot accuracy on the config's evaluation split.

  The split is loaded and tokenised once; each call only embeds it with the given params.
  """
  from mmie.data import pipeline  # Deferred: evaluation without data needs no tfds import.

  eval_config = config.get("eval", {})
  batch_size = int(eval_config.get("batch_size", 256))
  split = pipeline.load_eval_split(config.data)
  prompts = None
  if eval_config.get("zeroshot", True):
    prompts = pipeline.encode_prompts(config.data, split["class_names"],
                                      config.data.prompt_templates)

  def evaluate(params: Any) -> dict[str, float]:
    embed_images, embed_texts = two_tower_embedders(model, params)
    image_emb = embed_in_batches(embed_images, split["image"], batch_size)
    metrics: dict[str, float] = {}
    if eval_config.get("retrieval", True):
      text_emb = embed_in_batches(embed_texts, split["text"], batch_size)
      metrics.update(retrieval_metrics(image_emb, text_emb, split.get("text_image_ids")))
    if prompts is not None:
      c, t, length = prompts.shape
      prompt_emb = embed_in_batches(embed_texts, prompts.reshape(c * t, length), batch_size)
      metrics.update(zeroshot_metrics(image_emb, class_embeddings(prompt_emb.reshape(c, t, -1)),
                                      split["label"]))
    return {f"eval/{k}": v for k, v in metrics.items()}

  evaluate.chance = chance_levels(split)  # type: ignore[attr-defined]
  return evaluate


def chance_levels(split: dict) -> dict[str, float]:
  """What a random model scores, to read the metrics against."""
  n = len(split["image"])
  n_classes = len(split["class_names"])
  counts = np.bincount(split["label"], minlength=n_classes)
  return {
      "recall@1": 100.0 / n, "recall@5": 500.0 / n, "recall@10": 1000.0 / n,
      "zeroshot_top1": 100.0 / n_classes,
      "zeroshot_majority_class": float(100.0 * counts.max() / n),
  }


__all__ = ["Evaluator", "build_contrastive_evaluator", "chance_levels", "class_embeddings",
           "embed_in_batches", "retrieval_metrics", "zeroshot_metrics"]
