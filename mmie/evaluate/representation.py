"""Representation diagnostics: is the embedding space healthy, or collapsing?

* alignment and uniformity (Wang & Isola 2020, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere"): positives close, the rest
  spread over the sphere;
* effective rank (Roy & Vetterli 2007): exp of the entropy of the normalised singular values,
  a smooth count of the directions the embeddings actually use (RankMe, Garrido et al. 2023,
  uses the same quantity on uncentred embeddings, as here);
* per-dimension standard deviation: a dimension whose spread is far below the
  ``1/sqrt(D)`` of a uniform spread on the sphere is collapsed (a warning is logged);
* modality gap (Liang et al. 2022): distance between the centroids of the normalised image and
  text embeddings.

All functions take numpy arrays of L2-normalised rows and compute in float64.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# A dimension is "collapsed" when its std is below this fraction of 1/sqrt(D).
DEFAULT_COLLAPSE_RATIO = 0.1


def _rows(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"{name} must be [N >= 2, D] embeddings; got shape {x.shape}.")
  return x


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
  """``E ||x_i - y_i||^alpha`` over positive pairs (row i of x with row i of y); lower is better."""
  x, y = _rows(x, "x"), _rows(y, "y")
  if x.shape != y.shape:
    raise ValueError(f"alignment needs paired rows of equal shape; got {x.shape} and {y.shape}.")
  return float(np.mean(np.linalg.norm(x - y, axis=1) ** alpha))


def uniformity(x: np.ndarray, t: float = 2.0, block: int = 1024) -> float:
  """``log E_{i<j} exp(-t ||x_i - x_j||^2)`` over distinct pairs; lower is more uniform.

  Computed a block of rows at a time with a running log-sum-exp, so memory is
  ``block x N`` whatever the size.
  """
  x = _rows(x, "x")
  n = x.shape[0]
  sq = np.sum(x * x, axis=1)
  running_max, running_sum = -np.inf, 0.0
  for start in range(0, n, block):
    rows = slice(start, min(start + block, n))
    d2 = np.maximum(sq[rows, None] + sq[None, :] - 2.0 * x[rows] @ x.T, 0.0)
    upper = np.arange(n)[None, :] > np.arange(start, rows.stop)[:, None]  # j > i only.
    logits = -t * d2[upper]
    if logits.size == 0:
      continue
    block_max = float(logits.max())
    new_max = max(running_max, block_max)
    running_sum = running_sum * np.exp(running_max - new_max) + np.exp(logits - new_max).sum()
    running_max = new_max
  pairs = n * (n - 1) / 2
  return float(running_max + np.log(running_sum) - np.log(pairs))


def effective_rank(x: np.ndarray) -> float:
  """Roy & Vetterli's effective rank: ``exp(H(p))`` with ``p = s / sum(s)`` of singular values."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"effective_rank needs a matrix; got shape {x.shape}.")
  s = np.linalg.svd(x, compute_uv=False)
  total = s.sum()
  if total <= 0:
    return 0.0
  p = s[s > 0] / total
  return float(np.exp(-np.sum(p * np.log(p))))


def dimension_std(x: np.ndarray) -> np.ndarray:
  """Standard deviation of each embedding dimension across samples, [D]."""
  return np.std(_rows(x, "x"), axis=0)


def modality_gap(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
  """``||mean(image) - mean(text)||`` of normalised embeddings (Liang et al. 2022)."""
  return float(np.linalg.norm(_rows(image_emb, "image_emb").mean(0)
                              - _rows(text_emb, "text_emb").mean(0)))


def collapse_summary(x: np.ndarray, ratio: float = DEFAULT_COLLAPSE_RATIO) -> dict[str, float]:
  """Mean/min per-dimension std relative to ``1/sqrt(D)``, and the fraction of collapsed dims."""
  std = dimension_std(x)
  uniform = 1.0 / np.sqrt(std.shape[0])
  return {
      "std_mean_ratio": float(std.mean() / uniform),
      "std_min_ratio": float(std.min() / uniform),
      "collapsed_fraction": float(np.mean(std < ratio * uniform)),
  }


def representation_metrics(image_emb: np.ndarray, text_emb: np.ndarray,
                           text_image_ids: np.ndarray | None = None, *,
                           collapse_ratio: float = DEFAULT_COLLAPSE_RATIO,
                           max_samples: int = 4096, seed: int = 0) -> dict[str, float]:
  """Every diagnostic for a two-tower embedding space, logging a warning on collapse.

  ``text_image_ids[t]`` names caption t's image (default: caption i belongs to image i); the
  positive pairs for alignment are (image, caption) pairs. Uniformity and effective rank use
  at most ``max_samples`` rows (a fixed random subset) to bound their cost.
  """
  image_emb, text_emb = _rows(image_emb, "image_emb"), _rows(text_emb, "text_emb")
  if text_image_ids is None:
    text_image_ids = np.arange(text_emb.shape[0])
  paired_images = image_emb[np.asarray(text_image_ids)]
  rng = np.random.default_rng(seed)
  subset = lambda x: x if len(x) <= max_samples else x[rng.choice(len(x), max_samples, False)]
  metrics = {"alignment": alignment(paired_images, text_emb),
             "modality_gap": modality_gap(image_emb, text_emb)}
  for name, emb in (("image", image_emb), ("text", text_emb)):
    metrics.update(_health(emb, name, subset(emb), collapse_ratio))
  warn_on_collapse(metrics, image_emb.shape[1], collapse_ratio)
  return metrics


def _health(emb: np.ndarray, name: str, sample: np.ndarray, ratio: float) -> dict[str, float]:
  metrics = {f"{name}_uniformity": uniformity(sample),
             f"{name}_effective_rank": effective_rank(sample)}
  for key, value in collapse_summary(emb, ratio).items():
    metrics[f"{name}_{key}"] = value
  return metrics


def single_modality_metrics(emb: np.ndarray, name: str = "image", *,
                            collapse_ratio: float = DEFAULT_COLLAPSE_RATIO,
                            max_samples: int = 4096, seed: int = 0) -> dict[str, float]:
  """The per-modality diagnostics (``{name}_uniformity``, ``_effective_rank``, spread) of one
  set of L2-normalised embeddings, e.g. an SSL backbone's features; warns on collapse."""
  emb = _rows(emb, name)
  rng = np.random.default_rng(seed)
  sample = emb if len(emb) <= max_samples else emb[rng.choice(len(emb), max_samples, False)]
  metrics = _health(emb, name, sample, collapse_ratio)
  warn_on_collapse(metrics, emb.shape[1], collapse_ratio)
  return metrics


def warn_on_collapse(metrics: dict[str, float], dim: int, ratio: float) -> list[str]:
  """Logs (and returns) a warning per modality whose embeddings collapsed."""
  warnings = []
  for name in ("image", "text"):
    collapsed = metrics.get(f"{name}_collapsed_fraction", 0.0)
    std_ratio = metrics.get(f"{name}_std_mean_ratio", 1.0)
    if collapsed >= 0.5 or std_ratio < ratio:
      msg = (f"{name} embeddings look collapsed: {100 * collapsed:.0f}% of {dim} dimensions have"
             f" std < {ratio} / sqrt(D); mean std is {std_ratio:.3f} of a uniform spread;"
             f" effective rank {metrics.get(f'{name}_effective_rank', float('nan')):.1f}.")
      log.warning(msg)
      warnings.append(msg)
  return warnings
