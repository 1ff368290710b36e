"""Activation sharding: the logical names of activation axes, and the constraint that pins
them to a mesh while the engine traces its step (mmie/models/layers.py docstring; ADR 0017).
"""

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax

Array = jax.Array

# Logical names of activation axes (see the module docstring); mmie.sharding maps them.
# SEQUENCE is the length axis of the residual stream between attention and MLP (norms,
# dropout, residual adds): split over the tensor-parallel axis under sequence parallelism,
# while LENGTH, inside attention and the MLP, stays whole.
BATCH, LENGTH, SEQUENCE, EMBED, HEADS, KV, MLP_UNITS, VOCAB = (
    "activation_batch", "activation_length", "activation_sequence", "activation_embed",
    "activation_heads", "activation_kv", "activation_mlp", "activation_vocab")
ACTIVATION_AXES = (BATCH, LENGTH, SEQUENCE, EMBED, HEADS, KV, MLP_UNITS, VOCAB)
RESIDUAL = (BATCH, SEQUENCE, EMBED)

# (mesh, {logical name: mesh axes}) while activation_sharding is entered; else None. Our own
# context rather than Flax's logical_axis_rules: with those set, Flax also constrains every
# parameter it unboxes, which is the engine's business (its explicit parameter shardings).
_ACTIVATION_LAYOUT: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "mmie_activation_layout", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Any, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Within this context, :func:`constrain` pins activations to ``mesh`` by ``rules``
  (logical name -> mesh axis, a tuple of axes, or None), as traced code runs."""
  token = _ACTIVATION_LAYOUT.set((mesh, dict(rules)))
  try:
    yield
  finally:
    _ACTIVATION_LAYOUT.reset(token)


def constrain(x: Array, names: tuple[str | None, ...]) -> Array:
  """``x`` with its axes pinned to the mesh by logical ``names`` (one per axis); ``x``
  unchanged outside :func:`activation_sharding` or on a one-device mesh. A mesh axis that
  does not divide its dimension leaves that dimension whole."""
  layout = _ACTIVATION_LAYOUT.get()
  if layout is None or layout[0].size == 1:
    return x
  mesh, rules = layout
  if len(names) != x.ndim:  # The same layer on [B, D] (a head) or [B, H, W, D]: ends kept.
    if x.ndim < 2 or names[0] != BATCH:
      return x
    names = (BATCH,) + (None,) * (x.ndim - 2) + (names[-1],)
  spec = []
  for dim, name in zip(x.shape, names):
    axes = rules.get(name)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = 1
    for axis in axes:
      size *= mesh.shape[axis]
    spec.append(axes if axes and size > 1 and dim % size == 0 else None)
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))
