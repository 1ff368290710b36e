"""The training loop: stages of one jitted step, with logging, evaluation and checkpoints.

Re-running on an existing workdir resumes from the newest readable checkpoint, with the data
iterator at the same position, so the continued run matches an uninterrupted one bit for bit.
SIGTERM (preemption) and Ctrl-C save a checkpoint and exit cleanly.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np

from mmie import config as config_lib
from mmie.train import checkpoint, hooks, setup, storage
from mmie.train import stages as stages_lib
from mmie.train.checkpoint import Checkpointer
from mmie.train.metrics_writer import MetricsWriter, Progress

log = logging.getLogger(__name__)

_EVALUATE_EMA_NEEDS = ("train.evaluate_ema=True needs an EMA of the weights: set train.ema_decay"
                       " (e.g. 0.99).")


class NonFiniteError(FloatingPointError):
  """Training produced a NaN or inf loss or gradient and the config says to stop."""


def _save_config(config: Any, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  new = config_lib.to_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != new:
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      log.warning("Resuming with a config that differs from the saved one in: %s", changed)
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)


def _local_value(x: Any) -> np.ndarray:
  """A replicated (possibly multi-host) array's value, read from this host's own copy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def _host_metrics(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(_local_value(v)) for k, v in metrics.items()}


def _host_params(params: Any) -> Any:
  """Params whole on this host, for the end-of-run hooks (plots run on numpy): across hosts a
  collective, so every process calls it. Evaluation never needs it: it runs on the sharded
  state (mmie/evaluate/context.py)."""
  if jax.process_count() == 1:
    return params
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)


def check_vocabulary(config: Any) -> None:
  """Stops a run whose tokenizer has more ids than the model's embedding table has rows.

  An out-of-range id would not fail: XLA clamps gather indices, so those tokens would all
  silently read the table's last row.
  """
  from mmie.data import pipeline  # pylint: disable=g-import-not-at-top

  model = config.get("model", {})
  sections = {"model": model, "model.text": model.get("text", {})}
  sized = {name: int(s["vocab_size"]) for name, s in sections.items()
           if hasattr(s, "get") and s.get("vocab_size") is not None}
  if not sized:
    return
  tokenizer = pipeline.tokenizer_for(config.data)
  for name, rows in sized.items():
    if tokenizer.vocab_size > rows:
      raise config_lib.ConfigError(
          f"Config key {name}.vocab_size={rows} is smaller than the tokenizer's "
          f"{tokenizer.vocab_size} ids ({tokenizer.source}); set "
          f"--config.{name}.vocab_size={tokenizer.vocab_size} or larger.")


class _Session:
  """The mutable parts of one invocation of the loop, kept together."""

  def __init__(self, config: Any, workdir: str, run: setup.Run):
    from mmie.data import pipeline  # Deferred so that building a run needs no data import.

    self.config = config
    self.workdir = workdir
    self.run = run
    train_config = config.get("train", {})
    self.on_nonfinite = train_config.get("on_nonfinite", "skip")
    self.early_stopping = hooks.EarlyStopping.from_config(train_config.get("early_stopping"))
    self.profiler = hooks.ProfilerWindow(train_config.get("profile_steps", None), workdir)
    self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                             max_to_keep=config.get("keep_checkpoints", 2))
    check_vocabulary(config)
    if train_config.get("evaluate_ema", False) and train_config.get("ema_decay") is None:
      raise config_lib.ConfigError(_EVALUATE_EMA_NEEDS)
    if jax.process_index() == 0:  # The checkpoints' token ids mean nothing without it.
      pipeline.tokenizer_for(config.data).save(os.path.join(workdir, "tokenizer.json"))
    count, index = jax.process_count(), jax.process_index()
    print(f"Process {index} of {count}: {jax.local_device_count()} of {jax.device_count()}"
          f" devices; global batch {config.batch_size}, this host's {config.batch_size // count}"
          f" from training records {index}::{count} of each source.", flush=True)
    self.data_iter = pipeline.build_train_iterator(
        config.data, batch_size=config.batch_size, seed=config.seed, view=run.task.data_view,
        process_index=jax.process_index(), process_count=jax.process_count())
    self.evaluators = default_evaluators(config, self.run.model, mesh=run.mesh)
    self.nonfinite_seen = 0

  def stage_run(self, stage: stages_lib.Stage) -> setup.StageRun:
    return self.run.stage_runs[stage.index]

  def checkpoint(self, state: Any, step: int) -> None:
    if not _all_finite_host(state.params):
      log.error("Not checkpointing step %d: its parameters are not finite.", step)
      return
    meta = {"step": step, "time": time.time(),
            "stage": stages_lib.stage_at(self.run.stages, step).name,
            "early_stopping": self.early_stopping.state() if self.early_stopping else None}
    self.ckpt.save(step, state, self.data_iter.get_state(), meta)


