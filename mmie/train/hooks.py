"""Loop hooks, each configured under ``config.train``: early stopping, profiler window, signals."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
from typing import Any, Callable, Mapping

import jax

from mmie.config import ConfigError
from mmie.train.schema import EARLY_STOPPING

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EarlyStopping:
  """Stops when ``metric`` has not improved by ``min_delta`` for ``patience`` evaluations.

  Its state (best value, evaluations without improvement, whether it fired) is saved in the
  checkpoint metadata so a resumed run keeps counting where it was.
  """

  metric: str
  mode: str = "max"
  patience: int = 3
  min_delta: float = 0.0
  best: float | None = None
  bad_evals: int = 0
  stopped: bool = False

  @classmethod
  def from_config(cls, spec: Mapping[str, Any] | None) -> "EarlyStopping | None":
    if not spec:
      return None
    spec = {k: v for k, v in dict(spec).items() if v is not None}
    unknown = sorted(set(spec) - set(EARLY_STOPPING))
    if unknown:
      raise ConfigError(f"Unknown config key train.early_stopping.{unknown[0]}; keys are"
                        f" {', '.join(EARLY_STOPPING)}.")
    if "metric" not in spec:  # The schema's default: off, unless other keys say otherwise.
      if any(spec.get(k, field.default) != field.default
             for k, field in EARLY_STOPPING.items() if k != "metric"):
        raise ConfigError("train.early_stopping needs a metric, e.g. 'eval/i2t_recall@5'.")
      return None
    if spec.get("mode", "max") not in ("max", "min"):
      raise ConfigError(f"train.early_stopping.mode={spec['mode']!r}; expected 'max' or 'min'.")
    if int(spec.get("patience", 3)) < 1:
      raise ConfigError("train.early_stopping.patience must be >= 1.")
    return cls(**spec)

  def update(self, metrics: Mapping[str, float]) -> bool:
    """Feeds one evaluation; returns True when training should stop."""
    if self.metric not in metrics:
      return False
    value = float(metrics[self.metric])
    sign = 1.0 if self.mode == "max" else -1.0
    if self.best is None or (math.isfinite(value)
                             and sign * (value - self.best) > self.min_delta):
      self.best = value
      self.bad_evals = 0
    else:
      self.bad_evals += 1
    self.stopped = self.bad_evals >= self.patience
    return self.stopped

  def state(self) -> dict[str, Any]:
    return {"best": self.best, "bad_evals": self.bad_evals, "stopped": self.stopped}

  def load(self, state: Mapping[str, Any] | None) -> None:
    if state:
      self.best, self.bad_evals, self.stopped = state["best"], state["bad_evals"], state["stopped"]


class ProfilerWindow:
  """Captures a ``jax.profiler`` trace for global steps ``[start, end)`` into workdir/profile."""

  def __init__(self, window: Any, workdir: str):
    self.start, self.end = (int(window[0]), int(window[1])) if window else (-1, -1)
    if window and not 0 <= self.start < self.end:
      raise ConfigError(f"train.profile_steps={tuple(window)}: expected (start, end) with"
                        " 0 <= start < end.")
    self.directory = os.path.join(workdir, "profile")
    self.active = False

  def before_step(self, step: int) -> None:
    if step == self.start and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after_step(self, step: int, outputs: Any) -> None:
    if self.active and step >= self.end:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
      log.warning("Profiler trace for steps [%d, %d) written to %s", self.start, self.end,
                  self.directory)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


class WorkdirLock:
  """Refuses a second live run in the same workdir (their metrics and checkpoints would mix).

  An advisory ``flock`` on ``workdir/.lock``, held for the life of the run; the kernel drops it
  when the process ends, even by SIGKILL, so resuming after a crash is never blocked. Only
  process 0 takes it: the hosts of one multi-host run share the workdir.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    import fcntl
    self._file = open(self.path, "a+")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "unknown"
      self._file.close()
      raise RuntimeError(f"Another run (pid {holder}) is using the workdir"
                         f" {os.path.dirname(self.path)}; wait for it or use another --workdir.")
    self._file.seek(0)
    self._file.truncate()
    self._file.write(str(os.getpid()))
    self._file.flush()
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.close()  # Closing releases the lock.
      self._file = None


class StopSignal:
  """Turns SIGTERM (preemption) and SIGINT (Ctrl-C) into a flag the loop checks each step."""

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopSignal":
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


def close_all(*closers: Callable[[], None]) -> None:
  """Calls every closer even if some fail, from a ``finally`` block.

  While an exception is already propagating (a failed save, a full disk), a closer's own
  failure (the same pending write failing again) is logged, not raised, so the first error
  is the one reported; otherwise the first closer's failure is raised after all have run.
  """
  propagating = sys.exc_info()[0] is not None
  first: BaseException | None = None
  for close in closers:
    try:
      close()
    except Exception as e:  # noqa: BLE001 - every closer must get its turn.
      if propagating:
        log.warning("While stopping on an error, %s also failed: %r",
                    getattr(close, "__qualname__", close), e)
      elif first is None:
        first = e
  if first is not None:
    raise first
