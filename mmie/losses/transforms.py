"""Temperature transforms: they write ``logit_scale`` (CLIP/SigLIP) or ``temperature`` (SSL
heads) from state (a running statistic, or a learned value).

Static options of a head (negative re-weighting, blockwise rows, negatives gathered over a
mesh axis) are not transforms: they are the head's own arguments, set in its call-string
(``"clip(hard_negatives={'beta': 0.5}, block_size=1024, axis_name='data')"``), one way each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mmie.losses.core import Inputs, Transform, require_state, stateless

Array = jax.Array
TEMPERATURE_OUTPUTS = ("logit_scale", "temperature")


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
