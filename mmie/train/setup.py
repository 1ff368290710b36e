"""Building a run from its config: model, task, mesh and shardings, then one stage at a time
its loss, optimizer and sharded state."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from mmie import sharding
from mmie.config import ConfigError
from mmie.losses import build_loss, carry_over
from mmie.models import build_model, layers, unbox
from mmie.tasks import Task, get_task
from mmie.train import param_rules as param_rules_lib
from mmie.train import stages as stages_lib
from mmie.train.optimizer import build_optimizer
from mmie.train.state import TrainState
from mmie.train.step import make_train_step


@dataclasses.dataclass
class Run:
  """What stays fixed for a whole run: model, task, mesh, parameter layout, stages."""

  config: Any
  task: Task
  model: Any
  mesh: Mesh
  batch_sharding: NamedSharding
  abstract_params: Any   # Unboxed ShapeDtypeStructs.
  param_shardings: Any
  stages: list[stages_lib.Stage]
  batch_keys: frozenset[str] = frozenset()  # What the task reads; other keys stay on the host.
  stage_runs: list["StageRun"] = dataclasses.field(default_factory=list)  # One per stage.


@dataclasses.dataclass
class StageRun:
  """What a stage adds: its loss, optimizer, schedule and the state's shardings."""

  stage: stages_lib.Stage
  loss: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: Any = None


# A raw PRNG key's shape: ``eval_shape`` over it traces without running (or compiling) the
# seeding that ``jax.random.PRNGKey(0)`` would, so resolving a run compiles nothing.
ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def _resolve(section: str, builder: Any, section_config: Any) -> Any:
  """Runs a section's builder, reporting its complaint as a config error about that section."""
  try:
    return builder(section_config)
  except ConfigError:
    raise
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"config.{section}: {error_text(e)}") from e


def error_text(error: Exception) -> str:
  """An exception's message; KeyError's own ``str`` would add quotes around it."""
  return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def example_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like one batch of the config's task, for initialisation and AOT compiles."""
  return get_task(config.task).example_batch(config, batch_size)


def _init_variables(model: Any, config: Any, rng: jax.Array) -> Any:
  task = get_task(config.task)
  batch = {k: jnp.asarray(v) for k, v in task.example_batch(config, 1).items()}
  return model.init({"params": rng}, *task.init_args(batch))


def build_run(config: Any, mesh: Mesh | None = None, *, check_data: bool = True) -> Run:
  """Resolves the whole run up front: nothing is prepared, compiled or written yet.

  In order: task, model, stages, the data spec (parsed and looked up, not prepared), the
  mesh, the abstract parameters (``eval_shape``), the evaluators against the model, then
  every stage's loss (traced on the task's abstract outputs), optimizer and parameter rules
  (against the real parameter names). Any mistake in any stage is a ConfigError here.
  """
  task = get_task(config.task)
  model = _resolve("model", build_model, config.model)
  stages = stages_lib.resolve_stages(config)
  if check_data:
    _check_data(config, task)
  mesh = mesh if mesh is not None else sharding.make_mesh(config.get("mesh", None))
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise ConfigError(f"Config key batch_size={config.batch_size} must be divisible by the"
                      f" data-parallel size {dp} of the mesh {dict(mesh.shape)}.")
  boxed = jax.eval_shape(lambda r: _init_variables(model, config, r), ABSTRACT_KEY)
  rules = sharding.axis_rules(config)
  param_shardings = sharding.logical_param_shardings(boxed["params"], mesh, rules)
  run = Run(config, task, model, mesh, sharding.batch_sharding(mesh), unbox(boxed["params"]),
            param_shardings, stages, frozenset(task.example_batch(config, 1)))
  _check_evaluators(config, model)
  run.stage_runs = [build_stage(run, stage) for stage in stages]
  return run


def _check_data(config: Any, task: Task) -> None:
  from mmie.data import spec as data_spec  # Deferred: the data layer is only parsed here.
  kind = data_spec.check_spec(config.data)
  wanted = data_spec.VIEW_KINDS[task.data_view]
  if kind not in wanted:
    raise ConfigError(f"Config key data.name={config.data.name!r} is {kind.replace('_', '-')}"
                      f" data, but task={task.name!r} trains on"
                      f" {' or '.join(k.replace('_', '-') for k in wanted)} data.")


def _check_evaluators(config: Any, model: Any) -> None:
  """``config.evals`` (else the task's defaults): each spec's keys, and that it fits the model."""
  # pylint: disable=g-import-not-at-top  (deferred: evaluation imports the data layer)
  from mmie.evaluate.registry import check_evals_config, check_model, default_evals
  evals = config.get("evals", None) or default_evals(config)
  check_evals_config(evals)
  check_model(evals, model)


