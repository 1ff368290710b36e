"""Faults at random moments, and proof that nothing is lost: every interrupted run, resumed
with the same command, ends bit-identical to one that was never interrupted.

    python scripts/chaos.py --runs=20 [--seed=0] [--workdir=DIR]

The run under test is the tiny three-stage curriculum (configs/multistage.py: a memory queue
in its second stage, hard negatives in its third) with an EMA of the weights and two-step
gradient accumulation, checkpointing every 2 steps and evaluating twice. Cases:

* ``sigkill``: ``--runs`` runs, each killed with SIGKILL at a moment drawn (seeded) across the
  straight run's duration (compile, training, evaluation, checkpoint writes and the stage
  switches all fall in it), then resumed with the same command. The runs a fault is timed
  against compile as the straight run did; resumes use a persistent compilation cache.
* ``sigterm``: a third as many runs stopped with SIGTERM at random moments: each must exit
  within 60 s (143 = 128 + SIGTERM after saving a checkpoint inside the training loop, or
  killed by the signal before the loop or after its last checkpoint), then resume.
* ``torn``: the finished run's newest checkpoint with its array files truncated, then one
  with a file removed: the resume falls back to the previous checkpoint and re-runs the rest.
* ``another_config``: the finished workdir resumed with a wider image tower: refused with
  exit 2 naming what differs, every checkpoint left in place.
* ``disk_full``: a tenth as many runs (at least one) whose disk fills at a random moment (the
  process's file-size limit drops to 0 bytes, so every write that would grow a file fails
  with EFBIG, as on a full disk): each must stop with exit 74 and one line naming the newest
  complete checkpoint, which must be listed unchanged; with space back, the same command
  resumes from it.
* ``nan_skip`` / ``nan_stop``: a NaN pixel in the batch of a random step K (odd, so that
  K - 1 is a checkpoint of the same stage). Under ``train.on_nonfinite='skip'`` the run
  finishes with that one update skipped and counted, identical to the straight run before
  K; under ``'stop'`` it exits 3 with the step named, its checkpoint at K equal to the one at
  K - 1 in every array but the step and the skip counter, and resuming with the same command
  ends bit-identical to the ``skip`` run.
* ``two_process``: the same run on two ``jax.distributed`` processes (gloo over 127.0.0.1),
  straight once, then a tenth as many runs (at least one) with one process (drawn) killed at a
  random moment. The survivor must stop by itself within 30 s (``--heartbeat_timeout_seconds``
  is 10), else it is stopped as a cluster scheduler stops the rest of a job whose task died,
  and the run counts as lost; both are relaunched with the same commands, and the end must be
  bit-identical to the straight two-process run.

Each resumed run is compared with the straight run: every array of the final TrainState
(params, optimizer and loss state, EMA, RNG, step), the data iterator's position, and
``metrics.jsonl`` without its wall-clock fields. The table lists each case's runs, outcome
and how many of them lost anything; the exit status is 1 if any did. Workdirs live in a
temporary folder, removed at the end unless ``--workdir`` names one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
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


NAN_STEPS = (3, 7, 11)  # One per stage; K - 1 is a checkpoint (every 2) of the same stage.
EXIT_NONFINITE, EXIT_OUT_OF_SPACE = 3, 74  # mmie/cli.py's, read without importing jax here.
HEARTBEAT = 10  # A process silent this long is declared dead by the coordination service.
SURVIVOR_GRACE = 30.0  # Seconds the other process of a two-process run gets to fail alone.


def _command(workdir: str, *extra: str, inject: str = "") -> list[str]:
  """main.py's command line, or scripts/chaos_faults.py running main.py with a fault."""
  entry = [os.path.join(ROOT, "main.py")] if not inject else [
      os.path.join(ROOT, "scripts", "chaos_faults.py"), inject, "--"]
  return [sys.executable, *entry, CONFIG, *OVERRIDES, *extra, f"--workdir={workdir}"]


def _distributed(port: int, process_id: int) -> list[str]:
  return [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
          f"--process_id={process_id}", f"--heartbeat_timeout_seconds={HEARTBEAT}"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(data_dir: str) -> dict[str, str]:
  """No persistent compilation cache: every run compiles as the straight one did, so the
  drawn moments fall in the same phases."""
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith("JAX_COMPILATION_CACHE")}
  env["MMIE_DATA_DIR"] = data_dir
  return env


