"""Linear probe (multinomial logistic regression) and k-nearest-neighbour classification.

Both read frozen features: how much of the label is linearly (probe) or locally (kNN)
recoverable from the embedding, without training the encoder. The probe is the standard
one of SSL papers (a softmax classifier on frozen, standardised features, L2-regularised,
fitted by L-BFGS in JAX); kNN is the weighted cosine vote of Wu et al. 2018 in numpy.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


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


def standardize(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  """Centres and scales every feature by the training set's mean and std (std 0 -> 1)."""
  mean = train_x.mean(axis=0)
  std = train_x.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return [(x - mean) / std for x in (train_x, *others)]


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _lbfgs(x: jax.Array, y: jax.Array, l2: jax.Array, num_classes: int, max_steps: int,
           tol: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """Minimises mean softmax cross-entropy + l2 / 2 ||W||^2 (bias free) with optax L-BFGS."""
  def objective(params):
    weights, bias = params
    logits = x @ weights + bias
    nll = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
    return jnp.mean(nll) + 0.5 * l2 * jnp.sum(weights ** 2)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)
  params = (jnp.zeros((x.shape[1], num_classes), x.dtype), jnp.zeros((num_classes,), x.dtype))

  def step(carry):
    params, state, _, count = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=objective)
    return optax.apply_updates(params, updates), state, optax.tree.norm(grad), count + 1

  def not_done(carry):
    _, _, grad_norm, count = carry
    return (count < max_steps) & (grad_norm > tol)

  init = (params, solver.init(params), jnp.asarray(jnp.inf, x.dtype), jnp.asarray(0))
  params, _, _, count = jax.lax.while_loop(not_done, step, init)
  return params, count


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float, *,
                 max_steps: int = 300, tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
  """Multinomial logistic regression: ``(W [D, C], b [C])`` minimising
  ``mean_i CE(x_i W + b, y_i) + l2 / 2 ||W||^2``.

  The objective of scikit-learn's ``LogisticRegression(C=1 / (l2 * N))`` (lbfgs, unpenalised
  intercept), solved with ``optax.lbfgs`` in float32 until the gradient norm is below ``tol``
  or after ``max_steps`` iterations (scikit-learn stops at 100 by default; near-separable
  raw-pixel problems creep on for thousands with no change in accuracy).
  """
  x, y = _check(features, labels, "fit_logistic")
  if l2 < 0:
    raise ValueError(f"fit_logistic: l2={l2} must be >= 0.")
  (weights, bias), _ = _lbfgs(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32),
                              jnp.float32(l2), int(num_classes), int(max_steps), jnp.float32(tol))
  return np.asarray(weights, np.float64), np.asarray(bias, np.float64)


def predict_logistic(params: tuple[np.ndarray, np.ndarray], features: np.ndarray) -> np.ndarray:
  weights, bias = params
  return np.argmax(np.asarray(features, np.float64) @ weights + bias, axis=1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, l2: float | Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2),
                 holdout: float = 0.2, seed: int = 0) -> dict[str, float]:
  """Top-1 accuracy (percent) of a logistic-regression probe; ``l2`` chosen on a held-out slice.

  Features are standardised with the training statistics. With several ``l2`` values, each
  is fitted on ``1 - holdout`` of the training features and scored on the rest; the best is
  refitted on all of them. The test set never picks ``l2``.
  """
  train_x, train_y = _check(train_x, train_y, "linear_probe train")
  test_x, test_y = _check(test_x, test_y, "linear_probe test")
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  grid = [float(l2)] if np.isscalar(l2) else [float(v) for v in l2]
  if not grid or min(grid) < 0:
    raise ValueError(f"linear_probe: l2 must be >= 0 (one value or a list); got {l2!r}.")
  train_x, test_x = standardize(train_x, test_x)
  best = grid[0]
  if len(grid) > 1:
    order = np.random.default_rng(seed).permutation(len(train_y))
    cut = max(1, int(round(len(order) * (1 - holdout))))
    fit, val = order[:cut], order[cut:]
    if len(val) == 0:
      raise ValueError(f"linear_probe: holdout={holdout} leaves no validation examples out of"
                       f" {len(order)}; raise holdout or pass a single l2.")
    scores = [np.mean(predict_logistic(fit_logistic(train_x[fit], train_y[fit], num_classes, v),
                                       train_x[val]) == train_y[val]) for v in grid]
    best = grid[int(np.argmax(scores))]
  params = fit_logistic(train_x, train_y, num_classes, best)
  accuracy = np.mean(predict_logistic(params, test_x) == test_y)
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
