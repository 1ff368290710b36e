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
from mmie.data.records import LazyImages, Records
from mmie.evaluate import EvalContext, build_evaluators
from mmie.evaluate.context import apply_in_batches
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


class _Recorded(LazyImages):
  """A lazy image column that records the rows each placement callback asks for."""

  asked: list[list[int]] = []

  def __getitem__(self, index):
    first = index[0] if isinstance(index, tuple) else index
    self.asked.append(self._rows[first].tolist())
    return super().__getitem__(index)


def test_each_device_decodes_only_its_own_rows_of_a_lazy_image_column():
  """Placement asks a lazy column for each device's block of the batch and nothing more; on a
  pod the callbacks run for this host's devices only, so a host decodes only its rows."""
  config, run, state = _run_with_mesh("clip", {"data": 2, "fsdp": 4})
  column = _Recorded(Records(list(range(16)), lambda r: {"image": np.full((4, 4, 3), r, np.uint8)},
                             cache=True), lambda x: x.astype(np.float32), (4, 4, 3))
  ctx = EvalContext(config, run.model, mesh=run.mesh, load_split=lambda name: {},
                    encode_prompts=lambda *a: None, decode=str)
  row_sums = ctx.jit(lambda params, x: x.sum(axis=(1, 2, 3)))
  out = apply_in_batches(lambda x: row_sums(state.params, x)[:, None], column, batch_size=16)
  np.testing.assert_array_equal(out[:, 0], np.arange(16) * 48.0)
  blocks = sorted(column.asked)
  assert blocks == [[2 * d, 2 * d + 1] for d in range(8)], blocks  # 16 rows over 8 devices.


@pytest.mark.parametrize("rows", [1, 16, 37])
def test_batches_in_flight_come_back_in_order_without_the_padding(rows):
  """Batches are dispatched ahead of being read back; the rows still come back once each, in
  order, the last batch's padding dropped (37 rows: two full batches of 16, then 5)."""
  inputs = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
  calls = []
  double = jax.jit(lambda x: x * 2.0)

  def fn(x):
    calls.append(x.shape[0])
    return double(x)

  out = apply_in_batches(fn, inputs, batch_size=16)
  np.testing.assert_array_equal(out, inputs * 2.0)
  assert calls == [16] * -(-rows // 16)  # One shape compiled: the last batch padded to 16.
  lazy = LazyImages(Records(list(range(rows)), lambda r: {"image": np.full((2, 2, 1), r, np.uint8)},
                            cache=True), lambda x: x.astype(np.float32), (2, 2, 1))
  sums = apply_in_batches(lambda x: jax.jit(lambda y: y.sum(axis=(1, 2, 3)))(np.asarray(x))
                          [:, None], lazy, batch_size=16)
  np.testing.assert_array_equal(sums[:, 0], np.arange(rows) * 4.0)