def _cached(env: dict[str, str], cache_dir: str) -> dict[str, str]:
  """``env`` with JAX's persistent compilation cache, for the runs no fault is timed against
  (resumes, NaN runs): the same executables, compiled once instead of at every resume."""
  return {**env, "JAX_COMPILATION_CACHE_DIR": cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _run(workdir: str, env: dict[str, str], *extra: str,
         inject: str = "") -> subprocess.CompletedProcess:
  return subprocess.run(_command(workdir, *extra, inject=inject), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1800)


def _run_two(workdir: str, env: dict[str, str], kill_at: float | None = None,
             victim: int = 0) -> tuple[list[int], str, bool]:
  """A two-process run; with ``kill_at``, process ``victim`` is SIGKILLed after that many
  seconds. Returns both exit statuses, what became of the other process, and whether it hung
  (had to be stopped)."""
  port = _free_port()
  os.makedirs(workdir, exist_ok=True)
  logs = [open(os.path.join(workdir, f"process{i}.log"), "a") for i in range(2)]
  procs = [subprocess.Popen(_command(workdir, *_distributed(port, i)), cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT) for i, log in enumerate(logs)]
  survivor, hung = "", False
  try:
    if kill_at is not None:
      time.sleep(kill_at)
      if procs[victim].poll() is None:
        procs[victim].kill()
        other = procs[1 - victim]
        try:
          status = other.wait(timeout=SURVIVOR_GRACE)
          survivor = f"process {1 - victim} exited {status} by itself"
        except subprocess.TimeoutExpired:
          other.kill()
          hung = True
          survivor = f"process {1 - victim} stopped after {SURVIVOR_GRACE:.0f} s"
    statuses = [p.wait(timeout=1800) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for log in logs:
      log.close()
  return statuses, survivor, hung


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
  """metrics.jsonl without wall-clock fields; NaN as a string, so that NaN == NaN."""
  nan = lambda v: "nan" if isinstance(v, float) and math.isnan(v) else v
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: nan(v) for k, v in json.loads(line).items() if k not in WALL_CLOCK}
            for line in f]


def _final_state(workdir: str, step: int | None = None):
  """(step, flat arrays of the TrainState, every process's data position) of the newest
  checkpoint, or of the one at ``step``."""
  import functools
  import logging

  import jax
  import ml_collections
  import numpy as np

  from mmie import config as config_lib
  from mmie.train import setup
  from mmie.train.checkpoint import Checkpointer

  with open(os.path.join(workdir, "config.json")) as f:
    config = config_lib.validate(ml_collections.ConfigDict(json.load(f)))
  run = setup.build_run(config, check_data=False)
  # Reading a two-process run's checkpoint here warns that its data positions (compared as
  # saved) would not apply to one process.
  logging.getLogger("mmie.train.checkpoint").setLevel(logging.ERROR)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))  # Reads only: deletes nothing.
  abstract = functools.partial(setup.abstract_state_at, run)
  try:
    restored = (ckpt.restore_latest(abstract) if step is None
                else ckpt.restore_step(step, abstract))
  finally:
    ckpt.close()
  is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
  leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
  arrays = {jax.tree_util.keystr(p): np.asarray(jax.random.key_data(x) if is_key(x) else x)
            for p, x in leaves}
  return restored.step, arrays, restored.data_states


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


def _outcome(problems: list[str], good: str) -> str:
  return "; ".join(problems) if problems else good


def _disk_full_case(workdir: str, env: dict[str, str], resume_env: dict[str, str], delay: float,
                    straight: tuple, straight_metrics: list[dict]) -> list[str]:
  """Fills the disk ``delay`` s into a run, checks the stop, frees it, resumes, compares."""
  from mmie.train import storage

  stopped = _run(workdir, env, inject=f"disk_full:{delay:.2f}")
  if stopped.returncode == 0:  # Its last write came before the disk filled.
    return _lost(workdir, straight, straight_metrics)
  line = (stopped.stderr.strip().splitlines() or [""])[-1]
  kept = storage.committed_steps(os.path.join(workdir, "checkpoints"))
  problems = []
  if stopped.returncode != EXIT_OUT_OF_SPACE or not line.startswith("Stopped: Out of disk"):
    problems.append(f"exit {stopped.returncode}: {line[-200:]}")
  elif kept and f"step {kept[-1]}, is intact (checkpoints on disk: steps {kept})" not in line:
    problems.append(f"the error does not name the checkpoints on disk {kept}: {line}")
  resumed = _run(workdir, resume_env)
  if resumed.returncode:
    return problems + [f"resume exit {resumed.returncode}"]
  if kept and f"Resumed from the checkpoint at step {kept[-1]}" not in resumed.stdout:
    problems.append(f"did not resume from step {kept[-1]}")
  return problems + _lost(workdir, straight, straight_metrics)


