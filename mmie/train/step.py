"""The one train step: ``train_step(state, batch) -> (state, metrics)``, pure and jitted."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from mmie.tasks.base import Task
from mmie.train.state import TrainState

Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(task: Task, loss: Any, schedule: optax.Schedule | None = None) -> StepFn:
  """Builds the pure train step for ``task`` and ``loss`` (a ``mmie.losses.Loss``).

  A non-finite loss or gradient never reaches the parameters: the update is skipped, the
  state's ``nonfinite_count`` grows, and the loop decides (by config) whether to go on or stop.
  The step never branches on the kind of loss: whatever ``build_loss`` made is applied.
  """

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)
    model_rng, loss_rng = jax.random.split(rng)

    def loss_fn(params):
      inputs = task.forward(state.apply_fn, params, batch, rng=model_rng, train=True)
      value, metrics, loss_state = loss.apply(inputs, state.loss_state, step=state.step,
                                              rng=loss_rng)
      return value, (metrics, loss_state)

    (value, (metrics, loss_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    finite = jnp.isfinite(value) & _all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        loss_state=keep(loss_state, state.loss_state),
        nonfinite_count=state.nonfinite_count + (1 - finite.astype(jnp.int32)),
    )
    metrics = dict(metrics)
    metrics["loss"] = value
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(state.params)
    metrics["update_norm"] = optax.global_norm(updates)
    metrics["nonfinite_count"] = new_state.nonfinite_count
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    return new_state, metrics

  return train_step
