"""The faults ``scripts/chaos.py`` injects into a run: main.py, started by this script with a
fault armed.

    python scripts/chaos_faults.py nan:STEP -- --config=... --workdir=...
    python scripts/chaos_faults.py disk_full:SECONDS -- --config=... --workdir=...

``nan:STEP`` puts a NaN pixel in the batch of global step STEP of a run started afresh;
``disk_full:SECONDS`` makes every write that would grow a file fail, SECONDS after the start,
as a full disk does. Everything after ``--`` is main.py's command line.
"""

from __future__ import annotations

import os
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # The package, from any working directory.


def _poison_batch(step: int) -> None:
  """Puts a NaN pixel in the batch of global ``step`` (1-based) of a run started afresh."""
  import numpy as np

  from mmie.data import pipeline

  build = pipeline.build_train_iterator

  class Poisoned:
    def __init__(self, inner):
      self.inner, self.drawn = inner, 0

    def __next__(self):
      batch = next(self.inner)
      self.drawn += 1
      if self.drawn == step:
        batch = dict(batch, image=np.array(batch["image"], np.float32))
        batch["image"][0, 0, 0, 0] = np.nan
      return batch

    def get_state(self):
      return self.inner.get_state()

    def set_state(self, state):
      raise RuntimeError("The NaN fault is injected into fresh runs only.")

  pipeline.build_train_iterator = lambda *a, **k: Poisoned(build(*a, **k))


def _fill_disk_after(seconds: float) -> None:
  """After ``seconds``, no write may grow any file: the process's file-size limit drops to 0.

  Python ignores SIGXFSZ, so each such write fails with EFBIG, as a full disk fails with
  ENOSPC; the limit is the process's own (its pipes to this script are not files).
  """
  import resource

  hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
  timer = threading.Timer(seconds, resource.setrlimit, (resource.RLIMIT_FSIZE, (0, hard)))
  timer.daemon = True
  timer.start()


def run_with_fault(inject: str, main_argv: list[str]) -> None:
  """Runs main.py in this process with the fault ``inject`` (``nan:STEP``, ``disk_full:S``)."""
  kind, _, value = inject.partition(":")
  if kind == "nan":
    _poison_batch(int(value))
  elif kind == "disk_full":
    _fill_disk_after(float(value))
  else:
    raise SystemExit(f"Unknown fault {inject!r}: nan:STEP or disk_full:SECONDS.")
  from mmie import main as mmie_main
  sys.argv = [os.path.join(ROOT, "main.py"), *main_argv]
  mmie_main.run()


if __name__ == "__main__":
  if len(sys.argv) < 3 or sys.argv[2] != "--":
    raise SystemExit(__doc__)
  run_with_fault(sys.argv[1], sys.argv[3:])
