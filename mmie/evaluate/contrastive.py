"""Evaluators over embeddings: retrieval, zero-shot, linear probe, kNN, representation health.

Each factory takes its resolved spec (a dict with every key of its schema filled in) and the
run's :class:`EvalContext`, loads and tokenises what it needs once, and returns
``evaluate(params) -> {metric: value}`` with a ``chance`` attribute (what a random model
scores). Metric names carry no prefix; the registry adds the evaluator's.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mmie.evaluate import probe, representation
from mmie.evaluate.context import EvalContext
from mmie.evaluate.retrieval import retrieval_metrics
from mmie.evaluate.zeroshot import class_embeddings, zeroshot_metrics

Evaluator = Callable[[Any], dict[str, float]]


def _with_chance(fn: Evaluator, chance: dict[str, float]) -> Evaluator:
  fn.chance = chance  # type: ignore[attr-defined]
  return fn


def _labels(split: dict[str, Any], what: str, split_name: str) -> np.ndarray:
  labels = np.asarray(split["label"])
  if labels.size == 0 or labels.min() < 0:
    raise ValueError(f"The {what} evaluator needs class labels, but split {split_name!r} has"
                     " none (label -1): use a labelled data source or drop this evaluator.")
  return labels


def retrieval(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Image->text and text->image Recall@K and median rank over the whole split."""
  split = ctx.split(spec["split"])
  ks = tuple(int(k) for k in spec["ks"])
  n = len(split["image"])

  def evaluate(params: Any) -> dict[str, float]:
    image = ctx.split_embeddings(params, spec["split"], "image", spec["batch_size"])
    text = ctx.split_embeddings(params, spec["split"], "text", spec["batch_size"])
    return retrieval_metrics(image, text, split.get("text_image_ids"), ks=ks,
                             block=spec["block"])

  chance = {f"recall@{k}": min(100.0, 100.0 * k / n) for k in ks}
  chance["median_rank"] = (n + 1) / 2
  return _with_chance(evaluate, chance)


def zeroshot(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Zero-shot top-K accuracy: nearest class embedding, classes from prompt-template means."""
  split = ctx.split(spec["split"])
  labels = _labels(split, "zeroshot", spec["split"])
  names = list(split["class_names"])
  templates = tuple(spec["templates"])
  prompts = ctx.prompts(names, templates)  # [C, T, L]
  c, t, length = prompts.shape
  flat = prompts.reshape(c * t, length)

  def evaluate(params: Any) -> dict[str, float]:
    image = ctx.split_embeddings(params, spec["split"], "image", spec["batch_size"])
    prompt_emb = ctx.embed(params, "text", flat, spec["batch_size"],
                           cache_key=("prompts", templates, tuple(names)))
    classes = class_embeddings(prompt_emb.reshape(c, t, -1))
    return zeroshot_metrics(image, classes, labels, ks=tuple(spec["ks"]))

  counts = np.bincount(labels, minlength=c)
  return _with_chance(evaluate, {"zeroshot_top1": 100.0 / c,
                                 "zeroshot_majority_class": float(100.0 * counts.max()
                                                                  / len(labels))})


def _frozen_features(spec: dict[str, Any], ctx: EvalContext, what: str):
  """(train labels, test labels, fn(params) -> (train features, test features))."""
  train = ctx.split(spec["train_split"])
  test = ctx.split(spec["split"])
  limit = min(len(train["label"]), int(spec["max_train"]))
  train_y = _labels(train, what, spec["train_split"])[:limit]
  test_y = _labels(test, what, spec["split"])
  kind = spec["modality"]
  if kind != "image" and "text_image_ids" in test:
    raise ValueError(f"The {what} evaluator with modality='text' needs one caption per image;"
                     f" split {spec['split']!r} has several.")

  def features(params: Any) -> tuple[np.ndarray, np.ndarray]:
    return (ctx.split_embeddings(params, spec["train_split"], kind, spec["batch_size"], limit),
            ctx.split_embeddings(params, spec["split"], kind, spec["batch_size"]))

  return train_y, test_y, features


def _majority(train_y: np.ndarray, test_y: np.ndarray) -> float:
  return float(100.0 * np.mean(test_y == np.bincount(train_y).argmax()))


def linear_probe(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Logistic-regression probe on frozen features of ``train_split``, scored on ``split``."""
  train_y, test_y, features = _frozen_features(spec, ctx, "linear_probe")
  l2 = spec["l2"]

  def evaluate(params: Any) -> dict[str, float]:
    train_x, test_x = features(params)
    return probe.linear_probe(train_x, train_y, test_x, test_y, l2=l2)

  return _with_chance(evaluate, {"linear_probe_top1": _majority(train_y, test_y)})


def knn(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Weighted kNN (cosine) on frozen features of ``train_split``, scored on ``split``."""
  train_y, test_y, features = _frozen_features(spec, ctx, "knn")
  ks = [spec["k"]] if isinstance(spec["k"], int) else list(spec["k"])
  ks = sorted({min(int(k), len(train_y)) for k in ks})  # k=200 as k=N on a smaller split.

  def evaluate(params: Any) -> dict[str, float]:
    train_x, test_x = features(params)
    metrics: dict[str, float] = {}
    for k in ks:
      metrics.update(probe.knn_accuracy(train_x, train_y, test_x, test_y, k=k,
                                        temperature=float(spec["temperature"])))
    return metrics

  majority = _majority(train_y, test_y)
  return _with_chance(evaluate, {f"knn{k}_top1": majority for k in ks})


def representation_diagnostics(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Alignment, uniformity, effective rank, per-dimension std, modality gap (with warnings)."""
  split = ctx.split(spec["split"])

  def evaluate(params: Any) -> dict[str, float]:
    image = ctx.split_embeddings(params, spec["split"], "image", spec["batch_size"])
    text = ctx.split_embeddings(params, spec["split"], "text", spec["batch_size"])
    return representation.representation_metrics(
        image, text, split.get("text_image_ids"), collapse_ratio=float(spec["collapse_ratio"]),
        max_samples=int(spec["max_samples"]))

  return _with_chance(evaluate, {})
