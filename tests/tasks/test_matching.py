"""Matching task: hard-negative sampler (never the positive, softmax frequencies, pair ids) and
the FusionModel forward that feeds ITC + ITM losses, with gradients."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmie.configs import clip
from mmie import losses
from mmie.models import fusion
from mmie.tasks import matching
from tests.model_utils import random_params

_sample_many = jax.jit(jax.vmap(matching.sample_hard_negatives, in_axes=(None, 0, None)))


def test_sampler_never_picks_the_positive_and_follows_the_softmax():
  rng = np.random.default_rng(0)
  similarity = rng.normal(scale=2.0, size=(5, 5)).astype(np.float32)
  draws = 4000
  keys = jax.random.split(jax.random.key(0), draws)
  texts, images, image_ok, text_ok = map(np.asarray, _sample_many(similarity, keys,
                                                                   np.eye(5, dtype=bool)))
  assert not np.any(texts == np.arange(5)) and not np.any(images == np.arange(5))
  assert image_ok.all() and text_ok.all()
  for i in range(5):  # p(text j | image i) = softmax over j != i of similarity[i, j].
    logits = np.where(np.arange(5) == i, -np.inf, similarity[i].astype(np.float64))
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    freq = np.bincount(texts[:, i], minlength=5) / draws
    assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / draws)
                  + 1e-9)
    column = np.where(np.arange(5) == i, -np.inf, similarity[:, i].astype(np.float64))
    expected = np.exp(column - column.max()) / np.exp(column - column.max()).sum()
    freq = np.bincount(images[:, i], minlength=5) / draws
    assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / draws)
                  + 1e-9)


def test_sampler_respects_pair_ids_and_flags_rows_without_negatives():
  ids = jnp.array([0, 0, 1, 2, 2])  # Captions 0 and 1 describe one image, as do 3 and 4.
  positive = ids[:, None] == ids[None, :]
  similarity = jnp.asarray(np.random.default_rng(1).normal(size=(5, 5)), jnp.float32)
  keys = jax.random.split(jax.random.key(1), 4000)  # The shape of the test above: no recompile.
  texts, images, _, _ = map(np.asarray, _sample_many(similarity, keys, positive))
  assert not np.any(ids[texts] == ids[None, :]) and not np.any(ids[images] == ids[None, :])
  _, _, image_ok, text_ok = _sample_many(similarity, keys, positive.at[0].set(True))
  np.testing.assert_array_equal(image_ok[0], [False, True, True, True, True])
  np.testing.assert_array_equal(text_ok[0], [True, True, True, True, True])


def test_random_negatives_mix_the_softmax_with_a_uniform_share():
  """p(j | i) = (1 - f) softmax_j(s_ij) + f / (number of candidates), over j not matching i."""
  fraction, draws = 0.4, 4000
  ids = np.array([0, 0, 1, 2, 3])  # Row 0 has 3 candidates, row 2 has 4: unequal uniforms.
  positive = ids[:, None] == ids[None, :]
  similarity = np.random.default_rng(2).normal(scale=3.0, size=(5, 5)).astype(np.float32)
  sample = jax.jit(jax.vmap(lambda s, k, p: matching.sample_hard_negatives(s, k, p, fraction),
                            in_axes=(None, 0, None)))
  keys = jax.random.split(jax.random.key(2), draws)
  texts, images, _, _ = map(np.asarray, sample(similarity, keys, positive))
  for direction, draws_of, sims in (("texts", texts, similarity), ("images", images,
                                                                  similarity.T)):
    for i in range(5):
      candidate = ~positive[i] if direction == "texts" else ~positive[:, i]
      logits = np.where(candidate, sims[i].astype(np.float64), -np.inf)
      soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
      expected = (1 - fraction) * soft + fraction * candidate / candidate.sum()
      freq = np.bincount(draws_of[:, i], minlength=5) / draws
      assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / draws)
                    + 1e-9), (direction, i, freq, expected)
  everything = jnp.ones((5, 5), bool)  # No candidate anywhere: flagged, never NaN.
  texts, images, image_ok, text_ok = matching.sample_hard_negatives(
      jnp.asarray(similarity), jax.random.key(3), everything, 1.0)
  assert not np.asarray(image_ok).any() and not np.asarray(text_ok).any()
  assert np.all((np.asarray(texts) >= 0) & (np.asarray(texts) < 5))
  with pytest.raises(ValueError, match=r"random_negatives=1.5 must be in \[0, 1\]"):
    matching.sample_hard_negatives(jnp.asarray(similarity), jax.random.key(0), None, 1.5)


def test_task_options_are_bound_from_the_call_string():
  from mmie.config import ConfigError
  from mmie.tasks import get_task
  task = get_task("matching(random_negatives=0.25)")
  assert task.forward.keywords == {"random_negatives": 0.25}
  assert get_task("matching") is get_task("matching")  # No options: the registered task.
  with pytest.raises(ConfigError, match=r"takes keyword options \(random_negatives=0.0\)"):
    get_task("matching(hard=1)")
  with pytest.raises(ConfigError, match="takes keyword options \\(none\\)"):
    get_task("contrastive(x=1)")
  with pytest.raises(ConfigError, match="cannot parse"):
    get_task("matching(")


def test_sampler_defaults_to_the_diagonal_and_rejects_bad_shapes():
  similarity, key = jnp.arange(9.0).reshape(3, 3), jax.random.key(5)
  default = matching.sample_hard_negatives(similarity, key)
  explicit = matching.sample_hard_negatives(similarity, key, jnp.eye(3, dtype=bool))
  for a, b in zip(default, explicit):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="square"):
    matching.sample_hard_negatives(jnp.zeros((2, 3)), jax.random.key(0))
  with pytest.raises(ValueError, match="batch of 1"):
    matching.sample_hard_negatives(jnp.zeros((1, 1)), jax.random.key(0))


_random_params = random_params


@pytest.fixture(scope="module")
def fusion_run():
  """A tiny FusionModel whose towers differ in width (so the image adapter is exercised)."""
  config = clip.get_config("tiny").model
  del config.logit_bias_init
  config.name = "fusion"
  config.image.width = 16  # Text tower width stays 32.
  config.fusion = ml_collections.ConfigDict(dict(kind="cross_attention", depth=1, num_heads=2,
                                                 mlp_dim=32))
  model = fusion.build_fusion_model(config)
  rng = np.random.default_rng(2)
  batch = {"image": jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32),
           "text": jnp.array([[1, 5, 9, 2, 0, 0], [1, 7, 2, 0, 0, 0], [1, 4, 4, 8, 6, 2],
                              [1, 3, 2, 0, 0, 0]], jnp.int32)}
  params = _random_params(model, batch["image"], batch["text"])
  loss = losses.build_loss({"terms": {"itc": {"name": "clip"},
                                      "itm": {"name": "cross_entropy"}}})

  @jax.jit
  def loss_and_grad(params, batch, rng):
    def objective(params):
      inputs = matching.forward(model.apply, params, batch, rng=rng, train=True)
      value, metrics, _ = loss.apply(inputs, {}, step=jnp.zeros((), jnp.int32), rng=rng)
      return value, (inputs, metrics)
    return jax.value_and_grad(objective, has_aux=True)(params)

  return model, params, batch, loss_and_grad


def test_fusion_model_params_and_forward_outputs(fusion_run):
  model, params, batch, loss_and_grad = fusion_run
  assert model.adapt_image and model.width == 32
  assert set(params) == {"image", "text", "image_projection", "text_projection", "logit_scale",
                         "fusion", "itm_head", "image_adapter"}
  (value, (inputs, metrics)), grads = loss_and_grad(params, batch, jax.random.key(3))
  assert inputs["logits"].shape == (12, 2)
  np.testing.assert_array_equal(inputs["targets"], [1] * 4 + [0] * 8)
  np.testing.assert_array_equal(inputs["mask"], np.ones(12))
  assert inputs["image_emb"].shape == inputs["text_emb"].shape == (4, 32)
  assert np.isfinite(float(value)) and set(metrics) >= {"itc/loss", "itm/loss"}
  for name in ("fusion", "itm_head", "image_adapter", "image", "text"):
    norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[name]))
    assert norm > 0, name  # ITM and ITC gradients reach every part of the model.


def test_itm_loss_equals_two_way_cross_entropy(fusion_run):
  _, params, batch, loss_and_grad = fusion_run
  (_, (inputs, metrics)), _ = loss_and_grad(params, batch, jax.random.key(4))
  logits = np.asarray(inputs["logits"], np.float64)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.mean(log_p[np.arange(12), np.asarray(inputs["targets"])])
  np.testing.assert_allclose(metrics["itm/loss"], expected, rtol=1e-5)