def build_stage(run: Run, stage: stages_lib.Stage) -> StageRun:
  """The stage's loss and optimizer (rules checked against the real parameter names).

  The loss is traced (``eval_shape``, no compile) on the task's abstract outputs, so a head
  that needs an input the model does not make fails here, naming the stage's loss key.
  """
  where = f"stages.{stage.name}" if run.config.get("stages") else ""
  loss_key = f"{where}.loss" if where else "loss"
  loss = _resolve(loss_key, build_loss, stage.loss)
  try:
    tx, schedule = build_optimizer(
        stage.optimizer, stage.total_steps, run.abstract_params, stage.param_rules,
        balance=run.config.get("train", {}).get("balance_modalities"))
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}" if where else str(e)) from e
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"config.{where + '.' if where else ''}optimizer / param_rules:"
                      f" {error_text(e)}") from e
  stage_run = StageRun(stage, loss, tx, schedule)
  try:
    with jax.set_mesh(run.mesh):  # Loss heads may name mesh axes (axis_name).
      abstract = jax.eval_shape(_init_fn(run, stage_run), ABSTRACT_KEY)
      _trace_loss(run, stage_run, abstract)
  except ConfigError:
    raise
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ConfigError(f"config.{loss_key}={_describe(stage.loss)} does not fit the outputs of"
                      f" task={run.task.name!r} with this model:"
                      f" {type(e).__name__}: {error_text(e)}") from e
  stage_run.state_shardings = _state_shardings(run, abstract)
  return stage_run


def _describe(loss_config: Any) -> str:
  values = loss_config.to_dict() if hasattr(loss_config, "to_dict") else dict(loss_config)
  return repr(values.get("name") or sorted(values.get("terms", {})))


def _trace_loss(run: Run, stage_run: StageRun, abstract: TrainState) -> None:
  """Shapes-only pass of the loss on the task's outputs: a missing input fails here."""

  def apply(state: TrainState, rng: jax.Array):
    inputs = _loss_inputs(run, state.params, rng)
    return stage_run.loss.apply(inputs, state.loss_state, step=state.step, rng=rng)

  jax.eval_shape(apply, abstract, ABSTRACT_KEY)


def _state_shardings(run: Run, abstract: TrainState) -> TrainState:
  replicated = sharding.replicated(run.mesh)
  follow = lambda tree: sharding.shardings_following_params(tree, run.param_shardings, run.mesh)
  return abstract.replace(
      step=replicated, rng=replicated, nonfinite_count=replicated,
      params=run.param_shardings,
      opt_state=follow(abstract.opt_state),
      loss_state=jax.tree.map(lambda _: replicated, abstract.loss_state),
      ema_params=None if abstract.ema_params is None else run.param_shardings,
  )


def _loss_inputs(run: Run, params: Any, rng: jax.Array) -> dict[str, jax.Array]:
  """The loss's inputs on an example batch, for initialising loss state (shapes only)."""
  batch = {k: jnp.asarray(v) for k, v in example_batch(run.config, run.config.batch_size).items()}
  momentum = {"ema_params": params} if _uses_ema(run) else {}
  inputs = run.task.forward(run.model.apply, params, batch, rng=rng, train=False, **momentum)
  return jax.tree.map(jax.lax.stop_gradient, inputs)


def _uses_ema(run: Run) -> bool:
  return run.config.get("train", {}).get("ema_decay", None) is not None


def _init_fn(run: Run, stage_run: StageRun):
  ema = run.config.get("train", {}).get("ema_decay", None) is not None

  def init(rng: jax.Array) -> TrainState:
    params_rng, state_rng, forward_rng = jax.random.split(rng, 3)
    params = unbox(_init_variables(run.model, run.config, params_rng)["params"])
    loss_state = stage_run.loss.init(_loss_inputs(run, params, forward_rng))
    return TrainState.create(params=params, tx=stage_run.tx, apply_fn=run.model.apply,
                             loss_state=loss_state, rng=state_rng, ema=ema)

  return init


