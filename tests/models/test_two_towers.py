"""Two-tower model: shapes, normalisation, logit scale, masking, config errors."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmie.configs import clip
from mmie import models
from mmie.models import text as text_lib


def _tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  config = clip.get_config("tiny").model
  for key, value in overrides.items():
    section = config
    *parents, leaf = key.split(".")
    for parent in parents:
      section = section[parent]
    section[leaf] = value
  return config


@pytest.fixture(scope="module")
def clip_model():
  config = _tiny_model_config()
  model = models.build_model(config)
  images, tokens = models.example_inputs(config, batch_size=2)
  params = jax.jit(model.init)(jax.random.key(0), images, tokens)["params"]
  return config, model, models.unbox(params), jax.jit(model.apply)


def _batch(config, batch_size=3, seed=1):
  rng = np.random.default_rng(seed)
  size, length = config.image.image_size, config.text.context_length
  images = rng.normal(size=(batch_size, size, size, 3)).astype(np.float32)
  tokens = rng.integers(3, config.text.vocab_size, size=(batch_size, length)).astype(np.int32)
  tokens[:, 5] = config.text.eos_id
  tokens[:, 6:] = config.text.pad_id
  return images, tokens


def test_output_shapes_and_unit_norm(clip_model):
  config, _, params, apply = clip_model
  images, tokens = _batch(config)
  out = apply({"params": params}, images, tokens)
  assert set(out) == {"image_emb", "text_emb", "logit_scale"}
  assert out["image_emb"].shape == (3, config.embed_dim)
  assert out["text_emb"].shape == (3, config.embed_dim)
  assert out["image_emb"].dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out["image_emb"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out["text_emb"], axis=-1), 1.0, rtol=1e-5)


def test_encode_methods_are_unnormalised_call_inputs(clip_model):
  config, model, params, apply = clip_model
  images, tokens = _batch(config)
  encode = jax.jit(model.apply, static_argnames="method")
  image_features = encode({"params": params}, images, method=model.encode_image)
  text_features = encode({"params": params}, tokens, method=model.encode_text)
  out = apply({"params": params}, images, tokens)
  assert not np.allclose(np.linalg.norm(image_features, axis=-1), 1.0)
  np.testing.assert_allclose(
      image_features / np.linalg.norm(image_features, axis=-1, keepdims=True),
      out["image_emb"], atol=1e-6)
  np.testing.assert_allclose(
      text_features / np.linalg.norm(text_features, axis=-1, keepdims=True),
      out["text_emb"], atol=1e-6)


def test_logit_scale_init_and_clamp(clip_model):
  config, _, params, apply = clip_model
  images, tokens = _batch(config)
  assert float(params["logit_scale"]) == pytest.approx(math.log(1 / 0.07))
  out = apply({"params": params}, images, tokens)
  assert float(out["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-6)
  clamped = dict(params, logit_scale=jnp.asarray(math.log(500.0), jnp.float32))
  assert float(apply({"params": clamped}, images, tokens)["logit_scale"]) == pytest.approx(100.0)


def test_stable_parameter_subtree_names(clip_model):
  _, _, params, _ = clip_model
  assert set(params) == {"image", "text", "image_projection", "text_projection", "logit_scale"}


def _expected_tiny_param_count(config) -> int:
  """Hand count: Dense = in*out + out; LayerNorm = 2*width; no bias on patch or projections."""
  def block(width, mlp):
    attention = 4 * (width * width + width)
    return attention + 2 * 2 * width + (width * mlp + mlp) + (mlp * width + width)
  im, tx = config.image, config.text
  patches = (im.image_size // im.patch_size) ** 2
  image = (im.patch_size ** 2 * 3 * im.width + im.width + (patches + 1) * im.width
           + 2 * 2 * im.width + im.depth * block(im.width, im.mlp_dim))
  text = (tx.vocab_size * tx.width + tx.context_length * tx.width + 2 * tx.width
          + tx.depth * block(tx.width, tx.mlp_dim))
  return image + text + (im.width + tx.width) * config.embed_dim + 1


def test_count_params_matches_hand_count(clip_model):
  config, _, params, _ = clip_model
  assert models.count_params(params) == _expected_tiny_param_count(config)


def test_siglip_logit_bias():
  config = _tiny_model_config(logit_bias_init=-10.0, logit_scale_init=math.log(10.0))
  model = models.build_model(config)
  images, tokens = _batch(config, batch_size=1)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
  assert "logit_bias" in shapes
  params = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.5, s.dtype),
                                  models.unbox(shapes))
  params = dict(params, logit_bias=jnp.float32(-10.0), logit_scale=jnp.float32(math.log(10.0)))
  out = jax.jit(model.apply)({"params": params}, images, tokens)
  assert float(out["logit_bias"]) == -10.0
  assert float(out["logit_scale"]) == pytest.approx(10.0, rel=1e-6)


def test_tokens_after_eos_do_not_change_text_embedding(clip_model):
  config, model, params, _ = clip_model
  _, tokens = _batch(config)
  changed = tokens.copy()
  changed[:, 6:] = 7  # Different content after end-of-text.
  changed_before = tokens.copy()
  changed_before[:, 4] = 9  # Control: a change before end-of-text must matter.
  encode = jax.jit(lambda t: model.apply({"params": params}, t, method=model.encode_text))
  base = encode(tokens)
  np.testing.assert_array_equal(encode(changed), base)
  assert np.abs(encode(changed_before) - base).max() > 1e-4


def _text_tower(causal: bool) -> tuple[text_lib.TextTransformer, dict]:
  tower = text_lib.TextTransformer(vocab_size=50, context_length=8, width=16, depth=2,
                                   num_heads=2, mlp_dim=32, causal=causal, pool="none",
                                   pad_id=0, final_norm=True)
  tokens = jnp.ones((1, 8), jnp.int32)
  return tower, models.unbox(jax.jit(tower.init)(jax.random.key(3), tokens)["params"])


def test_padding_never_changes_unpadded_outputs_bidirectional():
  tower, params = _text_tower(causal=False)
  apply = jax.jit(tower.apply)
  real = jnp.array([[5, 6, 7, 8, 9]], jnp.int32)
  unpadded = apply({"params": params}, real)
  for pads in (1, 3):
    padded = jnp.concatenate([real, jnp.zeros((1, pads), jnp.int32)], axis=1)
    np.testing.assert_allclose(apply({"params": params}, padded)[:, :5], unpadded, atol=1e-5)
  # Control: the same padding, unmasked through an explicit all-ones mask, does change outputs.
  padded = jnp.concatenate([real, jnp.zeros((1, 3), jnp.int32)], axis=1)
  leaky = apply({"params": params}, padded, jnp.ones_like(padded))[:, :5]
  assert np.abs(leaky - unpadded).max() > 1e-4
  # Mean pooling ignores the pads too.
  pooled = jax.jit(tower.clone(pool="mean").apply)
  np.testing.assert_allclose(pooled({"params": params}, padded),
                             unpadded.mean(axis=1), atol=1e-5)


def test_causal_mean_pooling_skips_padding():
  tower, params = _text_tower(causal=True)
  real = jnp.array([[5, 6, 7, 8, 9]], jnp.int32)
  hidden = jax.jit(tower.apply)({"params": params}, real)
  padded = jnp.concatenate([real, jnp.zeros((1, 3), jnp.int32)], axis=1)
  pooled = jax.jit(tower.clone(pool="mean").apply)({"params": params}, padded)
  np.testing.assert_allclose(pooled, hidden.mean(axis=1), atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_causal_attention_never_sees_the_future(causal):
  tower, params = _text_tower(causal=causal)
  apply = jax.jit(tower.apply)
  tokens = jnp.array([[3, 4, 5, 6, 7, 8, 9, 10]], jnp.int32)
  base = apply({"params": params}, tokens)
  changed = apply({"params": params}, tokens.at[0, 5].set(20))
  diff = np.abs(np.asarray(changed - base)).max(axis=-1)[0]
  if causal:
    np.testing.assert_array_equal(diff[:5], 0.0)
    assert diff[5:].min() > 1e-4
  else:  # Control: a bidirectional tower does see the change everywhere.
    assert diff.min() > 1e-6


def test_eos_pooling_positions():
  x = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)
  tokens = jnp.array([[5, 2, 2, 0], [5, 6, 7, 8]])  # Second row has no eos: last position.
  valid = jnp.ones((2, 4), bool)
  np.testing.assert_array_equal(text_lib.pool_sequence(x, tokens, valid, "eos", 2)[:, 0],
                                [1.0, 7.0])
  np.testing.assert_array_equal(text_lib.pool_sequence(x, tokens, valid, "argmax", 2)[:, 0],
                                [0.0, 7.0])


@pytest.mark.parametrize("override, message", [
    ({"image.name": "resnet"}, "model.image.name='resnet' is not known"),
    ({"name": "three_tower"}, "model.name='three_tower'"),
    ({"text.pool": "max"}, "model.text.pool='max'"),
    ({"image.widht": 3}, "Unknown config key model.image.widht. Did you mean 'width'?"),
    ({"dtype": "float8"}, "model.dtype='float8'"),
    ({"image.variant": "B/16"}, "implies patch_size=16 but model.image.patch_size=8"),
])
def test_config_errors_name_the_key(override, message):
  config = _tiny_model_config()
  with config.unlocked():
    for key, value in override.items():
      section = config
      *parents, leaf = key.split(".")
      for parent in parents:
        section = section[parent]
      section[leaf] = value
  with pytest.raises(ValueError) as error:
    models.build_model(config)
  assert message in str(error.value)


@pytest.mark.parametrize("pool, positions", [("cls", "learned"), ("gap", "sinusoidal"),
                                             ("map", "learned")])
def test_vit_pools_and_bfloat16_shapes(pool, positions):
  config = _tiny_model_config(**{"image.pool": pool, "image.positions": positions,
                                 "dtype": "bfloat16"})
  model = models.build_model(config)
  images, tokens = models.example_inputs(config, batch_size=2)
  variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
  features = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.encode_image),
                            variables, images)
  assert features.shape == (2, config.embed_dim) and features.dtype == jnp.bfloat16
  out = jax.eval_shape(model.apply, variables, images, tokens)
  assert out["image_emb"].dtype == jnp.float32  # Normalised embeddings stay float32.
  assert jax.tree_util.tree_leaves(models.unbox(variables))[0].dtype == jnp.float32


def test_sharded_init_by_logical_axes_equals_plain_init(clip_model):
  """The engine's path: specs from eval_shape, mesh shardings from rules, jit(init)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  config, model, params, _ = clip_model
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2),
                           ("data", "fsdp", "model"))
  inputs = models.example_inputs(config, batch_size=2)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh,
                                          models.SUGGESTED_AXIS_RULES)
  sharded = models.unbox(jax.jit(model.init, out_shardings=shardings)(
      jax.random.key(0), *inputs)["params"])
  query = sharded["text"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model", None)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                         sharded, params)
