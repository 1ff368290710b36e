"""Fusion modules: gated identity at init (and a NumPy Flamingo reference once opened),
key masks in every direction, ITM head shapes, config errors. FusionModel itself is exercised
end to end by tests/tasks/test_matching.py."""

from math import erf

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmie.configs import clip
from mmie.models import fusion
from mmie.models import layers
from mmie.models import unbox
from tests.model_utils import random_params

WIDTH, NUM_IMAGE, NUM_TEXT = 16, 5, 6
BLOCK = layers.BlockConfig(num_heads=2, mlp_dim=32)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(2, NUM_IMAGE, WIDTH)).astype(np.float32)
  text = rng.normal(size=(2, NUM_TEXT, WIDTH)).astype(np.float32)
  text_valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  image_valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  return image, text, text_valid, image_valid


_random_params = random_params


@pytest.fixture(scope="module", params=sorted(fusion.FUSIONS))
def fused(request):
  """(kind, params, jitted apply) per fusion kind, initialised once."""
  module = fusion.FUSIONS[request.param](depth=1, config=BLOCK)
  image, text, text_valid, image_valid = _inputs()
  params = _random_params(module, image, text, text_valid, image_valid)
  return request.param, params, jax.jit(module.apply)


def test_pooled_shapes_and_itm_head(fused):
  kind, params, apply = fused
  image, text, text_valid, image_valid = _inputs()
  out = apply({"params": params}, image, text, text_valid, image_valid)
  assert out.image.shape == image.shape and out.text.shape == text.shape
  width = 2 * WIDTH if kind == "bidirectional" else WIDTH
  assert out.pooled.shape == (2, width)
  head = fusion.ITMHead()
  logits = head.apply(head.init(jax.random.key(0), out.pooled), out.pooled)
  assert logits.shape == (2, 2) and logits.dtype == jnp.float32


def test_padded_keys_change_nothing(fused):
  _, params, apply = fused
  image, text, text_valid, image_valid = _inputs(1)
  base = apply({"params": params}, image, text, text_valid, image_valid)
  hidden_image, hidden_text = image.copy(), text.copy()
  hidden_image[0, 3:] = 50.0   # Masked image keys (image_valid[0, 3:] is False).
  hidden_text[0, 4:] = -50.0   # Padded text tokens.
  out = apply({"params": params}, hidden_image, hidden_text, text_valid, image_valid)
  np.testing.assert_allclose(out.text[0, :4], base.text[0, :4], atol=1e-5)
  np.testing.assert_allclose(out.text[1], base.text[1], atol=1e-5)
  np.testing.assert_allclose(out.image[0, :3], base.image[0, :3], atol=1e-5)
  np.testing.assert_allclose(out.pooled, base.pooled, atol=1e-5)
  visible = image.copy()
  visible[0, 1] = 50.0  # Control: a visible image token does change the text stream.
  out = apply({"params": params}, visible, text, text_valid, image_valid)
  assert np.abs(out.text[0, :4] - base.text[0, :4]).max() > 1e-3


def test_gated_cross_attention_is_identity_at_init(gated):
  _, params, apply = gated
  image, text, text_valid, image_valid = _inputs(2)
  out = apply({"params": params}, image, text, text_valid, image_valid)
  np.testing.assert_array_equal(out.text, text)
  np.testing.assert_allclose(out.pooled, _np_masked_mean(text, text_valid), rtol=1e-6)


@pytest.fixture(scope="module")
def gated():
  module = fusion.GatedCrossAttentionFusion(depth=1, config=BLOCK)
  image, text, text_valid, image_valid = _inputs()
  params = unbox(jax.jit(module.init)(jax.random.key(3), image, text, text_valid,
                                      image_valid)["params"])
  return module, params, jax.jit(module.apply)


def _np_masked_mean(x, valid):
  return (x * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)


def _np_layer_norm(x, p, eps=1e-5):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_attention(p, q_in, kv_in, key_valid):
  q = np.einsum("btd,dhk->bthk", q_in, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bsd,dhk->bshk", kv_in, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bsd,dhk->bshk", kv_in, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(key_valid[:, None, None, :], logits, -1e30)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bhts,bshk->bthk", w, v)
  return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def _np_gelu(x):
  return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def test_opened_gates_match_numpy_flamingo_layer(gated):
  """y = x + tanh(a) attn(LN(x), image); out = y + tanh(b) MLP(LN(y))  (Alayrac et al. 2022)."""
  _, params, apply = gated
  params = jax.tree.map(np.asarray, params)
  params["layer_0"]["attention_gate"] = np.float32(0.7)
  params["layer_0"]["mlp_gate"] = np.float32(-0.4)
  image, text, text_valid, image_valid = _inputs(4)
  out = apply({"params": params}, image, text, text_valid, image_valid)
  p = params["layer_0"]
  y = text + np.tanh(0.7) * _np_attention(
      p["cross_attention"], _np_layer_norm(text, p["cross_attention_norm"]), image, image_valid)
  h = _np_layer_norm(y, p["mlp_norm"]) @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
  mlp = _np_gelu(h) @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
  np.testing.assert_allclose(out.text, y + np.tanh(-0.4) * mlp, atol=2e-5)


def _fusion_config(kind: str) -> ml_collections.ConfigDict:
  config = clip.get_config("tiny").model
  del config.logit_bias_init
  config.name = "fusion"
  config.fusion = ml_collections.ConfigDict(dict(kind=kind, depth=1, num_heads=2, mlp_dim=32))
  return config


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.fusion, "kind", "merge"), "model.fusion.kind='merge' is not known"),
    (lambda c: setattr(c.image, "pool", "map"), "model.image.pool='map' cannot pool"),
    (lambda c: setattr(c.text, "pool", "none"), "model.text.pool='none' cannot pool"),
    (lambda c: setattr(c.fusion, "heads", 2), r"Unknown config key model.fusion.heads"),
])
def test_bad_fusion_config_fails_clearly(change, message):
  config = _fusion_config("cross_attention")
  change(config)
  with pytest.raises(ValueError, match=message):
    fusion.build_fusion_model(config)
