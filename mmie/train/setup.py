"""Building a run from its config: model, loss, task, optimizer, mesh, and a sharded state."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from mmie import sharding
from mmie.config import ConfigError
from mmie.losses import build_loss
from mmie.models import build_model, unbox
from mmie.tasks import Task, get_task
from mmie.train.optimizer import build_optimizer
from mmie.train.state import TrainState


@dataclasses.dataclass
class Run:
  """Everything built from one config, before any data is read."""

  config: Any
  task: Task
  model: Any
  loss: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  state_shardings: Any
  batch_sharding: NamedSharding


def example_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like one batch of the config's data, for initialisation and AOT compiles."""
  size = config.data.image_size
  return {
      "image": np.zeros((batch_size, size, size, 3), np.float32),
      "text": np.zeros((batch_size, config.data.context_length), np.int32),
  }


def _resolve(section: str, builder: Any, section_config: Any) -> Any:
  """Runs a section's builder, reporting its complaint as a config error about that section."""
  try:
    return builder(section_config)
  except ConfigError:
    raise
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"config.{section}: {e}") from e


def build_run(config: Any, mesh: Mesh | None = None) -> Run:
  """Resolves every name in the config; fails here, before compiling, on any bad key."""
  task = get_task(config.task)
  model = _resolve("model", build_model, config.model)
  loss = _resolve("loss", build_loss, config.loss)
  tx, schedule = build_optimizer(config.optimizer, config.total_steps)
  mesh = mesh if mesh is not None else sharding.make_mesh(config.get("mesh", None))
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise ValueError(f"Config key batch_size={config.batch_size} must be divisible by the"
                     f" data-parallel size {dp} of the mesh {dict(mesh.shape)}.")
  run = Run(config, task, model, loss, tx, schedule, mesh, None, sharding.batch_sharding(mesh))
  run.state_shardings = sharding.tree_shardings(abstract_state(run), mesh)
  return run


def _init_fn(run: Run):
  config = run.config

  def init(rng: jax.Array) -> TrainState:
    params_rng, state_rng, forward_rng = jax.random.split(rng, 3)
    batch = {k: jnp.asarray(v) for k, v in example_batch(config, config.batch_size).items()}
    variables = run.model.init({"params": params_rng}, batch["image"][:1], batch["text"][:1])
    params = unbox(variables["params"])
    inputs = run.task.forward(run.model.apply, params, batch, rng=forward_rng, train=False)
    loss_state = run.loss.init(jax.tree.map(jax.lax.stop_gradient, inputs))
    return TrainState.create(params=params, tx=run.tx, apply_fn=run.model.apply,
                             loss_state=loss_state, rng=state_rng)

  return init


def abstract_state(run: Run) -> TrainState:
  """The state's shapes and dtypes, without allocating it."""
  return jax.eval_shape(_init_fn(run), jax.random.PRNGKey(0))


def init_state(run: Run) -> TrainState:
  """Initialises the state directly into its shardings (no full copy on one device)."""
  init = jax.jit(_init_fn(run), out_shardings=run.state_shardings)
  return init(jax.random.PRNGKey(run.config.seed))


def abstract_with_shardings(run: Run) -> TrainState:
  """ShapeDtypeStructs carrying the target shardings, for restoring into place."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state(run), run.state_shardings)


def jit_train_step(run: Run, step_fn) -> Any:
  """The jitted step with explicit shardings and the state donated."""
  return jax.jit(step_fn, in_shardings=(run.state_shardings, run.batch_sharding),
                 out_shardings=(run.state_shardings, None), donate_argnums=(0,))


def to_global(run: Run, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  return sharding.global_batch(local_batch, run.mesh)
