"""The kNN and logistic probes against scikit-learn on one small fixed problem.

scikit-learn's ``KNeighborsClassifier`` with a cosine metric and a weight function
``exp(sim / T)`` is Wu et al.'s weighted vote, and ``LogisticRegression(C=1 / (l2 N))`` with
lbfgs minimises the same objective as ``probe.fit_logistic``. Both are independent
implementations of the formulas, so predictions must agree example for example.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from mmie.evaluate import probe

CLASSES, DIM = 4, 6


@pytest.fixture(scope="module")
def problem():
  """Overlapping Gaussian classes, so that neither probe is trivially perfect."""
  rng = np.random.default_rng(11)
  centres = rng.normal(scale=1.5, size=(CLASSES, DIM))
  def draw(n):
    y = rng.integers(CLASSES, size=n)
    return centres[y] + rng.normal(size=(n, DIM)), y
  (train_x, train_y), (test_x, test_y) = draw(300), draw(200)
  return train_x, train_y, test_x, test_y


@pytest.mark.parametrize("k", [1, 20])
def test_knn_agrees_with_scikit_learn(problem, k):
  train_x, train_y, test_x, _ = problem
  temperature = 0.07
  # sklearn's cosine distance is 1 - sim; weights exp(sim / T) = exp((1 - d) / T).
  reference = KNeighborsClassifier(
      n_neighbors=k, metric="cosine", algorithm="brute",
      weights=lambda d: np.exp((1.0 - d) / temperature)).fit(train_x, train_y)
  ours = probe.knn_predict(train_x, train_y, test_x, k=k, temperature=temperature)
  np.testing.assert_array_equal(ours, reference.predict(test_x))


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_logistic_probe_agrees_with_scikit_learn(problem, l2):
  train_x, train_y, test_x, _ = problem
  weights, bias = probe.fit_logistic(train_x, train_y, CLASSES, l2, tol=1e-6)
  reference = LogisticRegression(C=1.0 / (l2 * len(train_y)), tol=1e-10,
                                 max_iter=10_000).fit(train_x, train_y)
  # Same convex objective: the same minimiser, to the float32 solve's precision.
  scale = np.abs(reference.coef_).max()
  np.testing.assert_allclose(weights.T, reference.coef_, atol=2e-3 * scale)
  np.testing.assert_allclose(bias, reference.intercept_ - reference.intercept_.mean()
                             + bias.mean(), atol=2e-3 * scale)
  ours = probe.predict_logistic((weights, bias), test_x)
  agree = np.mean(ours == reference.predict(test_x))
  assert agree >= 0.99, agree  # Ties within the solve's precision may flip an example.
