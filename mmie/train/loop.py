"""The training loop: one jitted step, periodic logging, evaluation and checkpoints.

Re-running on an existing workdir resumes from the newest readable checkpoint, with the data
iterator at the same position, so the continued run matches an uninterrupted one. SIGTERM
(preemption) and Ctrl-C save a checkpoint and exit cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from mmie import config as config_lib
from mmie.train import setup
from mmie.train.checkpoint import Checkpointer
from mmie.train.metrics_writer import MetricsWriter, Progress
from mmie.train.step import make_train_step

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
  """Training produced a NaN or inf loss or gradient and the config says to stop."""


class _StopSignal:
  """Turns SIGTERM / SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C stops at once.
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


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


def _host_metrics(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def _checkpoint(ckpt: Checkpointer, state: Any, data_iter: Any, step: int) -> None:
  meta = {"step": step, "time": time.time()}
  ckpt.save(step, state, data_iter.get_state(), meta)


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns final metrics."""
  from mmie.data import pipeline  # Deferred so that building a run needs no data import.
  from mmie.evaluate import build_contrastive_evaluator

  os.makedirs(workdir, exist_ok=True)
  _save_config(config, workdir)
  run = setup.build_run(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                      max_to_keep=config.get("keep_checkpoints", 2))
  data_iter = pipeline.build_train_iterator(
      config.data, batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  evaluate = build_contrastive_evaluator(config, run.model)

  restored = ckpt.restore_latest(setup.abstract_with_shardings(run))
  if restored is None:
    state = setup.init_state(run)
    start = 0
  else:
    state = restored.state
    data_iter.set_state(restored.data_state)
    start = restored.step
    print(f"Resumed from the checkpoint at step {start} in {ckpt.directory}.", flush=True)
  writer = MetricsWriter(workdir, resume_step=start if restored else None,
                         enabled=jax.process_index() == 0)
  train_config = config.get("train", {})
  on_nonfinite = train_config.get("on_nonfinite", "skip")
  step_fn = setup.jit_train_step(run, make_train_step(run.task, run.loss, run.schedule))
  progress = Progress(config.total_steps, config.batch_size, start)

  final: dict[str, float] = {}
  step = start
  nonfinite_seen = 0
  with _StopSignal() as stop:
    while step < config.total_steps:
      batch = setup.to_global(run, next(data_iter))
      state, metrics = step_fn(state, batch)
      step += 1
      if step == start + 1:
        jax.block_until_ready(state.step)
        progress.restart_clock(step)
      if step % config.log_every == 0 or step == config.total_steps:
        host = _host_metrics(metrics)
        _, host["examples_per_second"] = progress.rates(step)
        writer.write(step, host)
        progress.report(step, host["loss"])
        if host["nonfinite_count"] > nonfinite_seen:
          nonfinite_seen = int(host["nonfinite_count"])
          msg = (f"Non-finite loss or gradient: {nonfinite_seen} update(s) skipped by step"
                 f" {step}; last metrics {host}.")
          if on_nonfinite == "stop":
            _checkpoint(ckpt, state, data_iter, step)  # The state is finite: skips kept it so.
            ckpt.close()
            raise NonFiniteError(msg)
          log.warning(msg)
      if config.eval_every and step % config.eval_every == 0 or step == config.total_steps:
        final = evaluate(state.params)
        writer.write(step, final)
        print("  ".join(f"{k}={v:.2f}" for k, v in final.items()), flush=True)
      if (config.checkpoint_every and step % config.checkpoint_every == 0
          or step == config.total_steps):
        _checkpoint(ckpt, state, data_iter, step)
      if stop.received is not None:
        _checkpoint(ckpt, state, data_iter, step)
        ckpt.close()
        writer.close()
        print(f"Stopped by signal {stop.received} at step {step}; checkpoint saved."
              " Re-run the same command to resume.", flush=True)
        raise SystemExit(128 + stop.received)
  ckpt.close()
  writer.close()
  if not final:  # Resumed a finished run: evaluate the restored params once more.
    final = evaluate(state.params)
  _print_summary(final, getattr(evaluate, "chance", {}))
  return final


def evaluate_checkpoint(config: Any, workdir: str) -> dict[str, float]:
  """Evaluates the newest checkpoint in ``workdir`` without training."""
  from mmie.evaluate import build_contrastive_evaluator

  run = setup.build_run(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                      max_to_keep=config.get("keep_checkpoints", 2))
  restored = ckpt.restore_latest(setup.abstract_with_shardings(run))
  if restored is None:
    raise FileNotFoundError(f"No checkpoint under {ckpt.directory}; train first.")
  evaluate = build_contrastive_evaluator(config, run.model)
  metrics = evaluate(restored.state.params)
  MetricsWriter(workdir, resume_step=None, enabled=jax.process_index() == 0).write(
      restored.step, metrics)
  _print_summary(metrics, getattr(evaluate, "chance", {}))
  return metrics


def _print_summary(metrics: dict[str, float], chance: dict[str, float]) -> None:
  print("Final evaluation:", flush=True)
  for k, v in sorted(metrics.items()):
    print(f"  {k:40s} {v:8.2f}")
  if chance:
    print("Chance levels: " + ", ".join(f"{k} {v:.2f}" for k, v in chance.items()), flush=True)
