"""Evaluators of image-only models (``model.name = 'image_encoder'``).

  classification  top-1 / top-5 accuracy of the model's own classifier on ``split``.
  collapse        the representation-health diagnostics of mmie/evaluate/representation.py on
                  the backbone's image features alone (no text side): per-dimension spread
                  against a uniform spread on the sphere, effective rank, uniformity, and a
                  logged warning when the features collapse. Every SSL run logs them.

kNN and the linear probe (mmie/evaluate/contrastive.py) read the same ``encode_image``
features, so one embedding pass per evaluation serves them all.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mmie.evaluate import representation
from mmie.evaluate.context import EvalContext, apply_in_batches

Evaluator = Callable[[Any], dict[str, float]]


def classification(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Top-k accuracy (percent) of the model's logits on ``split``; chance 100 / classes."""
  split = ctx.split(spec["split"])
  labels = np.asarray(split["label"])
  if labels.size == 0 or labels.min() < 0:
    raise ValueError(f"The classification evaluator needs class labels, but split "
                     f"{spec['split']!r} has none (label -1).")
  images, batch_size = split["image"], int(spec["batch_size"])
  model = ctx.model
  logits_fn = ctx.jit(lambda params, x: model.apply({"params": params}, x)["logits"])
  ks = tuple(int(k) for k in spec["ks"])

  def evaluate(params: Any) -> dict[str, float]:
    logits = apply_in_batches(lambda x: logits_fn(params, x), images, batch_size)
    order = np.argsort(-logits, axis=1)
    return {f"top{k}": float(100.0 * np.mean((order[:, :k] == labels[:, None]).any(1)))
            for k in ks if k <= logits.shape[1]}

  evaluate.chance = {f"top{k}": 100.0 * k / max(int(labels.max()) + 1, k)  # type: ignore
                     for k in ks}
  return evaluate


def collapse(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Image-feature health (``image_*`` metrics) on ``split``, warning on collapse."""
  ctx.split(spec["split"])
  ratio, max_samples = float(spec["collapse_ratio"]), int(spec["max_samples"])

  def evaluate(params: Any) -> dict[str, float]:
    features = ctx.split_embeddings(params, spec["split"], "image", spec["batch_size"])
    return representation.single_modality_metrics(features, "image", collapse_ratio=ratio,
                                                  max_samples=max_samples)

  evaluate.chance = {}  # type: ignore[attr-defined]
  return evaluate
