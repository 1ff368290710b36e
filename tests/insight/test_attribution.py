"""Integrated gradients and saliency: exact on linear functions, complete on the real towers."""

import jax.numpy as jnp
import numpy as np
import pytest

from mmie.insight import attribution


def test_integrated_gradients_of_a_linear_function_is_input_times_weight():
  w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 2)), jnp.float32)
  fn = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  x = jnp.ones((2, 3, 4, 2))
  baseline = jnp.full((3, 4, 2), 0.5)
  ig = attribution.integrated_gradients(fn, x, baseline, steps=3)
  np.testing.assert_allclose(ig, np.broadcast_to((1 - 0.5) * w, x.shape), rtol=1e-6)
  sal = attribution.saliency(fn, x)
  np.testing.assert_allclose(sal, np.broadcast_to(np.abs(w).max(-1), (2, 3, 4)), rtol=1e-6)


def test_patch_sums_keep_the_total():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)))
  sums = attribution.patch_sums(x, 4)
  assert sums.shape == (2, 2, 2)
  np.testing.assert_allclose(sums[:, 0, 1], x[:, :4, 4:].sum(axis=(1, 2, 3)), rtol=1e-5)
  with pytest.raises(ValueError, match="patch_size=3"):
    attribution.patch_sums(x, 3)


def test_text_score_with_the_real_embeddings_is_the_model_similarity(tiny_model):
  model, params, batch = tiny_model
  image_emb, text_emb = attribution.embed_pair(model, params, batch["image"], batch["text"])
  embeddings = attribution.token_embeddings(model, params, batch["text"])
  score = attribution.text_score_fn(model, params, batch["text"], image_emb)(embeddings)
  np.testing.assert_allclose(score, jnp.sum(image_emb * text_emb, -1), atol=1e-6)


def test_pair_attribution_is_complete(tiny_model):
  model, params, batch = tiny_model
  out = attribution.pair_attribution(model, params, batch["image"], batch["text"],
                                     patch_size=8, steps=256)
  assert out["patch"].shape == (2, 4, 4) and out["token"].shape == (2, 16)
  # Completeness (Sundararajan et al.): attributions sum to f(input) - f(baseline).
  np.testing.assert_allclose(out["token"].sum(1), out["similarity"] - out["token_baseline"],
                             atol=2e-4)
  np.testing.assert_allclose(out["patch"].sum((1, 2)), out["similarity"] - out["patch_baseline"],
                             atol=3e-3)
