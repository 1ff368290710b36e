"""Zero-shot classification from prompt-template ensembles (CLIP, Radford et al. 2021)."""

from __future__ import annotations

import numpy as np


def class_embeddings(prompt_emb: np.ndarray) -> np.ndarray:
  """[C, T, D] normalised prompt embeddings -> [C, D]: mean over templates, renormalised."""
  mean = prompt_emb.mean(axis=1)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def zeroshot_metrics(image_emb: np.ndarray, class_emb: np.ndarray,
                     labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
  """Top-K accuracy (percent) and mean per-class accuracy of nearest-class-embedding labels."""
  scores = image_emb @ class_emb.T
  order = np.argsort(-scores, axis=1)
  labels = np.asarray(labels)
  metrics = {}
  for k in ks:
    if k <= class_emb.shape[0]:
      metrics[f"zeroshot_top{k}"] = float(100.0 * np.mean(
          np.any(order[:, :k] == labels[:, None], axis=1)))
  pred = order[:, 0]
  per_class = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
  metrics["zeroshot_mean_per_class"] = float(100.0 * np.mean(per_class))
  return metrics
