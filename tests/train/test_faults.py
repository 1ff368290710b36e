"""Faults lose nothing: SIGKILL at several points, SIGTERM, a corrupt checkpoint, NaNs."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmie.configs import clip as clip_config
from mmie import config as config_lib
from mmie.train import loop, setup
from mmie.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config=configs/clip.py:tiny", "--config.total_steps=8", "--config.checkpoint_every=1",
        "--config.eval_every=0", "--config.log_every=1"]


def _env():
  env = dict(os.environ)
  env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(os.path.join(ROOT, ".jax_cache"))
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  return env


def _start(workdir):
  return subprocess.Popen([sys.executable, "main.py", *ARGS, f"--workdir={workdir}"], cwd=ROOT,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(proc, workdir, step, timeout=600):
  path = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    assert proc.poll() is None, f"run ended before checkpoint {step}:\n{proc.stdout.read()}"
    assert time.time() < deadline, f"no checkpoint {step} after {timeout}s"
    time.sleep(0.05)


def _config():
  cfg = clip_config.get_config("tiny")
  cfg.total_steps, cfg.checkpoint_every, cfg.eval_every, cfg.log_every = 8, 1, 0, 1
  return config_lib.validate(cfg)


def _restore(workdir, step=None):
  run = setup.build_run(_config())
  stage_run = setup.build_stage(run, run.stages[0])
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  restored = ckpt.restore_latest(setup.abstract_state(run, stage_run))
  ckpt.close()
  return restored


def _assert_same_params(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  proc = _start(workdir)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  return workdir


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_is_bit_identical(straight, tmp_path):
  workdir = str(tmp_path)
  for kill_after in (2, 5):  # Killed mid-run twice, each time just after a save started.
    proc = _start(workdir)
    _wait_for_checkpoint(proc, workdir, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  proc = _start(workdir)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  assert "Resumed from the checkpoint" in out
  resumed, reference = _restore(workdir), _restore(straight)
  assert resumed.step == reference.step == 8
  _assert_same_params(resumed, reference)
  assert resumed.data_state == reference.data_state


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path)
  proc = _start(workdir)
  _wait_for_checkpoint(proc, workdir, 2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
  assert "checkpoint saved" in out
  stopped_at = int(out.split("Stopped by signal 15 at step ")[1].split(";")[0])
  assert _restore(workdir).step == stopped_at


# main.py, with the disk full from the save of step {step} on: the process's file-size limit
# drops to 0, so every write that would grow a file fails (EFBIG; Python ignores SIGXFSZ).
_FULL_FROM_SAVE = """
import resource, sys
from mmie.train import checkpoint
save = checkpoint.Checkpointer.save
def full_from(self, step, *args, **kwargs):
  if step == {step}:
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
  return save(self, step, *args, **kwargs)
