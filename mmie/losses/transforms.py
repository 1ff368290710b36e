"""Input-rewriting transforms: negative re-weighting, temperature rules, execution forms.

`hard_negatives`, `chunked` and `global_negatives` write static options the contrastive
heads take by name (``hard_negatives``, ``block_size``, ``axis_name``); a head that does not
take an option a transform writes is a build-time error, never a silent no-op. The two
temperature transforms write ``logit_scale`` (CLIP/SigLIP) or ``temperature`` (SSL heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mmie.losses.core import Inputs, Transform, require_state, stateless
from mmie.losses.pairwise import HARD_NEGATIVE_MODES, HardNegatives

Array = jax.Array
TEMPERATURE_OUTPUTS = ("logit_scale", "temperature")


def hard_negatives(mode: str = "importance", beta: float = 1.0, tau_plus: float = 0.0,
                   fraction: float = 0.1, margin: float = 0.2) -> Transform:
  """Re-weights negatives toward hard ones (Robinson et al. 2021; top-fraction; semi-hard).

  See `HardNegatives` for the three modes. ``beta`` >= 0 concentrates the importance weights
  on similar negatives (0 recovers the plain loss); ``tau_plus`` in [0, 1) is the class prior
  of the debiased estimator; ``fraction`` in (0, 1] the share of candidates kept;
  ``margin`` >= 0 the semi-hard band width in cosine units.
  """
  if mode not in HARD_NEGATIVE_MODES:
    raise ValueError(f"hard_negatives: unknown mode {mode!r}; choose one of {HARD_NEGATIVE_MODES}.")
  checks = [("beta", beta, beta >= 0, ">= 0"),
            ("tau_plus", tau_plus, 0 <= tau_plus < 1, "in [0, 1)"),
            ("fraction", fraction, 0 < fraction <= 1, "in (0, 1]"),
            ("margin", margin, margin >= 0, ">= 0")]
  for name, value, ok, allowed in checks:
    if not ok:
      raise ValueError(f"hard_negatives: {name}={value!r} must be {allowed}.")
  options = HardNegatives(mode, float(beta), float(tau_plus), float(fraction), float(margin))
  return stateless(lambda inputs: {**inputs, "hard_negatives": options})


def chunked(block_size: int = 1024) -> Transform:
  """Computes contrastive rows in blocks: at most ``block_size x candidates`` logits live.

  Exact (each block holds complete rows); the backward pass recomputes each block's logits.
  """
  if not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"chunked: block_size must be a positive int, got {block_size!r}.")
  return stateless(lambda inputs: {**inputs, "block_size": block_size})


def global_negatives(axis: str | Sequence[str] = "data") -> Transform:
  """Negatives from every device of mesh ``axis``, gradients flowing back (see distributed.py)."""
  axis_name = axis if isinstance(axis, str) else tuple(axis)
  if not axis_name:
    raise ValueError(f"global_negatives: axis must name a mesh axis, got {axis!r}.")
  return stateless(lambda inputs: {**inputs, "axis_name": axis_name})


def _check_output(output: str, transform: str) -> None:
  if output not in TEMPERATURE_OUTPUTS:
    raise ValueError(f"{transform}: output must be one of {TEMPERATURE_OUTPUTS}, got {output!r}.")


def _write(inputs: Inputs, output: str, temperature: Array) -> Inputs:
  inputs[output] = 1.0 / temperature if output == "logit_scale" else temperature
  return inputs


def positive_negative_gap(a: Array, b: Array) -> Array:
  """Mean cosine of matched pairs minus mean cosine of unmatched pairs, in O(batch * dim)."""
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  n = a.shape[0]
  matched = jnp.sum(a * b)
  unmatched = jnp.sum(jnp.sum(a, 0) * jnp.sum(b, 0)) - matched
  return matched / n - unmatched / (n * (n - 1))


def dynamic_temperature(min_temperature: float = 0.03, max_temperature: float = 0.2,
                        target_gap: float = 0.5, momentum: float = 0.9,
                        pair: Sequence[str] = ("image_emb", "text_emb"),
                        output: str = "logit_scale") -> Transform:
  """The prototype's gap-driven temperature: sharpen as positives separate from negatives.

  gap = mean matched cosine - mean unmatched cosine of the ``pair`` inputs (detached), kept
  as a bias-corrected EMA; ``t = max_t + (min_t - max_t) * clip(gap / target_gap, 0, 1)``:
  no separation -> ``max_temperature`` (soft), ``target_gap`` or more -> ``min_temperature``.
  """
  _check_output(output, "dynamic_temperature")
  if not 0 < min_temperature <= max_temperature:
    raise ValueError(f"dynamic_temperature: need 0 < min_temperature <= max_temperature, got "
                     f"{min_temperature!r} and {max_temperature!r}.")
  if target_gap <= 0 or not 0 <= momentum < 1:
    raise ValueError(f"dynamic_temperature: need target_gap > 0 and momentum in [0, 1), got "
                     f"{target_gap!r} and {momentum!r}.")
  first, second = tuple(pair)

  def init(example: Inputs) -> dict[str, Array]:
    for name in (first, second):
      if name not in example:
        raise KeyError(f"dynamic_temperature: pair input {name!r} missing; inputs: "
                       f"{sorted(example)}.")
    return {"gap_ema": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32)}

  def apply(inputs: Inputs, state: Any, *, step: Array, rng: Array) -> tuple[Inputs, Any]:
    del step, rng
    require_state(state, "dynamic_temperature")
    gap = jax.lax.stop_gradient(positive_negative_gap(inputs[first], inputs[second]))
    ema = momentum * state["gap_ema"] + (1.0 - momentum) * gap.astype(jnp.float32)
    count = state["count"] + 1
    corrected = ema / (1.0 - momentum ** count.astype(jnp.float32))
    progress = jnp.clip(corrected / target_gap, 0.0, 1.0)
    temperature = max_temperature + (min_temperature - max_temperature) * progress
    return _write(inputs, output, temperature), {"gap_ema": ema, "count": count}

  return Transform(init, apply)


def learnable_temperature(source: str = "log_logit_scale", output: str = "temperature",
                          max_logit_scale: float = 100.0) -> Transform:
  """CLIP's learnable temperature for any head: ``logit_scale = min(exp(x), max_logit_scale)``.

  ``x`` is a scalar *model parameter* the task exposes as input ``source`` (learned by the
  train step's optimizer like any weight); this transform applies the parameterisation and
  clamp of Radford et al. 2021 and writes ``logit_scale`` or ``temperature = 1/logit_scale``.
  """
  _check_output(output, "learnable_temperature")
  if max_logit_scale <= 0:
    raise ValueError(f"learnable_temperature: max_logit_scale must be > 0, got "
                     f"{max_logit_scale!r}.")

  def rewrite(inputs: Inputs) -> Inputs:
    if source not in inputs:
      raise KeyError(f"learnable_temperature needs input {source!r} (a scalar model parameter "
                     f"the task exposes); inputs available: {sorted(inputs)}.")
    scale = jnp.minimum(jnp.exp(inputs[source]), max_logit_scale)
    return _write(inputs, output, 1.0 / scale)

  return stateless(rewrite)
