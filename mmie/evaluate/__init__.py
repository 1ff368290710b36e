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
from mmie.evaluate.registry import (EVALUATORS, build_from_specs, check_evals_config,
                                    default_evals)
from mmie.evaluate.representation import (alignment, effective_rank, modality_gap,
                                          representation_metrics, uniformity)
from mmie.evaluate.retrieval import retrieval_metrics
from mmie.evaluate.text_metrics import bleu, perplexity
from mmie.evaluate.zeroshot import class_embeddings, zeroshot_metrics

Evaluator = Callable[[Any], dict[str, float]]


def build_contrastive_evaluator(config: Any, model: Any, *,
                                context: EvalContext | None = None) -> Evaluator:
  """The contrastive task's default suite (retrieval, zero-shot, representation) as one
  evaluator named ``eval/...``: what ``evals.eval = {type: 'contrastive'}`` builds."""
  ctx = context or EvalContext(config, model)
  [(_, _, evaluate)] = build_from_specs({"eval": {"type": "contrastive", "prefix": "eval/"}},
                                        config, ctx)
  return evaluate


def build_evaluators(config: Any, model: Any, *, context: EvalContext | None = None,
                     mesh: Any = None) -> list[tuple[str, int, Evaluator]]:
  """``[(name, every, evaluate)]`` from ``config.evals`` (else the task's default evaluators).

  ``every`` is in steps; 0 means only at the end of training. Evaluators of one run share a
  context, so those on the same step embed the split once. With the run's ``mesh`` they take
  the sharded train state's params as they are (``EvalContext.jit``).
  """
  ctx = context or EvalContext(config, model, mesh=mesh)
  return build_from_specs(config.get("evals", None) or default_evals(config), config, ctx)


__all__ = [
    "EVALUATORS", "EvalContext", "Evaluator", "alignment", "bleu", "build_contrastive_evaluator",
    "build_evaluators", "check_evals_config", "class_embeddings", "effective_rank",
    "embed_in_batches", "knn_accuracy", "knn_predict", "linear_probe", "modality_gap",
    "perplexity", "representation_metrics", "retrieval_metrics", "uniformity",
    "zeroshot_metrics",
]