def _nan_cases(base: str, env: dict[str, str], step: int, straight: tuple,
               straight_metrics: list[dict]) -> list[tuple[str, int, str, int]]:
  """A NaN in the batch of ``step`` under both ``train.on_nonfinite`` policies (table rows)."""
  import numpy as np

  skip_dir, stop_dir = os.path.join(base, "nan_skip"), os.path.join(base, "nan_stop")
  skip = _run(skip_dir, env, "--config.train.on_nonfinite=skip", inject=f"nan:{step}")
  problems = [f"exit {skip.returncode}"] if skip.returncode else []
  if not problems:
    final_step, arrays, _ = _final_state(skip_dir)
    metrics = _metrics(skip_dir)
    at_k = [m for m in metrics if m["step"] == step and "loss" in m]
    if final_step != straight[0] or int(arrays[".nonfinite_count"]) != 1:
      problems.append(f"step {final_step}, {arrays['.nonfinite_count']} skipped (want 1)")
    if not at_k or at_k[0]["loss"] != "nan" or at_k[0]["nonfinite_count"] != 1:
      problems.append(f"step {step} not logged as a skipped NaN update")
    if [m for m in metrics if m["step"] < step] != [
        m for m in straight_metrics if m["step"] < step]:
      problems.append(f"differs from the straight run before step {step}")
    problems += [f"{k} not finite" for k, v in arrays.items()
                 if v.dtype.kind == "f" and not np.isfinite(v).all()]
  rows = [(f"nan_skip (NaN at step {step})", 1,
           _outcome(problems, "update skipped and counted, the rest trained, all finite"),
           int(bool(problems)))]

  stop = _run(stop_dir, env, "--config.train.on_nonfinite=stop", inject=f"nan:{step}")
  line = (stop.stderr.strip().splitlines() or [""])[-1]
  problems = []
  if stop.returncode != EXIT_NONFINITE or f"skipped by step {step};" not in line:
    problems.append(f"exit {stop.returncode}: {line[-200:]}")
  else:
    at_k, before = _final_state(stop_dir, step), _final_state(stop_dir, step - 1)
    counters = {".step": 1, ".nonfinite_count": 1}  # The only arrays a skipped update moves.
    problems += [f"{k} changed by the skipped update" for k in sorted(at_k[1])
                 if not np.array_equal(at_k[1][k] - counters.get(k, 0), before[1][k])]
    resumed = _run(stop_dir, env, "--config.train.on_nonfinite=stop")
    problems += ([f"resume exit {resumed.returncode}"] if resumed.returncode else
                 [] if skip.returncode else
                 _lost(stop_dir, _final_state(skip_dir), _metrics(skip_dir)))
  rows.append((f"nan_stop (NaN at step {step})", 1, _outcome(
      problems, f"exit 3 naming step {step}; saved state = step {step - 1}'s; resumed ="
      " nan_skip run"), int(bool(problems))))
  return rows


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=20,
                      help="SIGKILL runs (SIGTERM: a third; disk full, two-process: a tenth).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="", help="Keep the runs here (default: removed).")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  base = args.workdir or tempfile.mkdtemp(prefix="mmie_chaos_")
  os.makedirs(base, exist_ok=True)
  env = _env(os.path.join(base, "data"))
  resume_env = _cached(env, os.path.join(base, "jax_cache"))
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
        resumed = (_run(workdir, resume_env) if not finished
                   else subprocess.CompletedProcess([], 0))
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
      resumed = _run(workdir, resume_env)
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
    refused = _run(workdir, resume_env, "--config.model.image.width=48")
    message = (refused.stderr.strip().splitlines() or [""])[-1]
    kept = sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    ok = refused.returncode == 2 and "shapes differ" in message and kept
    rows.append(("another_config", 1, f"exit {refused.returncode}: {message[:90]}...", int(not ok)))

    tenth = max(1, args.runs // 10)
    lost, notes = 0, []
    for i in range(tenth):
      delay = rng.uniform(0.05, 0.95) * duration
      problems = _disk_full_case(os.path.join(base, f"disk_full{i}"), env, resume_env, delay,
                                 straight, straight_metrics)
      lost += bool(problems)
      notes.append(f"{delay:.1f}s" + (f" ({'; '.join(problems)})" if problems else ""))
      print(f"disk_full {i}: at {delay:.1f} s -> {_outcome(problems, 'identical')}", flush=True)
    rows.append(("disk_full", tenth, "exit 74 naming the intact checkpoint, resumed identical,"
                 f" filled at {', '.join(notes)}", lost))

    rows += _nan_cases(base, resume_env, rng.choice(NAN_STEPS), straight, straight_metrics)

    straight2_dir = os.path.join(base, "two_process")
    t0 = time.perf_counter()
    statuses, _, _ = _run_two(straight2_dir, env)
    duration2 = time.perf_counter() - t0
    if any(statuses):
      rows.append(("two_process", 0, f"straight run exited {statuses}", 1))
    else:
      straight2, metrics2 = _final_state(straight2_dir), _metrics(straight2_dir)
      print(f"two-process straight run: {duration2:.0f} s", flush=True)
      lost, notes = 0, []
      for i in range(tenth):
        workdir = os.path.join(base, f"two_process{i}")
        delay, victim = rng.uniform(0.05, 0.95) * duration2, rng.randrange(2)
        _, survivor, hung = _run_two(workdir, env, kill_at=delay, victim=victim)
        statuses, _, _ = _run_two(workdir, resume_env)
        problems = ([survivor] if hung else []) + (
            [f"resume exited {statuses}"] if any(statuses) else
            _lost(workdir, straight2, metrics2))
        lost += bool(problems)
        notes.append(f"process {victim} at {delay:.1f}s, {survivor or 'run had ended'}"
                     + (f" ({'; '.join(problems)})" if problems else ""))
        print(f"two_process {i}: {notes[-1]}", flush=True)
      rows.append(("two_process", tenth, "identical after relaunch; killed " + ", ".join(notes),
                   lost))
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
