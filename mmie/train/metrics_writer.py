"""Where metrics go: ``metrics.jsonl``, TensorBoard event files, and a progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np


def _to_python(value: Any) -> float | int:
  value = np.asarray(value)
  return value.item() if value.size == 1 else value.tolist()


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard.

  ``resume_step``: the step training (re)starts from. Lines of later steps, written by a run
  that was interrupted before its next checkpoint, are dropped first, so the file reads
  exactly as if the run had never been interrupted. None only appends (evaluation runs).
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # Writes event files without TensorFlow.
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step)

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut by a kill mid-write.
        if record.get("step", -1) <= step:
          kept.append(json.dumps(record))
    with open(self.path, "w") as f:
      f.write("".join(k + "\n" for k in kept))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time()}  # Unix time: curves against wall time.
    record.update({k: _to_python(v) for k, v in metrics.items()})
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:  # A failed write() names no file; a full disk's error should.
      raise OSError(e.errno, e.strerror, e.filename or self.path) from e
    for k, v in record.items():
      if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(k, v, int(step))
    try:
      self._tb.flush()
    except OSError as e:
      raise OSError(e.errno, e.strerror,
                    e.filename or os.path.join(os.path.dirname(self.path), "tensorboard")) from e

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A one-line progress report: step, loss, throughput and ETA."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int, stream=sys.stdout):
    self.total = total_steps
    self.batch_size = batch_size
    self.stream = stream
    self._t0 = time.perf_counter()
    self._s0 = start_step

  def restart_clock(self, step: int) -> None:
    """Starts timing after compilation, so throughput and ETA describe steady state."""
    self._t0 = time.perf_counter()
    self._s0 = step

  def rates(self, step: int) -> tuple[float, float]:
    """(steps per second, examples per second) since the clock started."""
    elapsed = max(time.perf_counter() - self._t0, 1e-9)
    steps_per_s = (step - self._s0) / elapsed
    return steps_per_s, steps_per_s * self.batch_size

  def report(self, step: int, loss: float) -> str:
    steps_per_s, examples_per_s = self.rates(step)
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("nan")
    line = (f"step {step:>6}/{self.total}  loss {loss:8.4f}  {examples_per_s:8.1f} ex/s"
            f"  ETA {_format_seconds(eta)}")
    print(line, file=self.stream, flush=True)
    return line


def _format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "--:--"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
