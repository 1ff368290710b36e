"""Linear probe (logistic regression) and kNN on data whose answers are known."""

import numpy as np
import pytest

from mmie.evaluate import probe


def _blobs(n_per_class, seed):
  rng = np.random.default_rng(seed)
  centres = np.array([[4.0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0], [0, 0, 4.0, 0, 0]])
  x = np.concatenate([c + 0.5 * rng.normal(size=(n_per_class, 5)) for c in centres])
  y = np.repeat(np.arange(3), n_per_class)
  return x, y


def test_logistic_probe_separates_separable_data():
  train_x, train_y = _blobs(30, 0)
  test_x, test_y = _blobs(10, 1)
  result = probe.linear_probe(train_x, train_y, test_x, test_y)
  assert result["linear_probe_top1"] == 100.0
  assert result["linear_probe_l2"] in (1e-5, 1e-4, 1e-3, 1e-2)
  # Shuffled labels: no better than chance by much (3 classes).
  rng = np.random.default_rng(3)
  shuffled = probe.linear_probe(train_x, rng.permutation(train_y), test_x, test_y, l2=1.0)
  assert shuffled["linear_probe_top1"] < 70.0


def test_logistic_fit_is_the_stationary_point_of_its_objective():
  """At the optimum of mean CE + l2/2 ||W||^2 the gradient (by hand, numpy) vanishes."""
  x, y = _blobs(8, 2)
  x = x + np.random.default_rng(7).normal(size=x.shape)  # Overlapping classes: finite W.
  l2 = 0.05
  weights, bias = probe.fit_logistic(x, y, 3, l2, tol=1e-6)
  logits = x @ weights + bias
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  residual = (p - np.eye(3)[y]) / len(y)
  grad_w, grad_b = x.T @ residual + l2 * weights, residual.sum(0)
  scale = np.abs(x).max()  # float32 solve: the gradient is zero to ~1e-6 of the data scale.
  assert np.abs(grad_w).max() < 1e-4 * scale and np.abs(grad_b).max() < 1e-4


def test_knn_hand_computed_votes():
  train = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
  labels = np.array([0, 1, 1])
  query = np.array([[0.95, 0.31]])  # cosine sims: 0.95, 0.946, 0.818 (after normalising).
  assert probe.knn_predict(train, labels, query, k=1).tolist() == [0]
  # k=3, near-equal weights (high temperature): two votes for class 1 beat one for class 0.
  assert probe.knn_predict(train, labels, query, k=3, temperature=100.0).tolist() == [1]
  # k=3, sharp weights: exp((0.95 - 0.946) / 1e-3) ~ 55 > 1 + exp(-132): class 0 wins.
  assert probe.knn_predict(train, labels, query, k=3, temperature=1e-3).tolist() == [0]
  acc = probe.knn_accuracy(train, labels, np.concatenate([query, [[0.0, 1.0]]]),
                           np.array([0, 1]), k=1)
  assert acc == {"knn1_top1": 100.0}


@pytest.mark.parametrize("k", [1, 20])
def test_knn_is_perfect_on_separable_clusters(k):
  """Three tight clusters far apart in angle: every neighbour of a test point is its class."""
  train_x, train_y = _blobs(30, 0)
  test_x, test_y = _blobs(10, 1)
  assert probe.knn_accuracy(train_x, train_y, test_x, test_y, k=k) == {f"knn{k}_top1": 100.0}


def test_knn_blocks_do_not_change_predictions():
  train_x, train_y = _blobs(20, 4)
  test_x, _ = _blobs(7, 5)
  whole = probe.knn_predict(train_x, train_y, test_x, k=5)
  blocked = probe.knn_predict(train_x, train_y, test_x, k=5, block=2)
  np.testing.assert_array_equal(whole, blocked)


def test_bad_inputs_say_what_is_wrong():
  x, y = _blobs(3, 0)
  with pytest.raises(ValueError, match="labels must be class indices"):
    probe.linear_probe(x, -np.ones_like(y), x, y)
  with pytest.raises(ValueError, match="k=50"):
    probe.knn_predict(x, y, x, k=50)
  with pytest.raises(ValueError, match="l2 must be >= 0"):
    probe.linear_probe(x, y, x, y, l2=-1.0)