@jax.jit
def _all_finite(params: Any) -> jax.Array:
  return jax.tree.reduce(lambda a, x: a & jax.numpy.all(jax.numpy.isfinite(x)), params,
                         jax.numpy.array(True))


def _all_finite_host(params: Any) -> bool:
  return bool(_local_value(_all_finite(params)))


def default_evaluators(config: Any, model: Any,
                       mesh: Any = None) -> list[tuple[str, int, Callable]]:
  """The evaluators the config asks for, each with its own schedule (``every`` steps); with
  the run's ``mesh``, they evaluate the sharded params as they are."""
  from mmie.evaluate import build_evaluators  # Deferred: loads the evaluation split.
  return build_evaluators(config, model, mesh=mesh)


EndOfRunHook = Callable[[str, Any, Any, Any], None]  # (workdir, config, host params, model)


def _run_end_hooks(s: "_Session", state: Any, end_hooks: Sequence[EndOfRunHook]) -> None:
  """Hooks the entry point registered (plots, exports) on process 0; never fail the run."""
  if not end_hooks:
    return
  params = _host_params(state.params)  # Every process takes part in the gather.
  if jax.process_index() != 0:
    return
  for hook in end_hooks:
    try:
      hook(s.workdir, s.config, params, s.run.model)
    except Exception as e:  # noqa: BLE001 - a plotting problem must not lose a trained run.
      log.error("End-of-run hook %s failed: %r", getattr(hook, "__name__", hook), e)


