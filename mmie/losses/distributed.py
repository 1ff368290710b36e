"""Negatives from every device of a mesh axis, with gradients flowing back (open_clip style).

Each device keeps its local anchor rows and gathers the candidates of the whole axis with
`lax.all_gather`, whose transpose (a reduce-scatter) returns every device's gradient to the
device that owns the embedding. The loss is the mean of the local means (equal shards), so
value and gradients equal the dense loss over the gathered batch, while each device holds
only ``local x global`` logits.

A head given ``axis_name`` either runs inside a `jax.shard_map` that already binds the axis
(a hand-written sharded step), or wraps itself in one over the context mesh
(``with jax.set_mesh(mesh):`` around the jitted step), sharding its per-example inputs along
the batch dimension and replicating the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

Array = jax.Array
AxisName = str | tuple[str, ...] | None


def _axes(axis_name: AxisName) -> tuple[str, ...]:
  if axis_name is None:
    return ()
  return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


def gather(x: Array, axis_name: AxisName) -> Array:
  """All rows of ``x`` across the axis (differentiable); ``x`` itself without an axis."""
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def global_index(n_local: int, axis_name: AxisName) -> Array:
  """Global batch index of this device's rows, matching `gather`'s order."""
  idx = jnp.arange(n_local, dtype=jnp.int32)
  if axis_name is None:
    return idx
  return jax.lax.axis_index(axis_name) * n_local + idx


def mean(x: Array, axis_name: AxisName) -> Array:
  """Mean over all rows of every device (shards have equal size)."""
  m = jnp.mean(x.astype(jnp.result_type(x.dtype, jnp.float32)))
  return m if axis_name is None else jax.lax.pmean(m, axis_name)


def total(x: Array, axis_name: AxisName) -> Array:
  """Sum over all rows of every device."""
  s = jnp.sum(x)
  return s if axis_name is None else jax.lax.psum(s, axis_name)


def run(local_fn: Callable[..., Any], axis_name: AxisName, sharded: Mapping[str, Any],
        replicated: Mapping[str, Any]) -> Any:
  """Calls ``local_fn(axis_name, **sharded, **replicated)`` where the axis is bound.

  Without an axis this is a plain call. Inside a shard_map that binds the axis it is a plain
  call on the local shards. Otherwise the call is wrapped in `jax.shard_map` over the context
  mesh, ``sharded`` arrays split along their leading (batch) dimension; ``local_fn`` must
  return values that are identical on every device (reduced with pmean/psum).
  """
  sharded = {k: v for k, v in sharded.items() if v is not None}
  replicated = dict(replicated)
  if axis_name is None:
    return local_fn(None, **sharded, **replicated)
  axes = _axes(axis_name)
  mesh = jax.sharding.get_abstract_mesh()
  manual = set(getattr(mesh, "manual_axes", ()))
  if all(a in manual for a in axes):
    return local_fn(axis_name, **sharded, **replicated)
  if mesh.empty or not all(a in mesh.axis_names for a in axes):
    if _bound_by_pmap(axes):
      return local_fn(axis_name, **sharded, **replicated)
    raise ValueError(
        f"negatives over axis_name={axis_name!r}: no mesh with that axis is active (context "
        f"mesh axes: {tuple(mesh.axis_names) if not mesh.empty else 'none'}). Run the step "
        f"under `with jax.set_mesh(mesh):`, or call the loss inside a jax.shard_map that binds "
        f"{axis_name!r}.")
  spec = P(axes if len(axes) > 1 else axes[0])
  for name, value in sharded.items():
    size = mesh.shape[axes[0]] if len(axes) == 1 else _prod(mesh.shape[a] for a in axes)
    if value.shape[0] % size:
      raise ValueError(f"axis_name={axis_name!r}: input {name!r} has batch {value.shape[0]}, not "
                       f"divisible by the {size} devices of axis {axis_name!r}.")

  def body(shards, reps):
    return local_fn(axis_name, **shards, **reps)

  in_specs = ({k: spec for k in sharded}, jax.tree.map(lambda _: P(), replicated))
  return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P())(sharded, replicated)


def _prod(xs) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def _bound_by_pmap(axes: tuple[str, ...]) -> bool:
  """Whether the axes are bound by an enclosing pmap (legacy); `lax.axis_size` says so."""
  try:
    for a in axes:
      jax.lax.axis_size(a)
  except NameError:
    return False
  return True
