"""Evaluator of text classifiers (``model.name = 'text_classifier'``), and the P/R/F1 count.

  text_classification  accuracy, and per class precision, recall and F1, of the model's
                       argmax on ``split`` (token rows ``text``, class ids ``label``); plus
                       the macro F1. Metric names: ``accuracy``, ``macro_f1`` and
                       ``<class>/precision``, ``<class>/recall``, ``<class>/f1``, a class named
                       by the spec's ``class_names`` or by its id.

A class's precision is ``tp / (tp + fp)``, its recall ``tp / (tp + fn)`` and its F1 their
harmonic mean ``2 tp / (2 tp + fp + fn)``; an empty denominator gives 0 (scikit-learn's
``zero_division=0``), so a detector that never fires has precision, recall and F1 0.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from mmie.evaluate.context import EvalContext, apply_in_batches

Evaluator = Callable[[Any], dict[str, float]]


def precision_recall_f1(predicted: Sequence[bool], actual: Sequence[bool]
                        ) -> tuple[float, float, float]:
  """Precision, recall and F1 of boolean predictions of the positive class."""
  predicted, actual = np.asarray(predicted, bool), np.asarray(actual, bool)
  if predicted.shape != actual.shape:
    raise ValueError(f"precision_recall_f1: predicted {predicted.shape} and actual "
                     f"{actual.shape} must have one shape.")
  tp = int(np.sum(predicted & actual))
  fp, fn = int(np.sum(predicted & ~actual)), int(np.sum(~predicted & actual))
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
  return precision, recall, f1


def class_metrics(predicted: Sequence[int], labels: Sequence[int],
                  class_names: Sequence[str]) -> dict[str, float]:
  """Accuracy, macro F1 and each class's precision, recall and F1 (see the module doc)."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  metrics = {"accuracy": float(np.mean(predicted == labels)) if labels.size else 0.0}
  f1s = []
  for index, name in enumerate(class_names):
    p, r, f1 = precision_recall_f1(predicted == index, labels == index)
    metrics.update({f"{name}/precision": p, f"{name}/recall": r, f"{name}/f1": f1})
    f1s.append(f1)
  metrics["macro_f1"] = float(np.mean(f1s))
  return metrics


def text_classification(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """The metrics of ``class_metrics`` for the model's logits on ``split``."""
  split = ctx.split(spec["split"])
  if "text" not in split or "label" not in split:
    raise ValueError(f"The text_classification evaluator needs token rows 'text' and class ids "
                     f"'label'; split {spec['split']!r} has {sorted(split)} (use a task whose "
                     "data view is 'labelled_text').")
  tokens, labels = np.asarray(split["text"]), np.asarray(split["label"])
  if labels.size == 0 or labels.min() < 0:
    raise ValueError(f"The text_classification evaluator needs class labels, but split "
                     f"{spec['split']!r} has {'no rows' if labels.size == 0 else 'label -1'}.")
  num_classes = int(getattr(ctx.model, "num_classes", 0)) or int(labels.max()) + 1
  names = list(spec.get("class_names") or ()) or [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"class_names={tuple(names)} names {len(names)} classes; the model has "
                     f"{num_classes}.")
  model = ctx.model
  logits_fn = ctx.jit(lambda params, x: model.apply({"params": params}, x))
  batch_size = int(spec["batch_size"])

  def evaluate(params: Any) -> dict[str, float]:
    logits = apply_in_batches(lambda x: logits_fn(params, x), tokens, batch_size)
    return class_metrics(np.argmax(logits, axis=-1), labels, names)

  majority = float(np.max(np.bincount(labels)) / labels.size)
  evaluate.chance = {"accuracy": majority}  # type: ignore[attr-defined]
  return evaluate
