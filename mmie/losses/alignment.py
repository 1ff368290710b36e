"""Heads for learning from preferences and rewards: a Bradley-Terry reward model, DPO, and PPO's
clipped surrogate, with generalised advantage estimation (GAE) for the advantages.

Each head is a pure function of named arrays returning ``(loss, metrics)`` like every other
head in the library (docs/losses.md), so a reward-model, DPO or PPO task is a config: the task
provides the named inputs, the head is chosen by name. ``gae``, ``kl_shaped_rewards`` and
``whiten`` are not heads: the PPO task calls them on a rollout to make the ``ppo`` head's
``advantages`` and ``returns``. ``ppo_rollout`` is the transform that keeps a rollout in the
loss state for several steps (PPO's epochs), calling the task's ``RolloutSource``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mmie.losses.core import Inputs, Transform, require_state

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


def whiten(x: Array, mask: Array | None = None, *, eps: float = 1e-8) -> Array:
  """``(x - mean) / sqrt(var + eps)`` over the masked entries (0 elsewhere): PPO's advantage
  normalisation, so the step size does not follow the reward's scale."""
  x = _f32(x)
  m = jnp.ones_like(x) if mask is None else jnp.broadcast_to(mask, x.shape).astype(x.dtype)
  mean = _masked_mean(x, m)
  var = _masked_mean(jnp.square(x - mean), m)
  return (x - mean) * jax.lax.rsqrt(var + eps) * m


def kl_shaped_rewards(score: Array, log_probs: Array, reference_log_probs: Array,
                      mask: Array, *, kl_coef: float) -> tuple[Array, Array]:
  """Per-token rewards of an RLHF rollout (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2):
  ``r_t = -kl_coef * (log pi_old - log pi_ref)_t`` on every generated token, plus the reward
  model's ``score`` ``[B]`` at each row's last generated token.

  The penalty is the per-token estimate of KL(pi_old || pi_ref) on the sampled tokens, so the
  policy is paid for the reward only as far as it stays near its reference. Inputs ``[B, T]``;
  ``mask`` is 1 on generated tokens. Returns ``(rewards, kl)``, both 0 where ``mask`` is 0.
  """
  lp, ref, s = _f32(log_probs), _f32(reference_log_probs), _f32(score)
  if lp.shape != ref.shape or lp.ndim != 2 or s.shape != lp.shape[:1]:
    raise ValueError("kl_shaped_rewards: log_probs and reference_log_probs must be [B, T] and "
                     f"score [B], got {lp.shape}, {ref.shape}, {s.shape}.")
  m = jnp.broadcast_to(mask, lp.shape).astype(lp.dtype)
  kl = (lp - ref) * m
  # The last generated token: the highest masked position (a row with none gets no score).
  positions = jnp.arange(lp.shape[1])
  last = jnp.max(jnp.where(m > 0, positions, -1), axis=1)
  at_last = (positions[None, :] == last[:, None]).astype(lp.dtype)
  return -kl_coef * kl + at_last * s[:, None], kl


