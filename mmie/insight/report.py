"""The plots of a trained two-tower run: embeds the evaluation split, attributes a few pairs,
and draws everything with mmie/insight/plots.py into ``workdir/plots``."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from mmie.data.augment import CLIP_MEAN, CLIP_STD
from mmie.evaluate.context import EvalContext
from mmie.insight import attention, attribution, plots
from mmie.train.trained import load_trained  # noqa: F401  (re-exported: scripts use it here)

log = logging.getLogger(__name__)


def _eval_batch_size(config: Any) -> int:
  """The first evaluator's batch size (evals.NAME.batch_size), else 256."""
  for spec in (config.get("evals", None) or {}).values():
    if spec.get("batch_size") is not None:
      return int(spec["batch_size"])
  return 256


def display_images(images: np.ndarray, data_config: Any) -> np.ndarray:
  """Normalised model inputs back to [0, 1] RGB for display."""
  get = data_config.get if hasattr(data_config, "get") else (lambda k, d: d)
  mean = np.asarray(get("mean", CLIP_MEAN), np.float32)
  std = np.asarray(get("std", CLIP_STD), np.float32)
  return np.clip(images * std + mean, 0.0, 1.0)


def caption_rows(split: dict[str, Any], image_indices: Sequence[int]) -> list[int]:
  """For each image, the row of its first caption in ``split['text']``."""
  owners = split.get("text_image_ids")
  if owners is None:
    return list(image_indices)
  owners = np.asarray(owners)
  return [int(np.flatnonzero(owners == i)[0]) for i in image_indices]


def token_labels(ctx: EvalContext, tokens: np.ndarray,
                 scores: np.ndarray) -> tuple[list[list[str]], list[np.ndarray]]:
  """Readable tokens of each row and their scores, special tokens and padding dropped."""
  labels, kept = [], []
  for row, row_scores in zip(tokens, scores):
    pieces = [(ctx.decode([int(t)]), s) for t, s in zip(row, row_scores)]
    pieces = [(text.strip() or "\u2423", s) for text, s in pieces if text != ""]
    labels.append([p for p, _ in pieces])
    kept.append(np.asarray([s for _, s in pieces]))
  return labels, kept


def _attribution_plot(ctx: EvalContext, split: dict[str, Any], params: Any, chosen: list[int],
                      path: str, steps: int) -> str:
  model = ctx.model
  tower = getattr(model, "image", None)
  patch = int(getattr(tower, "patch_size", 0) or 0)
  if not patch:
    raise ValueError(f"Attribution plots need a ViT image tower; {type(tower).__name__} has no"
                     " patch_size.")
  grid = int(tower.image_size) // patch
  rows = caption_rows(split, chosen)
  images = jnp.asarray(split["image"][chosen])
  tokens = np.asarray(split["text"][rows])
  pair = attribution.pair_attribution(model, params, images, jnp.asarray(tokens),
                                      patch_size=patch, steps=steps)
  maps = {"attention rollout": attention.rollout_maps(model, params, images, grid),
          "integrated gradients": pair["patch"]}
  labels, scores = token_labels(ctx, tokens, pair["token"])
  captions = [f"{split['captions'][r][:30]}\ncosine similarity {s:.2f}"
              for r, s in zip(rows, pair["similarity"])]
  return plots.plot_attributions(display_images(np.asarray(images), ctx.config.data), captions,
                                 maps, labels, scores, path)


def make_run_plots(workdir: str, config: Any, params: Any, model: Any, *,
                   examples: Sequence[int] | None = None, context: EvalContext | None = None,
                   ig_steps: int = 16) -> list[str]:
  """See :func:`mmie.insight.plots.make_run_plots`; ``context`` reuses loaded splits."""
  out = os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)
  paths = []
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    records = plots.read_metrics(metrics_path)
    if records:
      paths.append(plots.plot_training_curves(records, os.path.join(out, "training_curves.png")))
  if not hasattr(model, "encode_text"):  # Image-only models: no image-text plots to make.
    return paths
  ctx = context or EvalContext(config, model)
  split_name = config.data.get("eval_split", "validation")
  split = ctx.split(split_name)
  n = len(split["image"])
  chosen = [int(i) for i in (examples if examples else range(min(6, n)))]
  bad = [i for i in chosen if not 0 <= i < n]
  if bad:
    raise ValueError(f"examples {bad} are outside the {n} images of split {split_name!r}.")
  batch = _eval_batch_size(config)
  image_emb = ctx.split_embeddings(params, split_name, "image", batch)
  text_emb = ctx.split_embeddings(params, split_name, "text", batch)
  shown = display_images(split["image"], config.data)
  captions = list(split["captions"])
  owners = split.get("text_image_ids")
  paths.append(plots.plot_similarity_matrix(image_emb, text_emb, captions,
                                            os.path.join(out, "similarity_matrix.png")))
  paths.append(plots.plot_retrieval_grid(
      shown, captions, image_emb, text_emb, os.path.join(out, "retrieval_grid.png"),
      queries=caption_rows(split, chosen), text_image_ids=owners))
  paths.append(plots.plot_embedding_pca(image_emb, text_emb,
                                        os.path.join(out, "embeddings_pca.png")))
  paths.append(_attribution_plot(ctx, split, params, chosen[:4],
                                 os.path.join(out, "attribution.png"), ig_steps))
  log.info("Wrote %d plots to %s", len(paths), out)
  return paths


def plots_hook(workdir: str, config: Any, params: Any, model: Any) -> None:
  """The end-of-run hook ``main.py`` registers: every plot of a trained image-text run.

  Skipped when ``config.plots`` is False or the model has no image tower to embed with; an
  image-only model (``image_encoder``) gets its training curves.
  """
  if not config.get("plots", True) or not hasattr(model, "encode_image"):
    return
  paths = make_run_plots(workdir, config, params, model)
  print(f"Plots: {', '.join(os.path.relpath(p, workdir) for p in paths)}", flush=True)
