"""Evaluation on the sharded train state (8 fake devices) equals evaluation on host params.

Each config runs its default evaluators twice on the same freshly initialised params: once as
the training loop does, with the run's mesh and the params FSDP- and tensor-sharded where they
lie, and once as before sharded evaluation existed, on numpy copies of the params with no mesh.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from mmie import config as config_lib
from mmie.evaluate import build_evaluators
from mmie.train import setup

# Discrete metrics (ranks, recalls, accuracies) move only if two scores tie to within the
# float32 rounding of a sharded matmul (~1e-6); continuous ones are compared at that scale.
DISCRETE = ("recall", "median_rank", "top1", "top5", "zeroshot", "accuracy", "top")


def _run_with_mesh(name: str, mesh: dict[str, int]):
  module = __import__(f"mmie.configs.{name}", fromlist=["get_config"])
  cfg = module.get_config("tiny")
  cfg.mesh = mesh
  config = config_lib.validate(cfg)
  run = setup.build_run(config)
  state = setup.init_state(run, run.stage_runs[0])
  return config, run, state


def _split_over(params, axis: str) -> bool:
  return any(isinstance(p.sharding, NamedSharding) and axis in str(p.sharding.spec)
             for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name,mesh", [
    ("clip", {"data": 2, "fsdp": 4}),   # Retrieval, zero-shot, representation diagnostics.
    ("lm", {"data": 2, "model": 4}),    # Perplexity through a tensor-parallel decoder.
    ("fusion_itm", {"data": 2, "model": 4}),  # Encode, then ITM margins of index pairs.
    ("vit_classify", {"data": 2, "fsdp": 4}),  # Logits and top-k accuracy.
])
def test_sharded_evaluation_equals_host_evaluation(name, mesh):
  config, run, state = _run_with_mesh(name, mesh)
  axis = "fsdp" if "fsdp" in mesh else "model"
  assert _split_over(state.params, axis), f"no parameter is split over {axis}: test is moot"

  sharded = {}
  for _, _, evaluate in build_evaluators(config, run.model, mesh=run.mesh):
    sharded.update(evaluate(state.params))
  host_params = jax.device_get(state.params)
  on_host = {}
  for _, _, evaluate in build_evaluators(config, run.model):
    on_host.update(evaluate(host_params))

  assert sharded.keys() == on_host.keys() and sharded
  for key, value in on_host.items():
    if any(word in key for word in DISCRETE):
      assert sharded[key] == value, (key, sharded[key], value)
    else:
      np.testing.assert_allclose(sharded[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
