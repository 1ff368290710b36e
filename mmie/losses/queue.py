"""MoCo's memory queue and momentum-encoder keys, as loss transforms.

Naming contract for a per-example embedding input ``X`` (``image_emb``, ``text_emb``, ``z_a``,
``z_b``): the task may provide ``X_momentum`` (the same embedding computed with
``TrainState.ema_params``). Both transforms write the head's one ``negatives`` input,
``{X: Candidates}`` (mmie/losses/pairwise.py): `momentum_keys` sets ``keys`` (the candidate
side of the contrastive head, no gradient); `memory_queue` sets ``queue`` and
``queue_valid`` (past keys used as extra negatives) and enqueues ``keys`` when present, else
``X``, detached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mmie.losses.core import Inputs, Transform, require_state
from mmie.losses.pairwise import Candidates

Array = jax.Array


def _names(inputs: Sequence[str] | str, transform: str) -> tuple[str, ...]:
  names = (inputs,) if isinstance(inputs, str) else tuple(inputs)
  if not names or not all(isinstance(n, str) and n for n in names):
    raise ValueError(f"{transform}: inputs must be a non-empty sequence of input names, got "
                     f"{inputs!r}.")
  return names


def _candidates(inputs: Inputs, name: str) -> Candidates:
  return dict(inputs.get("negatives") or {}).get(name, Candidates())


def _set_candidates(inputs: Inputs, name: str, candidates: Candidates) -> None:
  inputs["negatives"] = {**dict(inputs.get("negatives") or {}), name: candidates}


def _get(inputs: Inputs, name: str, transform: str, why: str) -> Array:
  if name not in inputs:
    raise KeyError(f"{transform} needs input {name!r} ({why}); inputs available: "
                   f"{sorted(inputs)}.")
  return inputs[name]


def memory_queue(size: int = 4096, inputs: Sequence[str] = ("image_emb", "text_emb")
                 ) -> Transform:
  """A FIFO of the last ``size`` detached keys per named input (He et al. 2020, MoCo).

  The head sees the queue *before* this step's keys are added (they are in-batch already);
  slots not yet filled are marked invalid, so no random vectors act as negatives. State per
  input: ``entries [size, dim]``, ``ptr`` (next slot) and ``filled`` (valid slots).
  """
  names = _names(inputs, "memory_queue")
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"memory_queue: size must be a positive int, got {size!r}.")

  def init(example: Inputs) -> dict[str, Any]:
    state = {}
    for name in names:
      x = _get(example, name, "memory_queue", "its rows are what the queue stores")
      if x.ndim != 2:
        raise ValueError(f"memory_queue: input {name!r} must be [batch, dim], got {x.shape}.")
      state[name] = {"entries": jnp.zeros((size, x.shape[1]), x.dtype),
                     "ptr": jnp.zeros((), jnp.int32), "filled": jnp.zeros((), jnp.int32)}
    return state

  def apply(inputs: Inputs, state: Any, *, step: Array, rng: Array) -> tuple[Inputs, Any]:
    del step, rng
    require_state(state, "memory_queue")
    new_state = {}
    for name in names:
      q = state[name]
      current = _candidates(inputs, name)
      _set_candidates(inputs, name, current._replace(
          queue=q["entries"], queue_valid=jnp.arange(size) < q["filled"]))
      keys = jax.lax.stop_gradient(current.keys if current.keys is not None else _get(
          inputs, name, "memory_queue", "its rows are what the queue stores"))
      batch = keys.shape[0]
      if batch > size:
        raise ValueError(f"memory_queue: batch {batch} of {name!r} exceeds the queue size {size}.")
      slots = (q["ptr"] + jnp.arange(batch)) % size
      new_state[name] = {"entries": q["entries"].at[slots].set(keys.astype(q["entries"].dtype)),
                         "ptr": (q["ptr"] + batch) % size,
                         "filled": jnp.minimum(q["filled"] + batch, size)}
    return inputs, new_state

  return Transform(init, apply)


def momentum_keys(inputs: Sequence[str] = ("image_emb", "text_emb")) -> Transform:
  """Uses the momentum encoder's outputs ``X_momentum`` as the candidate ``keys`` of ``X``.

  The EMA parameters live in ``TrainState.ema_params`` and the task computes ``X_momentum``
  with them; this transform only routes them (detached) to the candidate side, so queries
  come from the online encoder and keys from the slowly moving one (MoCo).
  """
  names = _names(inputs, "momentum_keys")

  def init(example: Inputs) -> tuple[()]:
    del example
    return ()

  def apply(inputs: Inputs, state: Any, *, step: Array, rng: Array) -> tuple[Inputs, Any]:
    del step, rng
    for name in names:
      key = _get(inputs, f"{name}_momentum", "momentum_keys",
                 "the task computes it with TrainState.ema_params")
      _set_candidates(inputs, name,
                      _candidates(inputs, name)._replace(keys=jax.lax.stop_gradient(key)))
    return inputs, state

  return Transform(init, apply)
