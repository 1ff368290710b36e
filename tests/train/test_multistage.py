"""configs/multistage.py:tiny: every stage steps the optimizer, and only what its rules allow."""

import re

import jax
import numpy as np
import pytest

from mmie.configs import multistage
from mmie import config as config_lib
from mmie.sharding import path_name
from mmie.train import setup, stages as stages_lib


def _flat(params):
  return {path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def stage_params():
  """Params before the run and after each stage of configs/multistage.py:tiny."""
  config = config_lib.validate(multistage.get_config("tiny"))
  run = setup.build_run(config)
  rng = np.random.default_rng(0)
  snapshots = []
  state = None
  for stage in run.stages:
    stage_run = setup.build_stage(run, stage)
    state = (setup.init_state(run, stage_run) if state is None
             else setup.enter_stage(run, state, stage_run))
    snapshots.append(_flat(state.params))
    step_fn = setup.jit_train_step(run, stage_run)
    for _ in range(stage.total_steps):
      batch = {"image": rng.normal(size=(config.batch_size, 32, 32, 3)).astype(np.float32),
               "text": rng.integers(3, 1000, size=(config.batch_size, 16)).astype(np.int32)}
      batch["text"][:, 6] = 2  # End-of-text token.
      state, metrics = step_fn(state, setup.to_global(run, batch))
      assert np.isfinite(float(metrics["loss"]))
    snapshots.append(_flat(state.params))
  return run, snapshots


def _is_trainable(stage, name):
  for pattern, setting in stage.param_rules:
    if re.fullmatch(pattern, name):
      return setting != "frozen"
  raise AssertionError(f"{name} matched no rule")


def test_frozen_unchanged_and_trainable_changed(stage_params):
  run, snapshots = stage_params
  for stage in run.stages:
    before, after = snapshots[2 * stage.index], snapshots[2 * stage.index + 1]
    frozen = [n for n in before if not _is_trainable(stage, n)]
    trainable = [n for n in before if _is_trainable(stage, n)]
    assert frozen or stage.name == "full", stage.name
    assert trainable, stage.name
    for name in frozen:
      np.testing.assert_array_equal(before[name], after[name], err_msg=f"{stage.name}: {name}")
    for name in trainable:
      assert not np.array_equal(before[name], after[name]), f"{stage.name}: {name} did not train"


def test_params_carry_across_stages(stage_params):
  run, snapshots = stage_params
  for k in range(1, len(run.stages)):
    end_prev, start_next = snapshots[2 * k - 1], snapshots[2 * k]
    for name in end_prev:
      np.testing.assert_array_equal(end_prev[name], start_next[name])


def test_stage_boundaries():
  config = config_lib.validate(multistage.get_config("tiny"))
  stages = stages_lib.resolve_stages(config)
  assert [(s.start, s.end) for s in stages] == [(0, 2), (2, 4), (4, 6)]
  assert stages_lib.stage_at(stages, 0).index == 0
  assert stages_lib.stage_at(stages, 2).index == 0  # A boundary belongs to the ending stage.
  assert stages_lib.stage_at(stages, 3).index == 1


def test_moco_recipe_trains_with_momentum_keys_and_queue():
  """EMA params feed momentum keys; the memory queue fills; negatives over the mesh's data
  axis (the head's axis_name option) run in the mesh."""
  from mmie.configs import clip as clip_config
  cfg = clip_config.get_config("tiny")
  cfg.train = {"ema_decay": 0.9}
  cfg.loss.name = "clip(axis_name='data')"
  cfg.loss.transforms = ("momentum_keys()", "memory_queue(size=32)")
  config = config_lib.validate(cfg)
  run = setup.build_run(config)
  stage_run = setup.build_stage(run, run.stages[0])
  state = setup.init_state(run, stage_run)
  step_fn = setup.jit_train_step(run, stage_run)
  batch = setup.example_batch(config, config.batch_size)
  batch["image"] = np.random.default_rng(0).normal(size=batch["image"].shape).astype(np.float32)
  batch["text"][:, 3] = 2
  for _ in range(2):
    state, metrics = step_fn(state, setup.to_global(run, batch))
  assert np.isfinite(float(metrics["loss"]))
  queue = state.loss_state["memory_queue"]
  for name in ("image_emb", "text_emb"):
    assert int(queue[name]["filled"]) == 2 * config.batch_size  # Two batches of keys, size 32.
    assert np.abs(np.asarray(queue[name]["entries"])).sum() > 0
