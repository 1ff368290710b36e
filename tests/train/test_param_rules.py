"""Parameter rules in the optimizer: frozen parameters never move and carry no state; the
trainable ones are clipped (and balanced) together, then scaled by their LR multiplier.

References are numpy: SGD at rate 1 makes the update minus the transformed gradient.
"""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from mmie.schema import ConfigError
from mmie.train import optimizer

RULES = [("image/.*", "frozen"), ("text/.*", 0.1), ("head/.*", 1.0)]


def _params():
  rng = np.random.default_rng(0)
  return {"image": {"w": rng.normal(size=(3, 4)).astype(np.float32)},
          "text": {"w": rng.normal(size=(4, 2)).astype(np.float32),
                   "b": rng.normal(size=(2,)).astype(np.float32)},
          "head": {"w": rng.normal(size=(2, 2)).astype(np.float32)}}


def _grads():
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), _params())
  grads["image"]["w"] *= 1e4  # Huge: it would dominate a global norm that counted it.
  return grads


def _optimizer(name, weight_decay=0.0, clip=None, balance=None):
  cfg = ml_collections.ConfigDict({
      "name": name, "learning_rate": 1.0, "warmup_steps": 0, "schedule": "constant",
      "weight_decay": weight_decay, "grad_clip_norm": clip, "momentum": 0.0})
  tx, _ = optimizer.build_optimizer(cfg, 10, _params(), RULES, balance)
  return tx


def test_clipping_counts_only_trainable_gradients_and_multipliers_follow():
  tx = _optimizer("sgd", clip=1.0)
  params, grads = _params(), _grads()
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  trainable = [grads["text"]["w"], grads["text"]["b"], grads["head"]["w"]]
  norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in trainable))
  scale = min(1.0, 1.0 / norm)
  np.testing.assert_array_equal(updates["image"]["w"], 0.0)
  np.testing.assert_allclose(updates["head"]["w"], -scale * grads["head"]["w"], rtol=1e-6)
  for key in ("w", "b"):
    np.testing.assert_allclose(updates["text"][key], -0.1 * scale * grads["text"][key],
                               rtol=1e-6)


def test_frozen_parameters_get_no_weight_decay_and_no_moments():
  tx = _optimizer("adamw", weight_decay=0.5)
  params = _params()
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(_grads(), state, params)
  np.testing.assert_array_equal(updates["image"]["w"], 0.0)  # Decay alone would move it.
  assert np.all(np.asarray(updates["head"]["w"]) != 0.0)
  # Adam's first and second moments exist for the three trainable leaves only.
  moment_shapes = sorted(x.shape for x in jax.tree.leaves(state) if np.ndim(x) > 0)
  assert moment_shapes == sorted([(4, 2), (2,), (2, 2)] * 2)


def test_a_balanced_group_that_is_all_frozen_is_inactive_not_an_error():
  balance = {"groups": {"image": "image/.*", "text": "text/.*|head/.*"}, "max_scale": 3.0}
  tx = _optimizer("sgd", balance=balance)
  params, grads = _params(), _grads()
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["image"]["w"], 0.0)
  # The text group alone is active: the mean of the active norms is its own, scale 1.
  np.testing.assert_allclose(updates["head"]["w"], -grads["head"]["w"], rtol=1e-6)
  with pytest.raises(ConfigError, match=r"\['audio'\] match no parameter"):
    _optimizer("sgd", balance={"groups": {**balance["groups"], "audio": "audio/.*"}})


def test_without_frozen_parameters_no_partition_is_built():
  cfg = ml_collections.ConfigDict({"name": "sgd", "learning_rate": 1.0, "warmup_steps": 0,
                                   "schedule": "constant", "momentum": 0.0})
  tx, _ = optimizer.build_optimizer(cfg, 10, _params(), [(".*", 1.0)])
  params, grads = _params(), _grads()
  updates, _ = tx.update(grads, tx.init(params), params)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(u, -g)
  assert not any(isinstance(s, optax.PartitionState)
                 for s in jax.tree.leaves(tx.init(params),
                                          is_leaf=lambda x: isinstance(x, optax.PartitionState)))
