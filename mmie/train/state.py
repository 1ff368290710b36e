"""TrainState: everything that must survive a restart, and nothing else."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  """The whole mutable state of a run, as one pytree.

  The step count and RNG live here so that a restored state continues exactly: the RNG of a
  step is ``fold_in(rng, step)``. ``loss_state`` holds the stateful loss transforms (memory
  queues, running statistics); ``ema_params`` the momentum/EMA copy of the parameters, or None.
  ``apply_fn`` and ``tx`` are static: they are rebuilt from the config, never checkpointed.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  loss_state: Any
  rng: jax.Array
  nonfinite_count: jax.Array
  ema_params: Any = None
  apply_fn: Callable[..., Any] = struct.field(pytree_node=False, default=None)
  tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, *, params: Any, tx: optax.GradientTransformation, apply_fn: Callable[..., Any],
             loss_state: Any, rng: jax.Array, ema: bool = False) -> "TrainState":
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        loss_state=loss_state,
        rng=rng,
        nonfinite_count=jnp.zeros((), jnp.int32),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        apply_fn=apply_fn,
        tx=tx,
    )
