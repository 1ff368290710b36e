"""Preference and policy heads against their papers' formulas written in numpy."""

import jax
import numpy as np
import pytest

from mmie import losses
from mmie.losses import alignment
from tests.tolerance import float32_sum_atol

B, T = 7, 9


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)  # log(1 / (1 + e^-x)), stable.


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_bradley_terry_is_the_reward_model_likelihood():
  rng = _rng()
  rc, rr = (rng.normal(size=B).astype(np.float32) for _ in range(2))
  loss, metrics = jax.jit(alignment.bradley_terry)(rc, rr, margin=0.5)
  diff = rc.astype(np.float64) - rr
  want = np.mean(-_log_sigmoid(diff - 0.5))
  np.testing.assert_allclose(loss, want, rtol=0, atol=float32_sum_atol(want, B))
  assert float(metrics["accuracy"]) == pytest.approx(np.mean(diff > 0), rel=1e-6)
  np.testing.assert_allclose(metrics["reward_margin"], diff.mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="one shape"):
    alignment.bradley_terry(rc, rr[:3])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_dpo_is_the_papers_loss(label_smoothing):
  rng = _rng(1)
  pc, pr, rc, rr = (rng.normal(-20, 3, size=B).astype(np.float32) for _ in range(4))
  beta = 0.2
  loss, metrics = jax.jit(lambda *a: alignment.dpo(*a, beta=beta,
                                                   label_smoothing=label_smoothing))(
                                                       pc, pr, rc, rr)
  h = beta * ((pc.astype(np.float64) - rc) - (pr.astype(np.float64) - rr))
  want = np.mean(-(1 - label_smoothing) * _log_sigmoid(h) - label_smoothing * _log_sigmoid(-h))
  # The inputs are ~20 in size: their differences carry float32 rounding of that size.
  atol = float32_sum_atol(20.0 * beta, B * 4)
  np.testing.assert_allclose(loss, want, rtol=0, atol=atol)
  np.testing.assert_allclose(metrics["reward_margin"], h.mean(), rtol=0, atol=atol)
  np.testing.assert_allclose(metrics["chosen_reward"], (beta * (pc - rc.astype(np.float64)))
                             .mean(), rtol=0, atol=atol)
  assert float(metrics["reward_accuracy"]) == pytest.approx(np.mean(h > 0), rel=1e-6)


def test_dpo_at_the_reference_is_log_2():
  """A policy equal to its reference has h = 0: the loss is log 2 whatever the smoothing."""
  x = _rng(2).normal(size=B).astype(np.float32)
  for e in (0.0, 0.3):
    loss, _ = alignment.dpo(x, x + 1, x, x + 1, beta=0.5, label_smoothing=e)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)


def test_ppo_clip_is_the_clipped_surrogate():
  rng = _rng(3)
  old = rng.normal(-2, 1, size=(B, T)).astype(np.float32)
  new = (old + rng.normal(0, 0.3, size=(B, T))).astype(np.float32)
  adv = rng.normal(size=(B, T)).astype(np.float32)
  mask = (rng.uniform(size=(B, T)) < 0.7).astype(np.float32)
  loss, metrics = jax.jit(lambda *a: alignment.ppo_clip(*a, mask=mask, clip_eps=0.2))(
      new, old, adv)
  ratio = np.exp(new.astype(np.float64) - old)
  surrogate = np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)
  want = -np.sum(surrogate * mask) / mask.sum()
  np.testing.assert_allclose(loss, want, rtol=0, atol=float32_sum_atol(np.abs(surrogate).max(),
                                                                       B * T))
  np.testing.assert_allclose(metrics["clip_fraction"],
                             np.sum((np.abs(ratio - 1) > 0.2) * mask) / mask.sum(), rtol=1e-6)
  k3 = (ratio - 1) - np.log(ratio)
  np.testing.assert_allclose(metrics["approx_kl"], np.sum(k3 * mask) / mask.sum(), rtol=0,
                             atol=float32_sum_atol(k3.max(), B * T) + 1e-7)


def test_ppo_clip_gradient_vanishes_outside_the_trust_region():
  """A positive advantage with the ratio already above 1 + eps gives no gradient (the clip)."""
  old = np.zeros(4, np.float32)
  adv = np.ones(4, np.float32)
  new = np.asarray([0.0, 0.1, 0.5, 1.0], np.float32)  # ratios 1, 1.105, 1.65, 2.72
  grad = jax.grad(lambda lp: alignment.ppo_clip(lp, old, adv, clip_eps=0.2)[0])(new)
  np.testing.assert_allclose(grad[2:], 0.0)
  np.testing.assert_allclose(grad[:2], -np.exp(new[:2]) / 4, rtol=1e-6)


def _gae_numpy(rewards, values, mask, gamma, lam, bootstrap):
  """The paper's recursion, one row and one step at a time, in float64."""
  adv = np.zeros_like(rewards, np.float64)
  for b in range(rewards.shape[0]):
    running = 0.0
    for t in reversed(range(rewards.shape[1])):
      if not mask[b, t]:
        running = 0.0
        continue
      last = t == rewards.shape[1] - 1
      next_real = not last and mask[b, t + 1]
      next_value = bootstrap[b] if last else (values[b, t + 1] if next_real else 0.0)
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      running = delta + gamma * lam * (running if next_real else 0.0)
      adv[b, t] = running
  return adv


def test_gae_matches_the_recursion_with_episode_ends():
  rng = _rng(4)
  rewards = rng.normal(size=(B, T)).astype(np.float32)
  values = rng.normal(size=(B, T)).astype(np.float32)
  lengths = rng.integers(1, T + 1, size=B)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  mask[0, :2] = 0  # A prompt part that is not the policy's.
  bootstrap = rng.normal(size=B).astype(np.float32)
  adv, returns = jax.jit(lambda *a: alignment.gae(*a[:2], gamma=0.97, lam=0.9, mask=a[2],
                                                  bootstrap_value=a[3]))(
                                                      rewards, values, mask, bootstrap)
  want = _gae_numpy(rewards, values, mask, 0.97, 0.9, bootstrap)
  atol = float32_sum_atol(np.abs(want).max(), T)
  np.testing.assert_allclose(adv, want, rtol=0, atol=atol)
  np.testing.assert_allclose(returns, (want + values) * mask, rtol=0, atol=atol)


def test_gae_with_lambda_one_is_the_discounted_return_minus_value():
  rewards = np.asarray([[1.0, 0.0, 2.0]], np.float32)
  values = np.asarray([[0.5, 0.25, 1.0]], np.float32)
  adv, returns = alignment.gae(rewards, values, gamma=0.5, lam=1.0)
  discounted = np.asarray([1 + 0.5 * 0 + 0.25 * 2, 0 + 0.5 * 2, 2.0])
  np.testing.assert_allclose(returns[0], discounted, rtol=1e-6)
  np.testing.assert_allclose(adv[0], discounted - values[0], rtol=1e-6)


def test_heads_build_from_their_names():
  loss = losses.build_loss({"name": "dpo(beta=0.5)", "transforms": ()})
  x = {k: np.zeros(3, np.float32) for k in ("policy_chosen_logps", "policy_rejected_logps",
                                            "reference_chosen_logps",
                                            "reference_rejected_logps")}
  state = loss.init(x)
  value, metrics, _ = loss.apply(x, state, step=0, rng=jax.random.key(0))
  np.testing.assert_allclose(value, np.log(2.0), rtol=1e-6)
  assert "reward_accuracy" in metrics
