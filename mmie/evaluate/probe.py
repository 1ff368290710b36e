"""Linear probe (closed-form ridge regression) and k-nearest-neighbour classification.

Both read frozen features: how much of the label is linearly (probe) or locally (kNN)
recoverable from the embedding, without training the encoder. Both run in numpy float64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check(features: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != (features.shape[0],):
    raise ValueError(f"{name}: features must be [N, D] and labels [N]; got {features.shape} and"
                     f" {labels.shape}.")
  if labels.size and labels.min() < 0:
    raise ValueError(f"{name}: labels must be class indices >= 0; got {labels.min()}"
                     " (a source without labels cannot be probed).")
  return features, labels.astype(np.int64)


def fit_ridge(features: np.ndarray, labels: np.ndarray, num_classes: int,
              l2: float) -> np.ndarray:
  """Weights [D + 1, C] minimising ``||[X 1] W - Y||^2 + l2 ||W[:D]||^2`` for one-hot Y.

  The bias (last row) is not regularised. Solved in the primal (D small) by ``np.linalg.solve``.
  """
  x, y = _check(features, labels, "fit_ridge")
  x1 = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
  targets = np.eye(num_classes)[y]
  reg = np.full(x1.shape[1], float(l2))
  reg[-1] = 0.0
  gram = x1.T @ x1 + np.diag(reg)
  return np.linalg.lstsq(gram, x1.T @ targets, rcond=None)[0]


def predict_ridge(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
  x = np.asarray(features, np.float64)
  return np.argmax(x @ weights[:-1] + weights[-1], axis=1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, l2: float | Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
                 holdout: float = 0.2, seed: int = 0) -> dict[str, float]:
  """Top-1 accuracy (percent) of a ridge probe; ``l2`` chosen on a held-out train slice.

  With several ``l2`` values, each is fitted on ``1 - holdout`` of the training features and
  scored on the rest; the best is refitted on all of them. The test set never picks ``l2``.
  """
  train_x, train_y = _check(train_x, train_y, "linear_probe train")
  test_x, test_y = _check(test_x, test_y, "linear_probe test")
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  grid = [float(l2)] if np.isscalar(l2) else [float(v) for v in l2]
  if not grid or min(grid) < 0:
    raise ValueError(f"linear_probe: l2 must be >= 0 (one value or a list); got {l2!r}.")
  best = grid[0]
  if len(grid) > 1:
    order = np.random.default_rng(seed).permutation(len(train_y))
    cut = max(1, int(round(len(order) * (1 - holdout))))
    fit, val = order[:cut], order[cut:]
    if len(val) == 0:
      raise ValueError(f"linear_probe: holdout={holdout} leaves no validation examples out of"
                       f" {len(order)}; raise holdout or pass a single l2.")
    scores = [np.mean(predict_ridge(fit_ridge(train_x[fit], train_y[fit], num_classes, v),
                                    train_x[val]) == train_y[val]) for v in grid]
    best = grid[int(np.argmax(scores))]
  weights = fit_ridge(train_x, train_y, num_classes, best)
  accuracy = np.mean(predict_ridge(weights, test_x) == test_y)
  return {"linear_probe_top1": float(100.0 * accuracy), "linear_probe_l2": best}


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, k: int = 20,
                temperature: float = 0.07, block: int = 1024) -> np.ndarray:
  """Labels by similarity-weighted vote of the ``k`` most cosine-similar training examples.

  Each neighbour votes with weight ``exp(sim / temperature)`` (Wu et al. 2018, as in DINO's
  kNN evaluation). Queries run a block at a time, so memory is ``block x N_train``.
  """
  train_x, train_y = _check(train_x, train_y, "knn train")
  test_x = np.asarray(test_x, np.float64)
  if not 1 <= k <= len(train_y):
    raise ValueError(f"knn: k={k} must be between 1 and the {len(train_y)} training examples.")
  if temperature <= 0:
    raise ValueError(f"knn: temperature={temperature} must be > 0.")
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  train_x, test_x = unit(train_x), unit(test_x)
  num_classes = int(train_y.max()) + 1
  predictions = []
  for start in range(0, len(test_x), block):
    sims = test_x[start:start + block] @ train_x.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / temperature)
    votes = np.zeros((len(top), num_classes))
    np.add.at(votes, (np.arange(len(top))[:, None], train_y[top]), weights)
    predictions.append(np.argmax(votes, axis=1))
  return np.concatenate(predictions) if predictions else np.zeros((0,), np.int64)


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
  """Top-1 accuracy (percent) of :func:`knn_predict`."""
  test_x, test_y = _check(test_x, test_y, "knn test")
  pred = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature)
  return {f"knn{k}_top1": float(100.0 * np.mean(pred == test_y))}
