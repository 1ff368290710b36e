"""Two processes on 127.0.0.1 (jax.distributed + gloo) train like one process.

The reference is a single process with the same 8 devices and the same global batches: the
concatenation of both hosts' shards, which is what the two processes assemble with
``make_array_from_process_local_data``.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmie.configs import clip as clip_config
from mmie import config as config_lib
from mmie.data import pipeline
from mmie.train import setup
from mmie.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "train", "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _reference_params(config):
  """Single process, 8 devices, each step's batch = host 0's shard then host 1's."""
  run = setup.build_run(config)
  stage_run = setup.build_stage(run, run.stages[0])
  state = setup.init_state(run, stage_run)
  step_fn = setup.jit_train_step(run, stage_run)
  hosts = [pipeline.build_train_iterator(config.data, batch_size=config.batch_size,
                                         seed=config.seed, process_index=i, process_count=2)
           for i in range(2)]
  for _ in range(config.total_steps):
    parts = [next(h) for h in hosts]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    state, _ = step_fn(state, setup.to_global(run, batch))
  return run, stage_run, state, [h.get_state() for h in hosts]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  workdir = str(tmp_path / "run")
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), "2", str(port), workdir],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outputs.append(out)
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
    assert f"process {i} done" in out

  config = config_lib.validate(clip_config.get_config("tiny"))
  run, stage_run, expected, host_positions = _reference_params(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  restored = ckpt.restore_latest(setup.abstract_state(run, stage_run))
  ckpt.close()
  assert restored.step == config.total_steps
  # Cross-process all-reduces sum in another order than one process does. Adam divides each
  # gradient by its own running scale, so that rounding can move a parameter whose gradient
  # is ~0 by up to ~lr * 1e-3; hence atol 1e-5 on parameters of size ~1e-1.
  for got, want in zip(jax.tree.leaves(restored.state.params), jax.tree.leaves(expected.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
  # Each host checkpointed its own iterator position; one process cannot resume them exactly.
  assert list(restored.data_states) == host_positions
  assert restored.data_state == {}