def train_and_evaluate(config: Any, workdir: str, *,
                       end_hooks: Sequence[EndOfRunHook] = ()) -> dict[str, float]:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns final metrics.

  The whole run is resolved first (``setup.build_run``: every stage, the data spec, the
  evaluators), so a config mistake stops it before the workdir is created or data prepared.
  A write that fails for lack of space stops it with ``storage.StorageFullError``, naming the
  newest complete checkpoint.
  ``end_hooks`` run once training ends (``main.py`` registers the plots of mmie/insight).
  """
  run = setup.build_run(config)
  os.makedirs(workdir, exist_ok=True)
  try:
    with hooks.WorkdirLock(workdir):
      return _train_and_evaluate(config, workdir, run, end_hooks)
  except Exception as e:  # noqa: BLE001 - only a full disk is translated; the rest re-raised.
    if storage.out_of_space(e):
      raise storage.full_error(e, os.path.join(workdir, "checkpoints")) from e
    raise


def _train_and_evaluate(config: Any, workdir: str, run: setup.Run,
                        end_hooks: Sequence[EndOfRunHook]) -> dict[str, float]:
  # Before config.json and tokenizer.json are rewritten: another config's checkpoints stop
  # the run here, and the workdir keeps what says which config wrote them.
  checkpoint.check_matches(os.path.join(workdir, "checkpoints"),
                           functools.partial(setup.abstract_state_at, run))
  _save_config(config, workdir)
  s = _Session(config, workdir, run)
  restored = s.ckpt.restore_latest(functools.partial(setup.abstract_state_at, run))
  if restored is None:
    stage = s.run.stages[0]
    state = setup.init_state(s.run, s.stage_run(stage))
    step = 0
  else:
    state, step = restored.state, restored.step
    s.data_iter.set_state(restored.data_state)
    # Updates skipped before the checkpoint were reported then: only new ones count (else a
    # run resumed after an on_nonfinite='stop' would stop again at its first step).
    s.nonfinite_seen = int(_local_value(state.nonfinite_count))
    if s.early_stopping:
      s.early_stopping.load(restored.meta.get("early_stopping"))
    print(f"Resumed from the checkpoint at step {step} in {s.ckpt.directory}.", flush=True)
  writer = MetricsWriter(workdir, resume_step=step, enabled=jax.process_index() == 0)
  final: dict[str, float] = {}
  try:
    with hooks.StopSignal() as stop:
      for stage in s.run.stages:
        if step >= stage.end or (s.early_stopping and s.early_stopping.stopped):
          continue
        state, step, final = _train_stage(s, stage, state, step, writer, stop, final)
  finally:
    hooks.close_all(s.profiler.close, s.ckpt.close, writer.close)
  if not final:  # Resumed a finished run: evaluate the restored params once more.
    final = _evaluate(s, state, step, writer=None)
  _run_end_hooks(s, state, end_hooks)
  _print_summary(final, s.evaluators)
  return final


def _train_stage(s: _Session, stage: stages_lib.Stage, state: Any, step: int,
                 writer: MetricsWriter, stop: hooks.StopSignal, final: dict[str, float]):
  config = s.config
  stage_run = s.stage_run(stage)
  if step == stage.start and stage.index > 0:
    state = setup.enter_stage(s.run, state, stage_run)
    print(f"Stage {stage.index + 1}/{len(s.run.stages)} '{stage.name}':"
          f" steps {stage.start + 1}-{stage.end}.", flush=True)
  step_fn, cost = _compile_step(s, stage_run, state)
  progress = Progress(config.total_steps, config.batch_size, step)
  first = step
  while step < stage.end:
    batch = setup.to_global(s.run, next(s.data_iter))
    s.profiler.before_step(step)
    state, metrics = step_fn(state, batch)
    step += 1
    s.profiler.after_step(step, state.step)
    if step == first + 1:
      jax.block_until_ready(state.step)
      progress.restart_clock(step)
    # 'stop' reads the skip counter every step (one host sync), so it stops at the offending
    # step with that step's metrics; 'skip' only reports at log steps.
    stop_now = (s.on_nonfinite == "stop"
                and int(_local_value(metrics["nonfinite_count"])) > s.nonfinite_seen)
    if step % config.log_every == 0 or step == config.total_steps or stop_now:
      _log_train(s, step, metrics, writer, progress, state, cost)
    fresh: dict[str, float] = {}  # Only this step's evaluations feed early stopping.
    for name, every, evaluate in s.evaluators:
      if (every and step % every == 0) or step == config.total_steps:
        fresh.update(_evaluate(s, state, step, writer, only=evaluate))
    final = {**final, **fresh}
    stop_early = bool(fresh) and s.early_stopping is not None and s.early_stopping.update(fresh)
    if (config.checkpoint_every and step % config.checkpoint_every == 0
        or step == config.total_steps or stop_early):
      s.checkpoint(state, step)
    if stop_early:
      print(f"Early stopping at step {step}: {s.early_stopping.metric} has not improved for"
            f" {s.early_stopping.patience} evaluations (best {s.early_stopping.best}).")
      break
    if stop.received is not None:
      s.checkpoint(state, step)
      s.ckpt.close()
      print(f"Stopped by signal {stop.received} at step {step}; checkpoint saved."
            " Re-run the same command to resume.", flush=True)
      raise SystemExit(128 + stop.received)
  return state, step, final


def _compile_step(s: _Session, stage_run: setup.StageRun, state: Any):
  """Compiles the stage's step once, ahead of time, and reads its cost for MFU logging."""
  from mmie.train.profiling import compile_with_cost

  jitted = setup.jit_train_step(s.run, stage_run)
  batch = setup.to_global(s.run, setup.example_batch(s.config,
                                                     s.config.batch_size // jax.process_count()))
  compiled, cost = compile_with_cost(jitted, state, batch, config=s.config, mesh=s.run.mesh)
  print(f"Compiled the train step in {cost.compile_seconds:.1f}s:"
        f" {cost.flops / 1e9:.2f} GFLOP per step on {cost.num_devices} device(s).", flush=True)
  return compiled, cost


def _log_train(s: _Session, step: int, metrics: Any, writer: MetricsWriter,
               progress: Progress, state: Any, cost: Any = None) -> None:
  host = _host_metrics(metrics)
  steps_per_second, host["examples_per_second"] = progress.rates(step)
  if cost is not None:
    host.update(cost.metrics(1.0 / steps_per_second if steps_per_second > 0 else None))
  writer.write(step, host)
  if jax.process_index() == 0:
    progress.report(step, host["loss"])
  if host["nonfinite_count"] > s.nonfinite_seen:
    s.nonfinite_seen = int(host["nonfinite_count"])
    msg = (f"Non-finite loss or gradient: {s.nonfinite_seen} update(s) skipped by step {step};"
           f" last metrics {host}.")
    if s.on_nonfinite == "stop":
      s.checkpoint(state, step)  # Skipped updates kept the state finite.
      s.ckpt.close()
      raise NonFiniteError(msg + " Set train.on_nonfinite='skip' to train on regardless.")
    log.warning(msg)


def evaluated_params(config: Any, state: Any) -> Any:
  """The parameters the evaluators see: the EMA copy when ``train.evaluate_ema``.

  An average of the weights over the last ~1/(1 - decay) steps sits in a flatter region than
  the last iterate, which can generalise better (Polyak & Juditsky 1992; Izmailov et al. 2018).
  """
  train_config = config.get("train", {}) or {}
  if not train_config.get("evaluate_ema", False):
    return state.params
  if state.ema_params is None:
    raise config_lib.ConfigError(_EVALUATE_EMA_NEEDS)
  return state.ema_params


def _evaluate(s: _Session, state: Any, step: int, writer: MetricsWriter | None,
              only: Callable | None = None) -> dict[str, float]:
  metrics: dict[str, float] = {}
  for _, _, evaluate in s.evaluators:
    if only is None or evaluate is only:
      metrics.update(evaluate(evaluated_params(s.config, state)))
  if writer is not None:
    writer.write(step, metrics)
  if jax.process_index() == 0:
    print("  ".join(f"{k}={v:.2f}" for k, v in metrics.items()), flush=True)
  return metrics


def evaluate_checkpoint(config: Any, workdir: str, *,
                        other_data: str | None = None) -> dict[str, float]:
  """Evaluates the newest checkpoint in ``workdir`` without training.

  Metrics go to the run's ``metrics.jsonl``, or, when ``other_data`` names the source the
  config now reads instead of the run's own (``--eval_data``), to ``evaluations.jsonl`` with
  that source beside them, so the run's own curves stay its own.
  """
  run = setup.build_run(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                      max_to_keep=config.get("keep_checkpoints", 2))
  restored = ckpt.restore_latest(functools.partial(setup.abstract_state_at, run))
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint under {ckpt.directory}; train first.")
  evaluators = default_evaluators(config, run.model, mesh=run.mesh)
  metrics: dict[str, float] = {}
  for _, _, evaluate in evaluators:
    metrics.update(evaluate(evaluated_params(config, restored.state)))
  if other_data is not None and jax.process_index() == 0:
    with open(os.path.join(workdir, "evaluations.jsonl"), "a") as f:
      f.write(json.dumps({"step": restored.step, "data": other_data, **metrics}) + "\n")
  elif other_data is None:
    writer = MetricsWriter(workdir, resume_step=None, enabled=jax.process_index() == 0)
    writer.write(restored.step, metrics)
    writer.close()
  _print_summary(metrics, evaluators)
  return metrics


def _print_summary(metrics: dict[str, float], evaluators: list[tuple[str, int, Callable]]) -> None:
  print("Final evaluation:", flush=True)
  for k, v in sorted(metrics.items()):
    print(f"  {k:40s} {v:8.2f}")
  for name, _, evaluate in evaluators:
    chance = getattr(evaluate, "chance", None)
    if chance:
      print(f"Chance levels ({name}): " + ", ".join(f"{k} {v:.2f}" for k, v in chance.items()),
            flush=True)
