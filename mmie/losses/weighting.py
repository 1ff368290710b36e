"""Weighted sums of named loss terms: `combine` and its weightings.

``combine`` turns several `Loss` objects into one. Each term's weight is a number or an optax
schedule evaluated at ``step`` (the hybrid contrastive -> VICReg curriculum is two linear
schedules, not a class). A *weighting* rescales the weighted terms further: ``static``
(none), ``inverse_running_loss`` (balance terms by their running magnitude) or
``uncertainty`` (Kendall et al. 2018 homoscedastic uncertainty).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mmie.losses.core import Inputs, Loss, Metrics, has_state

Array = jax.Array
Schedule = Callable[[Array], Array]


class Term(NamedTuple):
  """One named term: its `Loss`, its weight (number or schedule) and input renames.

  ``inputs`` maps the head's argument name to the task input that feeds it, e.g.
  ``{"z_a": "p_a", "z_b": "z_b"}`` to compare the ``ssl`` task's predictor output of view a
  with view b's projection.
  """

  loss: Loss
  weight: float | Schedule = 1.0
  inputs: Mapping[str, str] = {}


class Weighting(NamedTuple):
  """``init(names) -> state``; ``apply(losses, weights, state) -> (total, weights, state)``.

  ``losses`` and ``weights`` are dicts keyed by term name; the returned weights are the
  effective ones (logged as ``<term>/weight``).
  """

  init: Callable[[tuple[str, ...]], Any]
  apply: Callable[..., tuple[Array, dict[str, Array], Any]]


def static() -> Weighting:
  """``sum_k w_k(step) L_k``."""

  def apply(losses, weights, state):
    return sum(weights[k] * losses[k] for k in losses), weights, state

  return Weighting(lambda names: (), apply)


def inverse_running_loss(decay: float = 0.99, eps: float = 1e-8) -> Weighting:
  """Balances terms by magnitude: ``w_k * mean_j r_j / r_k`` with ``r`` a running loss mean.

  ``r`` is a bias-corrected EMA of each term's detached value (the prototype's multitask
  "inverse running loss" weighting); every term then contributes about equally.
  """
  if not 0 <= decay < 1:
    raise ValueError(f"inverse_running_loss: decay must be in [0, 1), got {decay!r}.")

  def init(names):
    return {"running": {k: jnp.zeros((), jnp.float32) for k in names},
            "count": jnp.zeros((), jnp.int32)}

  def apply(losses, weights, state):
    count = state["count"] + 1
    correction = 1.0 - decay ** count.astype(jnp.float32)
    running = {k: decay * state["running"][k]
               + (1 - decay) * jax.lax.stop_gradient(losses[k]).astype(jnp.float32)
               for k in losses}
    level = {k: jnp.abs(r) / correction + eps for k, r in running.items()}
    mean_level = sum(level.values()) / len(level)
    effective = {k: weights[k] * mean_level / level[k] for k in losses}
    total = sum(effective[k] * losses[k] for k in losses)
    return total, effective, {"running": running, "count": count}

  return Weighting(init, apply)


def uncertainty(learning_rate: float = 0.01, init_log_variance: float = 0.0) -> Weighting:
  """Kendall et al. 2018: ``sum_k exp(-s_k) w_k L_k + s_k`` with learned log-variances ``s``.

  ``s`` lives in the loss state and takes one SGD step per train step on the exact gradient
  ``1 - exp(-s_k) w_k L_k`` (it does not depend on the model, so it needs no backward pass);
  at its fixed point ``exp(s_k) = w_k L_k``.
  """
  if learning_rate <= 0:
    raise ValueError(f"uncertainty: learning_rate must be > 0, got {learning_rate!r}.")

  def init(names):
    return {"log_variance": {k: jnp.full((), init_log_variance, jnp.float32) for k in names}}

  def apply(losses, weights, state):
    s = state["log_variance"]
    precision = {k: jnp.exp(-s[k]) for k in losses}
    effective = {k: weights[k] * precision[k] for k in losses}
    total = sum(effective[k] * losses[k] + s[k] for k in losses)
    new_s = {k: s[k] - learning_rate * (1.0 - precision[k] * jax.lax.stop_gradient(
        weights[k] * losses[k]).astype(jnp.float32)) for k in losses}
    return total, effective, {"log_variance": new_s}

  return Weighting(init, apply)


def _weight_at(weight: float | Schedule, step: Array) -> Array:
  return jnp.asarray(weight(step) if callable(weight) else weight)


def combine(terms: Mapping[str, Term], weighting: Weighting | None = None) -> Loss:
  """One `Loss` from named terms; state ``{"terms": {name: ...}, "weighting": ...}``.

  Metrics: ``loss`` (the total) and, per term, ``<term>/<metric>`` and ``<term>/weight``.
  """
  if not terms:
    raise ValueError("combine: needs at least one term.")
  weighting = weighting or static()
  names = tuple(terms)

  def term_inputs(inputs: Inputs, renames: Mapping[str, str], name: str) -> Inputs:
    missing = sorted(src for src in renames.values() if src not in inputs)
    if missing:
      raise KeyError(f"loss term {name!r} renames missing input(s) {missing}; inputs available: "
                     f"{sorted(inputs)}.")
    return {**inputs, **{arg: inputs[src] for arg, src in renames.items()}}

  def init(example_inputs: Inputs) -> dict[str, Any]:
    term_states = {k: t.loss.init(term_inputs(example_inputs, t.inputs, k))
                   for k, t in terms.items()}
    state = {"terms": {k: v for k, v in term_states.items() if has_state(v)}}
    weighting_state = weighting.init(names)
    if has_state(weighting_state):
      state["weighting"] = weighting_state
    return {k: v for k, v in state.items() if has_state(v)}

  def apply(inputs: Inputs, loss_state: Any, *, step: Array, rng: Array
            ) -> tuple[Array, Metrics, dict[str, Any]]:
    states = loss_state.get("terms", {})
    losses, metrics, new_terms = {}, {}, {}
    for i, (k, t) in enumerate(terms.items()):
      value, term_metrics, term_state = t.loss.apply(
          term_inputs(inputs, t.inputs, k), states.get(k, {}), step=step,
          rng=jax.random.fold_in(rng, i))
      losses[k] = value
      metrics.update({f"{k}/{m}": v for m, v in term_metrics.items()})
      if has_state(term_state):
        new_terms[k] = term_state
    weights = {k: _weight_at(t.weight, step) for k, t in terms.items()}
    total, effective, weighting_state = weighting.apply(losses, weights,
                                                        loss_state.get("weighting", ()))
    metrics.update({f"{k}/weight": w for k, w in effective.items()})
    new_state = {"terms": new_terms}
    if has_state(weighting_state):
      new_state["weighting"] = weighting_state
    return total, {"loss": total, **metrics}, {k: v for k, v in new_state.items() if has_state(v)}

  return Loss(init, apply)
