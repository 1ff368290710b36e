"""Faults at random moments, and proof that nothing is lost: every interrupted run, resumed
with the same command, ends bit-identical to one that was never interrupted.

    python scripts/chaos.py --runs=20 [--seed=0] [--workdir=DIR]

The run under test is the tiny three-stage curriculum (configs/multistage.py: a memory queue
in its second stage, hard negatives in its third) with an EMA of the weights and two-step
gradient accumulation, checkpointing every 2 steps and evaluating twice. Cases:

* ``sigkill``: ``--runs`` runs, each killed with SIGKILL at a moment drawn (seeded) across the
  straight run's duration (compile, training, evaluation, checkpoint writes and the stage
  switches all fall in it), then resumed with the same command.
* ``sigterm``: a third as many runs stopped with SIGTERM at random moments: each must exit
  within 60 s (143 = 128 + SIGTERM after saving a checkpoint inside the training loop, or
  killed by the signal before the loop or after its last checkpoint), then resume.
* ``torn``: the finished run's newest checkpoint with its array files truncated, then one
  with a file removed: the resume falls back to the previous checkpoint and re-runs the rest.
* ``another_config``: the finished workdir resumed with a wider image tower: refused with
  exit 2 naming what differs, every checkpoint left in place.

Each resumed run is compared with the straight run: every array of the final TrainState
(params, optimizer and loss state, EMA, RNG, step), the data iterator's position, and
``metrics.jsonl`` without its wall-clock fields. The table lists each case's runs, outcome
and how many of them lost anything; the exit status is 1 if any did. Workdirs live in a
temporary folder, removed at the end unless ``--workdir`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # The package, from any working directory.

OVERRIDES = ["--config.train.ema_decay=0.9", "--config.train.grad_accum_steps=2",
             "--config.stages.projections.total_steps=4",
             "--config.stages.top_blocks.total_steps=4", "--config.stages.full.total_steps=4",
             "--config.total_steps=12",
             "--config.checkpoint_every=2", "--config.eval_every=6", "--config.log_every=1"]
CONFIG = "--config=configs/multistage.py:tiny"
WALL_CLOCK = {"time", "examples_per_second", "step_seconds", "compile_seconds", "mfu"}


def _command(workdir: str, *extra: str) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "main.py"), CONFIG, *OVERRIDES, *extra,
          f"--workdir={workdir}"]


def _env(data_dir: str) -> dict[str, str]:
  """No persistent compilation cache: every run compiles as the straight one did, so the
  drawn moments fall in the same phases."""
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith("JAX_COMPILATION_CACHE")}
  env["MMIE_DATA_DIR"] = data_dir
  return env


def _run(workdir: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(_command(workdir, *extra), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=1800)


def _interrupt(workdir: str, env: dict[str, str], delay: float, sig: int) -> tuple[int, float]:
  """Starts the run, sends ``sig`` after ``delay`` s; (exit status, seconds to exit)."""
  proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  time.sleep(delay)
  sent = time.perf_counter()
  proc.send_signal(sig)
  status = proc.wait(timeout=600)
  return status, time.perf_counter() - sent


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in f]


def _final_state(workdir: str):
  """(step, flat arrays of the TrainState, data position) of the newest checkpoint."""
  import functools

  import jax
  import ml_collections
  import numpy as np

  from mmie import config as config_lib
  from mmie.train import setup
  from mmie.train.checkpoint import Checkpointer

  with open(os.path.join(workdir, "config.json")) as f:
    config = config_lib.validate(ml_collections.ConfigDict(json.load(f)))
  run = setup.build_run(config, check_data=False)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    restored = ckpt.restore_latest(functools.partial(setup.abstract_state_at, run))
  finally:
    ckpt.close()
  is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
  leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
  arrays = {jax.tree_util.keystr(p): np.asarray(jax.random.key_data(x) if is_key(x) else x)
            for p, x in leaves}
  return restored.step, arrays, restored.data_state


def _lost(workdir: str, straight: tuple, straight_metrics: list[dict]) -> list[str]:
  """What differs from the straight run (empty: nothing lost)."""
  import numpy as np

  step, arrays, data = _final_state(workdir)
  want_step, want_arrays, want_data = straight
  problems = []
  if step != want_step:
    problems.append(f"final step {step} != {want_step}")
  if arrays.keys() != want_arrays.keys():
    problems.append("state structure differs")
  problems += [f"{k} differs" for k in sorted(arrays.keys() & want_arrays.keys())
               if arrays[k].dtype != want_arrays[k].dtype
               or not np.array_equal(arrays[k], want_arrays[k], equal_nan=True)]
  if data != want_data:
    problems.append("data iterator position differs")
  if _metrics(workdir) != straight_metrics:
    problems.append("metrics.jsonl differs")
  return problems


def _corrupt_newest(workdir: str, how: str) -> int:
  """Truncates the newest checkpoint's array files, or removes one; returns that step."""
  root = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(root) if d.isdigit())
  state_dir = os.path.join(root, str(step), "state")
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs
                 if os.path.getsize(os.path.join(d, f)) > 64 and not f.endswith(".json"))
  for path in files if how == "truncate" else files[:1]:
    if how == "truncate":
      with open(path, "r+b") as f:
        f.truncate(16)
    else:
      os.remove(path)
  return step


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=20, help="SIGKILL runs (SIGTERM: a third).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="", help="Keep the runs here (default: removed).")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  base = args.workdir or tempfile.mkdtemp(prefix="mmie_chaos_")
  os.makedirs(base, exist_ok=True)
  env = _env(os.path.join(base, "data"))
  rng = random.Random(args.seed)
  rows = []
  try:
    straight_dir = os.path.join(base, "straight")
    t0 = time.perf_counter()
    result = _run(straight_dir, env)
    duration = time.perf_counter() - t0
    if result.returncode:
      print(result.stderr[-3000:], file=sys.stderr)
      return 1
    straight, straight_metrics = _final_state(straight_dir), _metrics(straight_dir)
    print(f"straight run: {duration:.0f} s, final step {straight[0]}", flush=True)

    def resumed_case(name: str, count: int, sig: int) -> None:
      lost, notes = 0, []
      for i in range(count):
        workdir = os.path.join(base, f"{name}{i}")
        delay = rng.uniform(0.05, 0.95) * duration
        status, seconds = _interrupt(workdir, env, delay, sig)
        finished = status == 0  # It ended before the signal came: nothing to resume.
        # SIGTERM inside the training loop finishes the step, saves and exits 143; before the
        # loop (data preparation, compile) or after its last checkpoint (final evaluation) the
        # default action ends the process at once (-15), which loses nothing either.
        ok_exit = finished or (status == -signal.SIGKILL if sig == signal.SIGKILL else (
            status in (128 + signal.SIGTERM, -signal.SIGTERM) and seconds < 60))
        resumed = _run(workdir, env) if not finished else subprocess.CompletedProcess([], 0)
        problems = ([] if ok_exit else [f"exit {status} after {seconds:.1f} s"]) + (
            [f"resume exit {resumed.returncode}"] if resumed.returncode else
            _lost(workdir, straight, straight_metrics))
        lost += bool(problems)
        notes.append(f"{delay:.1f}s" + (f" ({'; '.join(problems)})" if problems else ""))
        print(f"{name} {i}: at {delay:.1f} s -> {'; '.join(problems) or 'identical'}", flush=True)
      rows.append((name, count, f"identical after resume at {', '.join(notes)}", lost))

    resumed_case("sigkill", args.runs, signal.SIGKILL)
    resumed_case("sigterm", max(1, args.runs // 3), signal.SIGTERM)

    for how in ("truncate", "remove"):
      workdir = os.path.join(base, f"torn_{how}")
      shutil.copytree(straight_dir, workdir)
      step = _corrupt_newest(workdir, how)
      resumed = _run(workdir, env)
      problems = ([f"resume exit {resumed.returncode}"] if resumed.returncode else
                  _lost(workdir, straight, straight_metrics))
      aside = os.path.isdir(os.path.join(workdir, "checkpoints_corrupt"))
      problems += [] if aside else ["torn checkpoint not moved to checkpoints_corrupt/"]
      rows.append((f"torn ({how} files of step {step})", 1,
                   "fell back, re-ran, identical" if not problems else "; ".join(problems),
                   int(bool(problems))))

    workdir = os.path.join(base, "another_config")
    shutil.copytree(straight_dir, workdir)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    refused = _run(workdir, env, "--config.model.image.width=48")
    message = (refused.stderr.strip().splitlines() or [""])[-1]
    kept = sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    ok = refused.returncode == 2 and "shapes differ" in message and kept
    rows.append(("another_config", 1, f"exit {refused.returncode}: {message[:90]}...", int(not ok)))
  finally:
    if not args.workdir:
      shutil.rmtree(base, ignore_errors=True)

  print("\n| case | runs | outcome | runs that lost anything |\n|---|---:|---|---:|")
  for name, count, outcome, lost in rows:
    print(f"| {name} | {count} | {outcome} | {lost} |")
  total = sum(lost for *_, lost in rows)
  print(f"\nTotal {time.perf_counter() - start:.0f} s; lost: {total}.")
  return 1 if total else 0


if __name__ == "__main__":
  sys.exit(main())