def init_state(run: Run, stage_run: StageRun) -> TrainState:
  """Initialises the state directly into its shardings (no full copy on one device).

  ``config.init_from`` (one source for the whole tree, e.g. ``"hf:exports/clip"``, or
  ``{subtree: source}``, e.g. ``{"text": "minilm"}`` for LiT) then replaces those parameters
  with converted pretrained weights (mmie/models/pretrained.py), before any step.
  """
  init = jax.jit(_init_fn(run, stage_run), out_shardings=stage_run.state_shardings)
  state = init(jax.random.PRNGKey(run.config.seed))
  init_from = run.config.get("init_from", None)
  if not init_from:
    return state
  from mmie.models import pretrained  # Deferred: reads weight files only when asked to.
  if not isinstance(init_from, str):
    init_from = dict(init_from)
  try:
    loaded = pretrained.load_pretrained(jax.device_get(state.params), init_from)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ConfigError(f"config.init_from={init_from!r}: {e}") from e
  params = jax.device_put(loaded, run.param_shardings)
  reinit = jax.jit(lambda st, p: st.replace(
      params=p, opt_state=st.tx.init(p),
      ema_params=None if st.ema_params is None else jax.tree.map(jnp.copy, p)),
      out_shardings=stage_run.state_shardings)
  return reinit(state, params)


def abstract_state(run: Run, stage_run: StageRun) -> TrainState:
  """ShapeDtypeStructs carrying the target shardings, for restoring into place."""
  abstract = jax.eval_shape(_init_fn(run, stage_run), ABSTRACT_KEY)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, stage_run.state_shardings)


def abstract_state_at(run: Run, step: int) -> TrainState:
  """The abstract state of a checkpoint at global ``step`` (its stage decides its structure):
  the one restore target of training, ``--mode=evaluate`` and the plots."""
  return abstract_state(run, run.stage_runs[stages_lib.stage_at(run.stages, step).index])


def enter_stage(run: Run, state: TrainState, stage_run: StageRun) -> TrainState:
  """Carries params (and EMA) into a new stage: fresh optimizer, loss state kept by name."""

  def transition(state: TrainState) -> TrainState:
    fresh = stage_run.loss.init(_loss_inputs(run, state.params, state.rng))
    return state.replace(tx=stage_run.tx, opt_state=stage_run.tx.init(state.params),
                         loss_state=carry_over(state.loss_state, fresh))

  return jax.jit(transition, out_shardings=stage_run.state_shardings)(state)


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """A stage's step as data: the pure function, its shardings and donation, and the jitted
  function built from them. Calling it runs the step with the mesh in context (losses may
  name its axes); ``jitted.lower(state, batch).compile()`` AOT-compiles it for any mesh."""

  fn: Callable[..., Any]            # The pure train_step(state, batch) -> (state, metrics).
  in_shardings: tuple[Any, Any]     # (state shardings, batch sharding).
  out_shardings: tuple[Any, Any]    # (state shardings, metrics: replicated by XLA's choice).
  donate_argnums: tuple[int, ...]   # The input state's buffers become the output state's.
  mesh: Mesh
  jitted: Any

  def __call__(self, state: TrainState, batch: Mapping[str, jax.Array]):
    with jax.set_mesh(self.mesh):
      return self.jitted(state, batch)


def jit_train_step(run: Run, stage_run: StageRun) -> TrainStep:
  """The stage's jitted step with explicit shardings and the state donated."""
  rules = param_rules_lib.parse_rules(stage_run.stage.param_rules)
  step_fn = make_train_step(run.task, stage_run.loss, stage_run.schedule,
                            step_offset=stage_run.stage.start,
                            train_config=run.config.get("train", {}),
                            trainable=param_rules_lib.trainable_mask(rules, run.abstract_params))
  step_fn = with_activation_sharding(step_fn, run)
  in_shardings = (stage_run.state_shardings, run.batch_sharding)
  out_shardings = (stage_run.state_shardings, None)
  donate = (0,)
  jitted = jax.jit(step_fn, in_shardings=in_shardings, out_shardings=out_shardings,
                   donate_argnums=donate)
  return TrainStep(step_fn, in_shardings, out_shardings, donate, run.mesh, jitted)


def with_activation_sharding(fn: Callable[..., Any], run: Run) -> Callable[..., Any]:
  """``fn`` traced with the model's activation constraints on (mmie.models.layers
  ``constrain``): batch over the data axes, heads / MLP units / vocabulary as their weights."""
  rules = sharding.run_activation_rules(run.config)

  @functools.wraps(fn)
  def traced(*args: Any, **kwargs: Any) -> Any:
    with layers.activation_sharding(run.mesh, rules):
      return fn(*args, **kwargs)

  return traced


def to_global(run: Run, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """This host's batch as global arrays; keys the task does not read stay on the host."""
  return sharding.global_batch({k: v for k, v in local_batch.items() if k in run.batch_keys},
                               run.mesh)
