"""Representation diagnostics against the papers' formulas written out in plain numpy."""

import logging

import numpy as np
import pytest

from mmie.evaluate import representation as rep


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pairs():
  rng = np.random.default_rng(0)
  x = _unit(rng.normal(size=(23, 6)))
  y = _unit(x + 0.3 * rng.normal(size=x.shape))
  return x, y


def test_alignment_is_mean_squared_distance_of_pairs(pairs):
  x, y = pairs
  expected = sum(np.sum((x[i] - y[i]) ** 2) for i in range(len(x))) / len(x)
  assert rep.alignment(x, y) == pytest.approx(expected, rel=1e-12)
  # alpha=1: mean distance.
  assert rep.alignment(x, y, alpha=1) == pytest.approx(
      np.mean([np.linalg.norm(x[i] - y[i]) for i in range(len(x))]), rel=1e-12)


@pytest.mark.parametrize("block", [1, 4, 1024])
def test_uniformity_matches_wang_isola_pdist_formula(pairs, block):
  x, _ = pairs
  # Wang & Isola: torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log(), over pairs i < j.
  values = [np.exp(-2.0 * np.sum((x[i] - x[j]) ** 2))
            for i in range(len(x)) for j in range(i + 1, len(x))]
  assert rep.uniformity(x, t=2.0, block=block) == pytest.approx(np.log(np.mean(values)),
                                                                rel=1e-10)


def test_uniformity_of_antipodal_points_and_identical_points():
  # Two antipodal points: distance^2 = 4 -> log exp(-8) = -8.
  assert rep.uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
  # Collapsed: every distance is 0 -> log 1 = 0, the worst possible value.
  assert rep.uniformity(np.tile([[0.6, 0.8]], (5, 1))) == pytest.approx(0.0)


def test_effective_rank_of_known_matrices():
  # diag(3, 1): p = (0.75, 0.25), exp(H) = exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.75476...
  assert rep.effective_rank(np.diag([3.0, 1.0])) == pytest.approx(1.7547654, rel=1e-6)
  assert rep.effective_rank(np.eye(5)) == pytest.approx(5.0)
  rank_one = np.outer(np.arange(1, 5), np.arange(1, 4)).astype(float)
  assert rep.effective_rank(rank_one) == pytest.approx(1.0)
  # Invariant to scale and to rotations.
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
  m = np.diag([4.0, 2.0, 1.0, 0.5])
  assert rep.effective_rank(7 * q @ m) == pytest.approx(rep.effective_rank(m))


def test_modality_gap_of_two_clusters():
  image = np.tile([[1.0, 0.0]], (4, 1))
  text = np.tile([[0.0, 1.0]], (3, 1))
  assert rep.modality_gap(image, text) == pytest.approx(np.sqrt(2.0))
  assert rep.modality_gap(image, image) == 0.0


def test_collapse_is_measured_and_warned(caplog):
  rng = np.random.default_rng(2)
  healthy = _unit(rng.normal(size=(200, 16)))
  collapsed = _unit(np.tile(rng.normal(size=(1, 16)), (200, 1)) + 1e-4 * rng.normal(size=(200, 16)))
  summary = rep.collapse_summary(collapsed)
  assert summary["collapsed_fraction"] == 1.0
  assert rep.collapse_summary(healthy)["collapsed_fraction"] == 0.0
  with caplog.at_level(logging.WARNING):
    metrics = rep.representation_metrics(healthy, healthy)
  assert not [r for r in caplog.records if "collapsed" in r.message]
  assert metrics["alignment"] == pytest.approx(0.0)
  assert metrics["modality_gap"] == pytest.approx(0.0)
  with caplog.at_level(logging.WARNING):
    rep.representation_metrics(collapsed, healthy)
  messages = [r.message for r in caplog.records if "collapsed" in r.message]
  assert len(messages) == 1 and messages[0].startswith("image embeddings look collapsed")


def test_alignment_uses_each_captions_own_image():
  image = np.eye(3)
  text = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
  metrics = rep.representation_metrics(image, text, np.array([0, 0, 2, 1]))
  assert metrics["alignment"] == pytest.approx(0.0)


def test_bad_shapes_are_reported():
  with pytest.raises(ValueError, match="paired rows"):
    rep.alignment(np.ones((3, 2)), np.ones((4, 2)))
  with pytest.raises(ValueError, match=r"\[N >= 2, D\]"):
    rep.uniformity(np.ones((1, 2)))