checkpoint.Checkpointer.save = full_from
from mmie import main
sys.argv = ["main.py", *sys.argv[1:]]
main.run()
"""


@pytest.mark.slow
def test_disk_full_stops_clearly_keeps_the_last_checkpoint_and_resumes(straight, tmp_path):
  workdir = str(tmp_path / "run")
  full = subprocess.run([sys.executable, "-c", _FULL_FROM_SAVE.format(step=5), *ARGS,
                         f"--workdir={workdir}"], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=600)  # Pipes, not files: they are not limited.
  assert full.returncode == 74, full.stderr[-3000:]
  line = full.stderr.strip().splitlines()[-1]  # The last line: no echoes after it.
  kept = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert kept and max(kept) < 5, kept
  # The write that failed first: a checkpoint file, metrics.jsonl or TensorBoard's events,
  # named when the error carries its path; a write to an already open file (an event file's
  # flush) carries none, and the line then says where, not which.
  assert re.match(r"Stopped: Out of disk space \(or over a quota or file-size limit: File too "
                  rf"large\) while writing ({re.escape(workdir)}/|a file in the workdir:)",
                  line), line
  # The step it names is whole on disk (a save already written may still have been renamed
  # into place after the line was composed, so it need not be the newest).
  named = int(re.search(r"the newest complete checkpoint, step (\d+), is intact", line).group(1))
  assert named in kept, (named, kept)
  resumed = _start(workdir)  # Space is back: the same command goes on from that checkpoint.
  out, _ = resumed.communicate(timeout=900)
  assert resumed.returncode == 0, out[-3000:]
  assert f"Resumed from the checkpoint at step {kept[-1]}" in out
  restored, reference = _restore(workdir), _restore(straight)
  assert restored.step == reference.step == 8
  _assert_same_params(restored, reference)
  assert restored.data_state == reference.data_state


def _corrupt(step_dir):
  """Truncates every array data file of a checkpoint, as a failing disk might."""
  corrupted = 0
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      if "state" in root and os.path.getsize(path) > 64 and not name.endswith(".json"):
        with open(path, "r+b") as f:
          f.truncate(16)
        corrupted += 1
  assert corrupted


def test_corrupt_latest_checkpoint_falls_back_to_previous(straight, tmp_path, capfd):
  workdir = str(tmp_path / "run")
  shutil.copytree(straight, workdir)
  _corrupt(os.path.join(workdir, "checkpoints", "8"))
  restored = _restore(workdir)
  assert restored.step == 7  # The previous good one.
  # Training from there reproduces the lost step exactly.
  loop.train_and_evaluate(_config(), workdir)
  _assert_same_params(_restore(workdir), _restore(straight))


def test_nonfinite_update_is_skipped_and_counted():
  config = _config()
  run = setup.build_run(config)
  stage_run = setup.build_stage(run, run.stages[0])
  state = setup.init_state(run, stage_run)
  before = jax.tree.map(np.asarray, state.params)
  step_fn = setup.jit_train_step(run, stage_run)
  batch = setup.example_batch(config, config.batch_size)
  batch["image"][0, 0, 0, 0] = np.nan
  state, metrics = step_fn(state, setup.to_global(run, batch))
  assert not np.isfinite(float(metrics["loss"]))
  assert int(state.nonfinite_count) == 1 and int(state.step) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))


class _NanIterator:
  """Stands in for the data iterator: batches from the ``nan_from``-th on have a NaN pixel."""

  def __init__(self, config, nan_from: int = 1):
    self.clean = setup.example_batch(config, config.batch_size)
    self.batch = {k: v.copy() for k, v in self.clean.items()}
    self.batch["image"][:, 0, 0, 0] = np.nan
    self.position, self.nan_from = 0, nan_from

  def __next__(self):
    self.position += 1
    return self.batch if self.position >= self.nan_from else self.clean

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def test_nonfinite_stop_policy_stops_with_the_step(tmp_path, monkeypatch):
  from mmie.data import pipeline
  cfg = clip_config.get_config("tiny")
  cfg.train = {"on_nonfinite": "stop"}
  cfg.log_every = 5  # Not a log step: 'stop' checks every step.
  config = config_lib.validate(cfg)
  monkeypatch.setattr(pipeline, "build_train_iterator",
                      lambda *a, **k: _NanIterator(config, nan_from=2))
  with pytest.raises(loop.NonFiniteError, match=r"1 update\(s\) skipped by step 2;"
                                                r" last metrics \{.*'loss': nan"):
    loop.train_and_evaluate(config, str(tmp_path))
  # The state it saved is the finite one after step 1 (step 2's update was skipped).
  run = setup.build_run(config)
  stage_run = setup.build_stage(run, run.stages[0])
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  restored = ckpt.restore_latest(setup.abstract_state(run, stage_run))
  ckpt.close()
  assert restored.step == 2 and int(restored.state.nonfinite_count) == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.state.params))
  # Re-run once the data is clean: it goes on from step 2 (the skipped update was reported
  # by the run that met it, so the restored count does not stop this one) to the end.
  monkeypatch.setattr(pipeline, "build_train_iterator",
                      lambda *a, **k: _NanIterator(config, nan_from=config.total_steps + 1))
  loop.train_and_evaluate(config, str(tmp_path))
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  finished = ckpt.restore_latest(setup.abstract_state(run, stage_run))
  ckpt.close()
  assert finished.step == config.total_steps and int(finished.state.nonfinite_count) == 1


@pytest.mark.slow
def test_checkpoint_of_another_config_is_refused_naming_what_differs(straight, tmp_path):
  """Resuming a workdir with a different model stops before training, names the differing
  tensors, and leaves every checkpoint where it was (it is not corrupt, only another run's)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(straight, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  result = subprocess.run([sys.executable, "main.py", *ARGS, f"--workdir={workdir}",
                           "--config.model.image.width=48"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 2, result.stderr[-3000:]
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("Invalid config: The checkpoint at step 8"), error
  assert "shapes differ: params/image/" in error and "saved, (48" in error, error
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))
  with open(os.path.join(straight, "config.json")) as f, \
       open(os.path.join(workdir, "config.json")) as g:
    assert f.read() == g.read(), "config.json still names the config that wrote the checkpoints"
