"""A tensor-parallel CLIP step's parameters and activations carry the intended shardings.

The step of the tiny CLIP (4 heads per tower) on a (data=2, model=4) mesh of 8 fake devices
is lowered; the test reads the shardings from what XLA is given, not from our own tables:
the compiled executable's input shardings of the parameters, and every sharding constraint
in the lowered HLO with the module path it came from. Both are compared with golden files
(as MaxText does), so any change of layout shows up in review; the rules behind them are
also asserted directly. Regenerate the golden files after an intended change with
``MMIE_UPDATE_GOLDEN=1 pytest tests/train/test_activation_sharding.py``.
"""

from __future__ import annotations

import json
import os
import re

import jax
import pytest

from mmie import config as config_lib
from mmie import sharding
from mmie.configs import clip as clip_config
from mmie.train import setup

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "clip_tensor_parallel.json")
BATCH = '{"data", "fsdp"}'  # How the sdy dialect writes the batch axes.


def _tensor_parallel_run(sequence_parallel: bool = False):
  cfg = clip_config.get_config("tiny")
  cfg.model.image.num_heads = cfg.model.text.num_heads = 4
  cfg.mesh = {"data": 2, "model": 4}
  cfg.sequence_parallel = sequence_parallel
  config = config_lib.validate(cfg)
  run = setup.build_run(config)
  stage_run = run.stage_runs[0]
  step = setup.jit_train_step(run, stage_run)
  batch = setup.to_global(run, setup.example_batch(config, config.batch_size))
  return run, stage_run, step, batch


@pytest.fixture(scope="module")
def lowered():
  run, stage_run, step, batch = _tensor_parallel_run()
  with jax.set_mesh(run.mesh):
    lowered = step.jitted.lower(setup.abstract_state(run, stage_run), batch)
  return lowered


def _param_specs(lowered) -> dict[str, str]:
  state_shardings = lowered.compile().input_shardings[0][0]
  leaves = jax.tree_util.tree_flatten_with_path(state_shardings.params)[0]
  return {sharding.path_name(path): str(tuple(s.spec)) for path, s in leaves}


def _activation_constraints(lowered) -> list[str]:
  """'module path: per-dimension axes' of each forward constraint, layer numbers kept."""
  found = set()
  for line in lowered.as_text(dialect="hlo", debug_info=True).splitlines():
    if 'custom_call_target="Sharding"' not in line:
      continue
    axes = re.search(r'sharding_per_value<\[<@mesh, (\[.*?\])>\]>', line).group(1)
    op = re.search(r'op_name="([^"]*)"', line).group(1)
    if "transpose(" in op:  # The backward pass repeats the forward's constraints.
      continue
    path = op.split("/", 2)[-1].rsplit("/sharding_constraint", 1)[0]
    found.add(f"{path}: {axes.replace(chr(92), '')}")
  return sorted(found)


def test_layouts_match_the_golden_file(lowered):
  got = {"params": _param_specs(lowered), "activations": _activation_constraints(lowered)}
  if os.environ.get("MMIE_UPDATE_GOLDEN"):
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
      json.dump(got, f, indent=1, sort_keys=True)
      f.write("\n")
  with open(GOLDEN) as f:
    want = json.load(f)
  assert got["params"] == want["params"]
  assert got["activations"] == want["activations"]


def test_tensor_parallel_rules_hold(lowered):
  params = _param_specs(lowered)
  # Heads and MLP units of every projection are split over 'model'; widths stay whole
  # (no fsdp axis in this mesh).
  assert params["image/encoder/layer_0/attention/query/kernel"] == "(None, 'model', None)"
  assert params["text/encoder/layer_0/mlp/fc1/kernel"] == "(None, 'model')"
  assert params["text/encoder/layer_0/mlp/fc2/kernel"] == "('model', None)"
  constraints = _activation_constraints(lowered)
  by_path: dict[str, set[str]] = {}
  for line in constraints:
    path, axes = line.split(": ", 1)
    by_path.setdefault(path, set()).add(axes)
  for tower in ("image", "text"):
    attention = next(p for p in by_path if p.endswith(f"{tower}/encoder/layer_0/attention"))
    # q, k, v and the attended values [B, T, heads, kv]: batch over the data axes, heads
    # over 'model'; the output projection's [B, T, D] back to the batch split alone.
    assert f'[{BATCH}, {{}}, {{"model"}}, {{}}]' in by_path[attention]
    assert f"[{BATCH}, {{}}, {{}}]" in by_path[attention]
    mlp = next(p for p in by_path if p.endswith(f"{tower}/encoder/layer_0/mlp"))
    assert f'[{BATCH}, {{}}, {{"model"}}]' in by_path[mlp]  # Hidden units over 'model'.


def test_sequence_parallel_splits_the_residual_stream_and_keeps_the_loss():
  """With ``sequence_parallel`` the text tower's residual stream [B, 16, D] is also split
  along its length over 'model' (the image tower's 17 tokens do not divide by 4 and stay
  whole), attention and MLP internals keep their layout, and one step's loss is unchanged."""
  losses, constraints = {}, {}
  for sequence_parallel in (False, True):
    run, stage_run, step, batch = _tensor_parallel_run(sequence_parallel)
    state = setup.init_state(run, stage_run)
    with jax.set_mesh(run.mesh):
      constraints[sequence_parallel] = _activation_constraints(
          step.jitted.lower(setup.abstract_state(run, stage_run), batch))
    _, metrics = step(state, batch)
    losses[sequence_parallel] = float(metrics["loss"])
  split = f'[{BATCH}, {{"model"}}, {{}}]'
  on = [c for c in constraints[True] if c.endswith(split)]
  assert any("text/encoder/layer_0" in c for c in on), constraints[True]
  assert not any("image/encoder" in c for c in on)
  assert not any(c.endswith(split) for c in constraints[False])
  heads = f'[{BATCH}, {{}}, {{"model"}}, {{}}]'  # q, k, v, attended: heads over 'model'.
  by_heads = {k: {c for c in v if c.endswith(heads)} for k, v in constraints.items()}
  assert by_heads[True] == by_heads[False] and by_heads[True]
  # The loss sums the same float32 terms in another order: a batch-mean of ~16 * 32 terms.
  assert losses[True] == pytest.approx(losses[False], rel=8 * (16 * 32) ** 0.5 * 1.2e-7)


def test_sequence_parallel_needs_a_tensor_parallel_axis():
  with pytest.raises(config_lib.ConfigError, match="no rule maps 'heads'"):
    sharding.activation_rules((("heads", None),), sequence_parallel=True)
