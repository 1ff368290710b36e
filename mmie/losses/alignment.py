"""Heads for learning from preferences and rewards: a Bradley-Terry reward model, DPO, and PPO's
clipped surrogate, with generalised advantage estimation (GAE) for the advantages.

Each head is a pure function of named arrays returning ``(loss, metrics)`` like every other
head in the library (docs/losses.md), so a reward-model, DPO or PPO task is a config: the task
provides the named inputs, the head is chosen by name. ``gae`` is not a head: a PPO task calls
it on a rollout's rewards and values to make the head's ``advantages``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))


def _masked_mean(x: Array, mask: Array | None) -> Array:
  if mask is None:
    return jnp.mean(x)
  weight = jnp.broadcast_to(mask, x.shape).astype(x.dtype)
  return jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def bradley_terry(reward_chosen: Array, reward_rejected: Array, *,
                  margin: float | Array = 0.0) -> tuple[Array, Metrics]:
  """Reward-model loss on preference pairs (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1):
  ``mean -log sigmoid(r_chosen - r_rejected - margin)``.

  ``reward_chosen`` / ``reward_rejected`` are the scalar rewards ``[B]`` of the preferred and
  the other response to the same prompt. Metrics: ``accuracy`` (the fraction of pairs ranked
  right) and the mean ``reward_margin``.
  """
  rc, rr = _f32(reward_chosen), _f32(reward_rejected)
  if rc.shape != rr.shape:
    raise ValueError(f"bradley_terry: reward_chosen {rc.shape} and reward_rejected {rr.shape}"
                     " must have one shape [B].")
  diff = rc - rr
  loss = jnp.mean(-jax.nn.log_sigmoid(diff - margin))
  return loss, {"loss": loss, "accuracy": jnp.mean((diff > 0).astype(diff.dtype)),
                "reward_margin": jnp.mean(diff)}


def dpo(policy_chosen_logps: Array, policy_rejected_logps: Array,
        reference_chosen_logps: Array, reference_rejected_logps: Array, *,
        beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[Array, Metrics]:
  """Direct Preference Optimization (Rafailov et al. 2023, eq. 7), with conservative label
  smoothing e (Mitchell 2023): with ``h = beta * [(pi_c - ref_c) - (pi_r - ref_r)]``,
  ``loss = mean -(1 - e) log sigmoid(h) - e log sigmoid(-h)``.

  Inputs are each response's summed token log-probabilities ``[B]`` under the policy and the
  frozen reference. Metrics: the implicit rewards ``beta * (pi - ref)`` of both responses, their
  ``reward_margin`` and ``reward_accuracy`` (margin > 0).
  """
  pc, pr, rc, rr = map(_f32, (policy_chosen_logps, policy_rejected_logps,
                              reference_chosen_logps, reference_rejected_logps))
  if not pc.shape == pr.shape == rc.shape == rr.shape:
    raise ValueError("dpo: the four log-probability inputs must have one shape [B], got "
                     f"{[tuple(x.shape) for x in (pc, pr, rc, rr)]}.")
  chosen, rejected = beta * (pc - rc), beta * (pr - rr)
  h = chosen - rejected
  loss = jnp.mean(-(1.0 - label_smoothing) * jax.nn.log_sigmoid(h)
                  - label_smoothing * jax.nn.log_sigmoid(-h))
  return loss, {"loss": loss, "chosen_reward": jnp.mean(chosen),
                "rejected_reward": jnp.mean(rejected), "reward_margin": jnp.mean(h),
                "reward_accuracy": jnp.mean((h > 0).astype(h.dtype))}


def ppo_clip(log_probs: Array, old_log_probs: Array, advantages: Array, *,
             mask: Array | None = None, clip_eps: float = 0.2) -> tuple[Array, Metrics]:
  """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised:
  with ``rho = exp(log_probs - old_log_probs)``,
  ``loss = -mean_mask min(rho A, clip(rho, 1 - eps, 1 + eps) A)``.

  Inputs are per-token ``[B, T]`` (or per-action ``[B]``) log-probabilities of the sampled
  actions under the current and the rollout policy, and their advantages; ``mask`` is 1 on
  generated tokens. Metrics: ``clip_fraction`` (tokens whose ratio left the trust region) and
  ``approx_kl``, the k3 estimator ``mean (rho - 1) - log rho`` of KL(old || new) (Schulman 2020).
  """
  lp, old, adv = _f32(log_probs), _f32(old_log_probs), _f32(advantages)
  if not lp.shape == old.shape == adv.shape:
    raise ValueError("ppo_clip: log_probs, old_log_probs and advantages must have one shape, "
                     f"got {[tuple(x.shape) for x in (lp, old, adv)]}.")
  log_ratio = lp - old
  ratio = jnp.exp(log_ratio)
  surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
  loss = -_masked_mean(surrogate, mask)
  clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(ratio.dtype)
  return loss, {"loss": loss, "clip_fraction": _masked_mean(clipped, mask),
                "approx_kl": _masked_mean((ratio - 1.0) - log_ratio, mask)}


def gae(rewards: Array, values: Array, *, gamma: float = 1.0, lam: float = 0.95,
        mask: Array | None = None,
        bootstrap_value: Array | None = None) -> tuple[Array, Array]:
  """Generalised advantage estimation (Schulman et al. 2016, eq. 16) along the last axis.

  ``rewards`` and ``values`` are ``[..., T]``; ``mask`` (1 = a real step) ends each episode
  at its last real step: a masked step contributes nothing and does not bootstrap.
  ``bootstrap_value`` ``[...]`` is V of the state after step ``T - 1`` (0 when the episode
  ended there, as a completed response does). Returns ``(advantages, returns)`` with
  ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}`` and
  ``returns = A + V`` (the value head's targets); both are 0 where ``mask`` is 0.
  """
  r, v = _f32(rewards), _f32(values)
  if r.shape != v.shape:
    raise ValueError(f"gae: rewards {r.shape} and values {v.shape} must have one shape.")
  m = jnp.ones_like(r) if mask is None else jnp.broadcast_to(mask, r.shape).astype(r.dtype)
  last = jnp.zeros(r.shape[:-1], r.dtype) if bootstrap_value is None else _f32(bootstrap_value)
  # V_{t+1}, zero past each episode's last real step (the next step is masked or absent).
  next_mask = jnp.concatenate([m[..., 1:], jnp.ones_like(m[..., :1])], axis=-1)
  next_values = jnp.concatenate([v[..., 1:], last[..., None]], axis=-1) * next_mask
  deltas = (r + gamma * next_values - v) * m

  def step(carry, x):
    delta, keep, keep_next = x
    advantage = delta + gamma * lam * carry * keep_next
    return advantage * keep, advantage * keep

  xs = (jnp.moveaxis(deltas, -1, 0), jnp.moveaxis(m, -1, 0), jnp.moveaxis(next_mask, -1, 0))
  _, advantages = jax.lax.scan(step, jnp.zeros(r.shape[:-1], r.dtype), xs, reverse=True)
  advantages = jnp.moveaxis(advantages, 0, -1)
  return advantages, (advantages + v) * m
