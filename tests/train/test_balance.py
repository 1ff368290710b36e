"""Modality balancing against a numpy implementation of the prototype's rule."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from mmie.config import ConfigError
from mmie.train import balance

GROUPS = {"image": r"image/.*|image_projection/.*", "text": r"text/.*|text_projection/.*"}
SHAPES = {"image": {"w": (3, 4), "b": (4,)}, "image_projection": {"kernel": (4, 2)},
          "text": {"w": (5, 3)}, "text_projection": {"kernel": (3, 2)}, "logit_scale": ()}


def _grads(image_factor: float, text_factor: float, seed: int = 0):
  rng = np.random.default_rng(seed)
  def leaf(path, shape):
    factor = image_factor if path.startswith("image") else text_factor
    return (rng.normal(size=shape) * factor).astype(np.float32)
  return {top: ({k: leaf(top, s) for k, s in sub.items()} if isinstance(sub, dict)
                else leaf(top, sub) * 0 + np.float32(0.7))
          for top, sub in SHAPES.items()}


def _numpy_balance(grads, min_scale, max_scale):
  """Independent reference: group norms, mean over non-zero groups, clamped ratio."""
  def group_of(top):
    return "image" if top.startswith("image") else "text" if top.startswith("text") else None
  sq = {"image": 0.0, "text": 0.0}
  for top, sub in grads.items():
    if group_of(top):
      sq[group_of(top)] += sum(float(np.sum(np.square(v.astype(np.float64))))
                               for v in sub.values())
  norms = {g: np.sqrt(s) for g, s in sq.items()}
  nonzero = [n for n in norms.values() if n > 0]
  mean = sum(nonzero) / max(len(nonzero), 1)
  scale = {g: np.clip(mean / n, min_scale, max_scale) if n > 0 else 0.0
           for g, n in norms.items()}
  return {top: ({k: v * scale[group_of(top)] for k, v in sub.items()} if group_of(top) else sub)
          for top, sub in grads.items()}, scale


@pytest.fixture(scope="module")
def balanced():
  """One jitted update per (min, max); the numbers vary, the trace is shared."""
  fns = {}

  def run(grads, min_scale=0.5, max_scale=2.0):
    key = (min_scale, max_scale)
    if key not in fns:
      tx = balance.balance_modalities(GROUPS, min_scale, max_scale)
      state = tx.init(grads)
      fns[key] = (jax.jit(lambda g: tx.update(g, state)[0]))
    return jax.device_get(fns[key](grads))
  return run


@pytest.mark.parametrize("image_factor,text_factor,min_scale,max_scale", [
    (1.0, 1.3, 0.5, 2.0),     # Within the clamp: both scaled to the mean norm.
    (10.0, 1.0, 0.5, 2.0),    # Text boosted to max_scale, image damped to min_scale.
    (1.0, 40.0, 0.25, 4.0),   # The other way round, wider clamp.
    (2.0, 2.0, 0.5, 2.0),     # Equal-magnitude towers: scales near 1.
])
def test_matches_numpy(balanced, image_factor, text_factor, min_scale, max_scale):
  grads = _grads(image_factor, text_factor)
  expected, scale = _numpy_balance(grads, min_scale, max_scale)
  got = balanced(grads, min_scale, max_scale)
  for (path, e), g in zip(jax.tree_util.tree_flatten_with_path(expected)[0],
                          jax.tree.leaves(got)):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7, err_msg=str(path))
  if image_factor > 5 * text_factor:  # With two groups the larger is damped to >= 0.5.
    assert scale["text"] == max_scale and min_scale <= scale["image"] < 0.6


def test_smaller_modality_is_boosted(balanced):
  grads = _grads(3.0, 1.0)
  got = balanced(grads)
  image_norm = lambda t: optax.global_norm({k: t[k] for k in ("image", "image_projection")})
  text_norm = lambda t: optax.global_norm({k: t[k] for k in ("text", "text_projection")})
  assert float(text_norm(got)) > float(text_norm(grads))
  assert float(image_norm(got)) < float(image_norm(grads))


def test_ungrouped_untouched_and_frozen_group_ignored(balanced):
  grads = _grads(0.0, 1.0)  # The image tower is frozen: all-zero gradients.
  got = balanced(grads)
  np.testing.assert_array_equal(got["logit_scale"], grads["logit_scale"])
  np.testing.assert_array_equal(got["image"]["w"], 0.0)
  # Only the text group is active, so its mean is its own norm: scale 1, not 0.5.
  np.testing.assert_allclose(got["text"]["w"], grads["text"]["w"], rtol=1e-6)


def test_from_config_and_chain():
  spec = ml_collections.FrozenConfigDict({"groups": GROUPS, "min_scale": 0.5, "max_scale": 2.0})
  tx = optax.chain(balance.from_config(spec), optax.sgd(1.0))
  grads = _grads(10.0, 1.0)
  params = jax.tree.map(np.zeros_like, grads)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  expected, _ = _numpy_balance(grads, 0.5, 2.0)
  np.testing.assert_allclose(updates["text"]["w"], -expected["text"]["w"], rtol=1e-5)
  assert balance.from_config(None) is None


@pytest.mark.parametrize("kwargs,match", [
    ({"groups": {"image": "image/.*"}}, "at least two groups"),
    ({"groups": {"image": "image/(", "text": "text/.*"}}, "not a valid regex"),
    ({"groups": GROUPS, "min_scale": 1.5}, "min_scale <= 1 <= max_scale"),
    ({"groups": GROUPS, "max_scale": 0.0}, "positive number"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    balance.balance_modalities(**kwargs)


def test_groups_checked_against_params():
  grads = _grads(1.0, 1.0)
  overlap = balance.balance_modalities({"image": "image.*", "all": ".*"})
  with pytest.raises(ConfigError, match="matches groups"):
    overlap.init(grads)
  unused = balance.balance_modalities({**GROUPS, "audio": "audio/.*"})
  with pytest.raises(ConfigError, match=r"\['audio'\] match no parameter"):
    unused.init(grads)
  with pytest.raises(ConfigError, match="train.balance_modalities.scale"):
    balance.from_config({"groups": GROUPS, "scale": 2.0})


def _tiny_with_balance(groups):
  from mmie.configs import clip
  from mmie import config as config_lib
  cfg = clip.get_config("tiny")
  # Plain SGD at a constant rate: Adam-style optimizers cancel a constant gradient scale, so
  # SGD is where the balancing is visible in a single update.
  cfg.optimizer.name, cfg.optimizer.momentum = "sgd", 0.0
  cfg.optimizer.warmup_steps, cfg.optimizer.schedule = 0, "constant"
  cfg.train = ml_collections.ConfigDict({"balance_modalities": {"groups": groups,
                                                                "max_scale": 3.0}})
  return config_lib.validate(cfg)


def test_wired_into_the_stage_optimizer():
  """config.train.balance_modalities reaches the stage's optimizer, before clipping, and is
  checked against the real parameter names of the tiny CLIP model."""
  from mmie import sharding
  from mmie.train import setup

  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  run = setup.build_run(_tiny_with_balance(GROUPS), mesh=mesh)
  tx = setup.build_stage(run, run.stages[0]).tx
  params = jax.tree.map(lambda p: np.zeros(p.shape, p.dtype), run.abstract_params)
  grads = jax.tree.map(lambda p: np.ones(p.shape, p.dtype), run.abstract_params)
  grads["image"] = jax.tree.map(lambda g: g * 100.0, grads["image"])
  grads["image_projection"] = jax.tree.map(lambda g: g * 100.0, grads["image_projection"])
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  size = lambda keys: sum(int(np.size(x)) for k in keys for x in jax.tree.leaves(grads[k]))
  n_image = 100.0 * np.sqrt(size(("image", "image_projection")))
  n_text = np.sqrt(size(("text", "text_projection")))
  mean = (n_image + n_text) / 2
  s_image, s_text = np.clip(mean / n_image, 0.5, 3.0), np.clip(mean / n_text, 0.5, 3.0)
  # Clipping and the learning rate scale every update alike; the ratio is the balancing's.
  ratio = float(updates["text"]["ln_final"]["scale"][0] / updates["image"]["ln_post"]["scale"][0])
  assert ratio == pytest.approx(s_text / (100.0 * s_image), rel=1e-5)
  np.testing.assert_allclose(updates["logit_scale"] / updates["text"]["ln_final"]["scale"][0],
                             1.0 / s_text, rtol=1e-5)  # Ungrouped: unscaled.
  with pytest.raises(ConfigError, match=r"\['audio'\] match no parameter"):
    setup.build_run(_tiny_with_balance({**GROUPS, "audio": r"audio/.*"}), mesh=mesh)