def ppo(log_probs: Array, old_log_probs: Array, advantages: Array, values: Array,
        returns: Array, *, old_values: Array | None = None, mask: Array | None = None,
        entropy: Array | None = None, rollout_metrics: dict[str, Array] | None = None,
        clip_eps: float = 0.2, value_clip: float | None = 0.2, value_coef: float = 0.5,
        entropy_coef: float = 0.0) -> tuple[Array, Metrics]:
  """PPO's whole loss on a rollout (Schulman et al. 2017, eq. 9): the clipped surrogate
  (``ppo_clip``) + ``value_coef`` * value loss - ``entropy_coef`` * mean entropy.

  Value loss: ``0.5 mean_mask (V - R)^2``; with ``value_clip`` (and ``old_values``, the
  rollout's values) the pessimistic ``0.5 mean_mask max((V - R)^2, (V_clip - R)^2)``,
  ``V_clip = V_old + clip(V - V_old, -value_clip, value_clip)`` (as OpenAI's baselines ppo2).
  Inputs are per-token ``[B, T]``; ``returns`` are GAE's value targets. The ``ppo_rollout``
  transform writes every input from the task's rollout; ``rollout_metrics`` (the rollout's
  reward, KL, length) are reported beside the loss's own metrics.
  """
  policy_loss, metrics = ppo_clip(log_probs, old_log_probs, advantages, mask=mask,
                                  clip_eps=clip_eps)
  v, ret = _f32(values), _f32(returns)
  if v.shape != ret.shape:
    raise ValueError(f"ppo: values {v.shape} and returns {ret.shape} must have one shape.")
  squared = jnp.square(v - ret)
  if value_clip is not None and old_values is not None:
    old = _f32(old_values)
    clipped = old + jnp.clip(v - old, -value_clip, value_clip)
    squared = jnp.maximum(squared, jnp.square(clipped - ret))
  value_loss = 0.5 * _masked_mean(squared, mask)
  loss = policy_loss + value_coef * value_loss
  out = {"policy_loss": policy_loss, "value_loss": value_loss,
         "clip_fraction": metrics["clip_fraction"], "approx_kl": metrics["approx_kl"]}
  if entropy is not None:
    out["entropy"] = _masked_mean(_f32(entropy), mask)
    loss = loss - entropy_coef * out["entropy"]
  out.update({k: jnp.asarray(x) for k, x in dict(rollout_metrics or {}).items()})
  return loss, {"loss": loss, **out}


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class RolloutSource:
  """A task's two model calls for on-policy training, carried among the loss's inputs.

  ``collect() -> rollout`` samples from the current policy and scores it, with no gradient:
  a dict of arrays with ``tokens``, ``mask``, ``log_probs``, ``values``, ``advantages``,
  ``returns`` and ``metrics`` (scalars). ``evaluate(rollout)`` is the live policy on the
  rollout's tokens: ``log_probs``, ``values``, ``entropy`` (with gradient). A pytree without
  leaves, so the engine's maps over the inputs pass it through, and its closures keep the
  forward pass's traced parameters (the task and the loss run in one trace).
  """

  collect: Callable[[], dict[str, Any]]
  evaluate: Callable[[Mapping[str, Any]], dict[str, Array]]


def ppo_rollout(epochs: int = 1, source: str = "rollout") -> Transform:
  """Collects a rollout every ``epochs`` steps and keeps it in the loss state in between, so
  PPO optimises ``epochs`` consecutive steps on one batch of experience (the ratio moves away
  from 1 and the clip acts); ``epochs=1`` collects every step and keeps no state.

  Reads the task's ``RolloutSource`` input ``source``; writes the ``ppo`` head's inputs: the
  rollout's ``old_log_probs``, ``old_values``, ``advantages``, ``returns``, ``mask`` and
  ``rollout_metrics``, and the live ``log_probs``, ``values``, ``entropy``. Needs
  ``train.grad_accum_steps=1`` when ``epochs > 1``: the state holds one batch's rollout.
  """
  if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
    raise ValueError(f"ppo_rollout: epochs must be a positive int, got {epochs!r}.")

  def get_source(inputs: Mapping[str, Any]) -> RolloutSource:
    src = inputs.get(source)
    if not isinstance(src, RolloutSource):
      raise KeyError(f"ppo_rollout needs input {source!r}, a RolloutSource made by an "
                     f"on-policy task (task='ppo'); inputs available: {sorted(inputs)}.")
    return src

  def init(example: Inputs) -> Any:
    if epochs == 1:
      return ()
    shapes = jax.eval_shape(get_source(example).collect)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def apply(inputs: Inputs, state: Any, *, step: Array, rng: Array) -> tuple[Inputs, Any]:
    del rng  # The task's forward pass holds the step's randomness.
    src = get_source(inputs)
    if epochs == 1:
      rollout = src.collect()
    else:
      require_state(state, "ppo_rollout")
      fresh, kept = jax.eval_shape(src.collect), jax.eval_shape(lambda: state)
      if fresh != kept:
        raise ValueError("ppo_rollout(epochs > 1) keeps one whole batch's rollout, but this "
                         "step's rollout has other shapes (a micro-batch?): set "
                         "train.grad_accum_steps=1, or epochs=1.")
      rollout = jax.lax.cond(step % epochs == 0, src.collect, lambda: state)
    live = src.evaluate(rollout)
    inputs = {k: v for k, v in inputs.items() if k != source}
    inputs.update(log_probs=live["log_probs"], values=live["values"], entropy=live["entropy"],
                  old_log_probs=rollout["log_probs"], old_values=rollout["values"],
                  advantages=rollout["advantages"], returns=rollout["returns"],
                  mask=rollout["mask"], rollout_metrics=rollout["metrics"])
    return inputs, (rollout if epochs > 1 else ())

  return Transform(init, apply)
