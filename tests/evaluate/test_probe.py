"""Linear probe (ridge) and kNN on data whose answers are known."""

import numpy as np
import pytest
import scipy.linalg

from mmie.evaluate import probe


def _blobs(n_per_class, seed):
  rng = np.random.default_rng(seed)
  centres = np.array([[4.0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0], [0, 0, 4.0, 0, 0]])
  x = np.concatenate([c + 0.5 * rng.normal(size=(n_per_class, 5)) for c in centres])
  y = np.repeat(np.arange(3), n_per_class)
  return x, y


def test_ridge_probe_separates_separable_data():
  train_x, train_y = _blobs(30, 0)
  test_x, test_y = _blobs(10, 1)
  result = probe.linear_probe(train_x, train_y, test_x, test_y)
  assert result["linear_probe_top1"] == 100.0
  assert result["linear_probe_l2"] in (1e-3, 1e-2, 1e-1, 1.0)
  # Shuffled labels: no better than chance by much (3 classes).
  rng = np.random.default_rng(3)
  shuffled = probe.linear_probe(train_x, rng.permutation(train_y), test_x, test_y, l2=1.0)
  assert shuffled["linear_probe_top1"] < 70.0


def test_ridge_weights_match_augmented_least_squares():
  # Ridge = least squares on [X 1; sqrt(l2) I 0] against [Y; 0] (bias unregularised).
  x, y = _blobs(8, 2)
  l2 = 0.7
  weights = probe.fit_ridge(x, y, 3, l2)
  x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  reg = np.concatenate([np.sqrt(l2) * np.eye(5), np.zeros((5, 1))], axis=1)
  targets = np.concatenate([np.eye(3)[y], np.zeros((5, 3))])
  expected = scipy.linalg.lstsq(np.concatenate([x1, reg]), targets)[0]
  np.testing.assert_allclose(weights, expected, rtol=1e-8, atol=1e-10)


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
