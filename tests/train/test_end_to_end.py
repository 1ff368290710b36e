"""One tiny end-to-end run: metrics, TensorBoard, checkpoints, config; then resume."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from mmie.configs import clip as clip_config
from mmie import config as config_lib
from mmie.data import emoji
from mmie.train import loop


def _tiny(**overrides):
  cfg = clip_config.get_config("tiny")
  for key, value in overrides.items():
    cfg[key] = value
  return config_lib.validate(cfg)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  final = loop.train_and_evaluate(_tiny(), workdir)
  return workdir, final


def test_run_writes_everything(straight_run):
  workdir, final = straight_run
  records = _records(workdir)
  train_steps = [r["step"] for r in records if "loss" in r]
  assert train_steps == [2, 4, 6]
  assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
  assert all(r["gflops_per_step"] > 0 for r in records if "loss" in r)
  assert all(0 < r["mfu"] < 1 for r in records if "loss" in r and r["step"] > 2)
  eval_records = [r for r in records if "eval/i2t_recall@5" in r]
  assert [r["step"] for r in eval_records] == [6]
  for key in ("eval/i2t_recall@1", "eval/t2i_recall@10", "eval/zeroshot_top1"):
    assert 0.0 <= final[key] <= 100.0
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["batch_size"] == 16
  with open(os.path.join(workdir, "tokenizer.json")) as f, open(os.path.join(
      emoji.DEFAULT_SOURCE_DIR, "tokenizer.json")) as g:
    assert json.load(f)["model"]["vocab"] == json.load(g)["model"]["vocab"]


def _final_params(workdir):
  from mmie.train import setup
  from mmie.train.checkpoint import Checkpointer
  config = _tiny()
  run = setup.build_run(config)
  stage_run = setup.build_stage(run, run.stages[0])
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  restored = ckpt.restore_latest(setup.abstract_state(run, stage_run))
  ckpt.close()
  return restored


def test_resume_matches_straight_run(straight_run, tmp_path):
  straight_dir, _ = straight_run
  workdir = str(tmp_path / "run")
  # A run killed after its step-3 checkpoint: the workdir as it was then.
  shutil.copytree(straight_dir, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  loop.train_and_evaluate(_tiny(), workdir)  # The same command again resumes at step 3.
  resumed = _final_params(workdir)
  straight = _final_params(straight_dir)
  assert resumed.step == straight.step == 6
  leaves_a = jax.tree.leaves(resumed.state.params)
  leaves_b = jax.tree.leaves(straight.state.params)
  assert len(leaves_a) == len(leaves_b) > 0
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed.data_state == straight.data_state
  # metrics.jsonl reads as if never interrupted: no duplicated steps.
  clock = {"time", "examples_per_second", "step_seconds", "mfu", "compile_seconds"}
  timeless = lambda rs: [{k: v for k, v in r.items() if k not in clock} for r in rs]
  assert timeless(_records(workdir)) == timeless(_records(straight_dir))
