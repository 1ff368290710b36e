"""Evaluators: each is ``evaluate(params) -> {name: value}``, built once from the config.

``build_evaluators(config, model)`` is the entry point the training loop uses: it returns
``[(name, every, evaluate)]`` from ``config.evals`` (see mmie/evaluate/registry.py for the keys
and docs/evaluation.md for every evaluator), or the default contrastive evaluator when the
config has no ``evals`` section.
"""

from __future__ import annotations

from typing import Any, Callable

from mmie.evaluate.context import EvalContext, embed_in_batches
from mmie.evaluate.probe import knn_accuracy, knn_predict, linear_probe
from mmie.evaluate.registry import EVALUATORS, build_from_specs, check_evals_config
from mmie.evaluate.representation import (alignment, effective_rank, modality_gap,
                                          representation_metrics, uniformity)
from mmie.evaluate.retrieval import retrieval_metrics
from mmie.evaluate.text_metrics import bleu, perplexity
from mmie.evaluate.zeroshot import class_embeddings, zeroshot_metrics

Evaluator = Callable[[Any], dict[str, float]]


def _default_specs(config: Any) -> dict[str, dict[str, Any]]:
  """The evaluators ``config.eval``'s switches ask for, under the one prefix ``eval/``."""
  eval_config = config.get("eval", {})
  specs = {}
  for kind in ("retrieval", "zeroshot", "representation"):
    if eval_config.get(kind, True):
      specs[kind] = {"type": kind, "prefix": "eval/"}
  return specs


def build_contrastive_evaluator(config: Any, model: Any, *,
                                context: EvalContext | None = None) -> Evaluator:
  """Retrieval, zero-shot and representation diagnostics on the config's evaluation split.

  One function, metrics named ``eval/...``; ``config.eval.retrieval`` / ``.zeroshot`` /
  ``.representation`` (default True) switch each part. A split without class labels skips
  zero-shot. The split is loaded and tokenised once; each call only embeds it.
  """
  ctx = context or EvalContext(config, model)
  specs = _default_specs(config)
  if "zeroshot" in specs:
    split = ctx.split(config.data.get("eval_split", "validation"))
    if not split.get("class_names") or (split["label"] < 0).any():
      del specs["zeroshot"]
  parts = build_from_specs(specs, config, ctx)

  def evaluate(params: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for _, _, part in parts:
      metrics.update(part(params))
    return metrics

  evaluate.chance = {k: v for _, _, part in parts  # type: ignore[attr-defined]
                     for k, v in part.chance.items()}
  return evaluate


def build_evaluators(config: Any, model: Any, *,
                     context: EvalContext | None = None) -> list[tuple[str, int, Evaluator]]:
  """``[(name, every, evaluate)]``: ``config.evals`` if present, else the default evaluator.

  ``every`` is in steps; 0 means only at the end of training. Evaluators of one run share a
  context, so those on the same step embed the split once.
  """
  ctx = context or EvalContext(config, model)
  evals = config.get("evals", None)
  if evals:
    return build_from_specs(evals, config, ctx)
  return [("eval", int(config.get("eval_every", 0)),
           build_contrastive_evaluator(config, model, context=ctx))]


__all__ = [
    "EVALUATORS", "EvalContext", "Evaluator", "alignment", "bleu", "build_contrastive_evaluator",
    "build_evaluators", "check_evals_config", "class_embeddings", "effective_rank",
    "embed_in_batches", "knn_accuracy", "knn_predict", "linear_probe", "modality_gap",
    "perplexity", "representation_metrics", "retrieval_metrics", "uniformity",
    "zeroshot_metrics",
]
