"""Two processes on 127.0.0.1 (jax.distributed + gloo) train like one process, also when one
is killed mid-run and both are relaunched from the command line.

The reference is a single process with the same 8 devices and the same global batches: the
concatenation of both hosts' shards, which is what the two processes assemble with
``make_array_from_process_local_data``.
"""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time

import jax
import numpy as np
import pytest
from PIL import Image

from mmie.configs import clip as clip_config
from mmie import config as config_lib
from mmie.data import emoji, pipeline
from mmie.evaluate import build_evaluators
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


def _write_shards(root) -> str:
  """Five webdataset shards of 8 emoji each (four train, one held out); their URL pattern."""
  images, rows = emoji.read_source(emoji.DEFAULT_SOURCE_DIR)
  for shard in range(5):
    with tarfile.open(root / f"{shard}.tar", "w") as tar:
      for i in range(shard * 8, shard * 8 + 8):
        png = io.BytesIO()
        Image.fromarray(images[i]).save(png, format="PNG")
        for name, payload in ((f"{i:04d}.png", png.getvalue()),
                              (f"{i:04d}.txt", rows[i]["caption"].encode())):
          info = tarfile.TarInfo(name)
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
  return f"file://{root}/{{0..4}}.tar"


@pytest.mark.slow
@pytest.mark.parametrize("streamed", [False, True], ids=["prepared", "streamed"])
def test_two_processes_match_one(tmp_path, streamed):
  """Also with a streamed webdataset: each process reads its own shards (mmie/data/streaming.py)
  and the run equals one process reading both hosts' streams."""
  workdir = str(tmp_path / "run")
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  data = []
  if streamed:
    (tmp_path / "shards").mkdir()
    data = [f"webdataset_stream(urls={_write_shards(tmp_path / 'shards')!r}, shuffle_shards=1)"]
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), "2", str(port), workdir, *data],
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

  _assert_matches_one_process(workdir, *data)


def _assert_matches_one_process(workdir: str, data_name: str = ""):
  """The two-process run's final checkpoint against the one-process reference."""
  config = clip_config.get_config("tiny")
  config.data.name = data_name or config.data.name
  config = config_lib.validate(config)
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
  return restored


HEARTBEAT = 15  # Seconds without a process's heartbeats before the run is declared broken.


def _main_py(process_id: int, port: int, workdir: str) -> subprocess.Popen:
  """One process of a two-process ``main.py`` run on 127.0.0.1, with 4 fake CPU devices."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  return subprocess.Popen(
      [sys.executable, "main.py", "--config=configs/clip.py:tiny", "--config.checkpoint_every=1",
       # FSDP over all 8 devices: each process holds half of every split parameter, so the
       # evaluation and the end-of-run plots must work without one process holding them all.
       "--config.mesh.data=1", "--config.mesh.fsdp=8",
       f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={process_id}", f"--heartbeat_timeout_seconds={HEARTBEAT}"], cwd=ROOT,
      env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout=600) -> list[str]:
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outputs


@pytest.mark.slow
def test_command_line_two_processes_one_killed_resume_and_match_one(tmp_path):
  """``main.py`` on two processes with FSDP across both: killing process 1 stops process 0
  instead of leaving it hanging, and relaunched, both resume and end as one process does.

  Process 0 stops one of two ways, by what it was doing: a collective that fails on the closed
  connection gives our one line and exit 75 at once; one that blocks ends when the
  coordination service misses process 1's heartbeats (``--heartbeat_timeout_seconds``), with
  JAX's own fatal message and an abort."""
  workdir = str(tmp_path / "run")
  port = _free_port()
  procs = [_main_py(i, port, workdir) for i in range(2)]
  try:
    deadline = time.time() + 600
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "2")):
      assert all(p.poll() is None for p in procs), _finish(procs)
      assert time.time() < deadline, "no checkpoint 2 after 600 s"
      time.sleep(0.05)
    procs[1].kill()
    killed_at = time.time()
    out0, _ = procs[0].communicate(timeout=300)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert time.time() - killed_at < HEARTBEAT + 45, "process 0 hung after process 1 died"
  assert "Process 0 of 2: 4 of 8 devices; global batch 16, this host's 8 from training" \
         " records 0::2" in out0
  last = out0.strip().splitlines()[-1]
  if procs[0].returncode == 75:
    assert last.startswith("Stopped: process 0 of 2 lost another process of the run"), last
    assert "relaunch every process with the same command" in last
  else:
    assert procs[0].returncode == -signal.SIGABRT, out0[-3000:]
    assert "Terminating process because the JAX distributed service detected fatal errors" \
           in out0 and "stopped sending heartbeats" in out0, out0[-3000:]

  port = _free_port()
  outputs = _finish([_main_py(i, port, workdir) for i in range(2)])
  for i, out in enumerate(outputs):
    assert "Resumed from the checkpoint at step" in out, out[-3000:]
    assert f"Process {i} of 2: 4 of 8 devices" in out
  assert "Final evaluation:" in outputs[0]
  assert os.path.isfile(os.path.join(workdir, "plots", "training_curves.png"))  # Process 0's.

  restored = _assert_matches_one_process(workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:  # Process 0 alone writes it.
    records = [json.loads(line) for line in f]
  total = clip_config.get_config("tiny").total_steps
  steps = [r["step"] for r in records]
  assert steps == sorted(steps) and steps.count(total) == 2  # The train line and the eval.
  # The two processes evaluated the sharded state in place; one process evaluating the same
  # params on the host gets the same figures (float32 rounding of the sharded matmuls aside).
  logged = next(r for r in records if r["step"] == total and "eval/i2t_recall@1" in r)
  config = config_lib.validate(clip_config.get_config("tiny"))
  host = {}
  for _, _, evaluate in build_evaluators(config, setup.build_run(config).model):
    host.update(evaluate(jax.device_get(restored.state.params)))
  for key, value in host.items():
    np.testing.assert_allclose(logged[key], value, rtol=1e-4, atol=1e-5,
                               err_msg=key)
