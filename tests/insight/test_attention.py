"""Recomputed ViT attention equals what the layer computed; rollout follows its formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmie.insight import attention


def test_recomputed_weights_reproduce_the_attention_layer_output(tiny_model):
  model, params, batch = tiny_model
  keep = lambda m, name: name == "__call__" and m.name in ("query", "key", "value", "attention")
  _, state = model.apply({"params": params}, batch["image"], method=type(model).encode_image,
                         capture_intermediates=keep, mutable=["intermediates"])
  layer = state["intermediates"]["image"]["encoder"]["layer_1"]["attention"]
  weights = attention.image_attention(model, params, batch["image"])[1]  # [B, H, T, T]
  value = layer["value"]["__call__"][0]  # [B, T, H, D]
  out = params["image"]["encoder"]["layer_1"]["attention"]["out"]
  mixed = np.einsum("bhts,bshd->bthd", np.asarray(weights), np.asarray(value))
  expected = np.einsum("bthd,hdw->btw", mixed, np.asarray(out["kernel"])) + np.asarray(out["bias"])
  np.testing.assert_allclose(expected, np.asarray(layer["__call__"][0]), atol=2e-5)
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-5)


def test_rollout_is_the_product_of_residual_averaged_layers():
  rng = np.random.default_rng(0)
  layers = [jax.nn.softmax(jnp.asarray(rng.normal(size=(1, 2, 3, 3))), axis=-1) for _ in range(2)]
  a1, a2 = (np.asarray(a)[0].mean(0) for a in layers)
  # Abnar & Zuidema: A_hat = 0.5 A + 0.5 I per layer, rollout = A_hat_2 @ A_hat_1.
  expected = (0.5 * a2 + 0.5 * np.eye(3)) @ (0.5 * a1 + 0.5 * np.eye(3))
  np.testing.assert_allclose(attention.rollout(layers)[0], expected, rtol=1e-6)


def test_uniform_attention_rolls_out_to_a_known_matrix():
  uniform = np.full((1, 1, 4, 4), 0.25)
  # One layer: 0.5 * 1/4 + 0.5 * I.
  np.testing.assert_allclose(attention.rollout([uniform])[0], 0.125 + 0.5 * np.eye(4))
  # Many layers: the identity part halves each time, so rollout tends to uniform.
  np.testing.assert_allclose(attention.rollout([uniform] * 30)[0], 0.25, atol=1e-8)


def test_patch_relevance_reads_the_class_token_row_or_the_mean():
  matrix = np.zeros((1, 5, 5))
  matrix[0, 0, 1:] = [0.1, 0.2, 0.3, 0.4]
  np.testing.assert_allclose(attention.patch_relevance(matrix, 2)[0], [[0.1, 0.2], [0.3, 0.4]])
  no_cls = np.tile(np.array([[1.0, 1.0, 2.0, 4.0]]), (1, 4, 1))
  np.testing.assert_allclose(attention.patch_relevance(no_cls, 2)[0], [[.125, .125], [.25, .5]])
  with pytest.raises(ValueError, match="do not fit a 2x2 grid"):
    attention.patch_relevance(np.zeros((1, 7, 7)), 2)


def test_rollout_maps_for_the_tiny_vit(tiny_model):
  model, params, batch = tiny_model
  maps = attention.rollout_maps(model, params, batch["image"], grid=4)
  assert maps.shape == (2, 4, 4)
  np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-6)
  assert np.all(maps >= 0)


def test_grouped_query_keys_are_shared_like_dot_product_attention():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 3, 4, 2)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 3, 2, 2)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, 3, 2, 2)), jnp.float32)
  weights = attention.attention_weights(q, k)
  reference = jax.nn.dot_product_attention(q, k, v)
  mixed = jnp.einsum("bhts,bshd->bthd", weights, jnp.repeat(v, 2, axis=2))
  np.testing.assert_allclose(mixed, reference, atol=1e-5)


def test_scanned_layers_give_the_same_maps_as_unrolled_ones():
  from mmie.models import VisionTransformer, unbox

  kwargs = dict(image_size=16, patch_size=8, width=16, depth=2, num_heads=2, mlp_dim=32)
  unrolled, scanned = VisionTransformer(**kwargs), VisionTransformer(**kwargs, scan_layers=True)
  images = jnp.asarray(np.random.default_rng(2).normal(size=(1, 16, 16, 3)), jnp.float32)
  params = unbox(unrolled.init(jax.random.PRNGKey(0), images)["params"])
  layers = [params["encoder"][f"layer_{i}"] for i in range(2)]
  stacked = {**params, "encoder": {"layers": jax.tree.map(lambda *x: jnp.stack(x), *layers)}}
  np.testing.assert_allclose(attention.rollout_maps(scanned, stacked, images, 2),
                             attention.rollout_maps(unrolled, params, images, 2), atol=1e-6)
