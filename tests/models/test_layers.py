"""Layers: attention against a NumPy reference, GQA, masks, positions, KV cache, scan/remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmie.models import layers
from mmie.models import positions


def _np_attention(params, x_q, x_kv, mask, num_heads, num_kv_heads):
  """Textbook softmax(q k^T / sqrt(d) + mask) v with per-group shared k/v heads."""
  p = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in params.items()}
  q = np.einsum("btd,dhk->bthk", x_q, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bsd,dhk->bshk", x_kv, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bsd,dhk->bshk", x_kv, p["value"]["kernel"]) + p["value"]["bias"]
  group = num_heads // num_kv_heads
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(np.broadcast_to(mask, logits.shape), logits, -1e30)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhts,bshk->bthk", weights, v)
  return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def _random_params(module, *args, seed=0):
  """Params with random (not zero) biases so the reference checks them too."""
  params = layers.unbox(module.init(jax.random.key(seed), *args)["params"])
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [jax.random.normal(k, x.shape) * 0.3 for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("num_heads, num_kv_heads", [(2, None), (4, 2), (4, 1)])
def test_attention_matches_numpy_reference(num_heads, num_kv_heads):
  rng = np.random.default_rng(0)
  x_q = rng.normal(size=(2, 5, 8)).astype(np.float32)
  x_kv = rng.normal(size=(2, 7, 6)).astype(np.float32)
  key_valid = np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], bool)
  mask = layers.key_mask(jnp.asarray(key_valid))
  attention = layers.MultiHeadAttention(num_heads, head_dim=3, num_kv_heads=num_kv_heads)
  params = _random_params(attention, x_q, x_kv, mask)
  ours = attention.apply({"params": params}, x_q, x_kv, mask)
  expected = _np_attention(params, x_q, x_kv, np.asarray(mask), num_heads,
                           num_kv_heads or num_heads)
  np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_causal_flag_matches_numpy_causal_and_padding_mask():
  """is_causal (the flag a fused kernel takes) is the textbook lower-triangular mask, and it
  composes with a padding mask."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 6, 8)).astype(np.float32)
  key_valid = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
  padding = layers.key_mask(jnp.asarray(key_valid))
  attention = layers.MultiHeadAttention(2, is_causal=True)
  params = _random_params(attention, x, None, padding)
  ours = attention.apply({"params": params}, x, None, padding)
  causal = np.tril(np.ones((6, 6), bool))[None, None] & np.asarray(padding)
  expected = _np_attention(params, x, x, causal, 2, 2)
  np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_unknown_attention_implementation_fails_clearly():
  with pytest.raises(ValueError, match="attention='flash'.*'xla', 'cudnn'"):
    layers.BlockConfig(num_heads=2, mlp_dim=8, attention="flash")
  with pytest.raises(ValueError, match="is_causal with decode"):
    attention = layers.MultiHeadAttention(2, is_causal=True, decode=True)
    attention.init(jax.random.key(0), jnp.zeros((1, 3, 8)))


def test_cross_attention_respects_key_mask():
  rng = np.random.default_rng(1)
  x_q = rng.normal(size=(1, 3, 8)).astype(np.float32)
  x_kv = rng.normal(size=(1, 6, 8)).astype(np.float32)
  mask = layers.key_mask(jnp.array([[1, 1, 1, 0, 0, 1]]))
  attention = layers.MultiHeadAttention(2)
  params = _random_params(attention, x_q, x_kv, mask)
  apply = jax.jit(attention.apply)
  base = apply({"params": params}, x_q, x_kv, mask)
  hidden_changed = x_kv.copy()
  hidden_changed[:, 3:5] = 100.0
  np.testing.assert_allclose(apply({"params": params}, x_q, hidden_changed, mask), base,
                             atol=1e-6)
  visible_changed = x_kv.copy()
  visible_changed[:, 5] = 100.0  # Control: a visible key does matter.
  assert np.abs(apply({"params": params}, x_q, visible_changed, mask) - base).max() > 1e-3


def test_bad_head_counts_fail_clearly():
  x = jnp.zeros((1, 2, 8))
  with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
    layers.MultiHeadAttention(4, num_kv_heads=3).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="width 8 is not divisible by num_heads=3"):
    layers.MultiHeadAttention(3).init(jax.random.key(0), x)


def test_sinusoidal_matches_paper_formula():
  table = positions.sinusoidal_1d(length=6, dim=8)
  p, i = 4, 3  # PE[p, 2i] = sin(p / 10000^(2i/d)); PE[p, 2i+1] = cos(...).
  assert table[p, 2 * i] == pytest.approx(np.sin(p / 10_000 ** (2 * i / 8)), abs=1e-6)
  assert table[p, 2 * i + 1] == pytest.approx(np.cos(p / 10_000 ** (2 * i / 8)), abs=1e-6)
  assert table[1, 0] == pytest.approx(np.sin(1.0)) and table[0, 1] == 1.0


def test_sincos_2d_layout():
  table = positions.sincos_2d(2, 3, 8)  # Quarters: sin x, cos x, sin y, cos y; omega=(1, 1e-4).
  assert table.shape == (6, 8)
  row, col = 1, 2  # Patch index 5.
  np.testing.assert_allclose(table[5, [0, 2, 4, 6]],
                             [np.sin(col), np.cos(col), np.sin(row), np.cos(row)], atol=1e-6)


def test_rope_matches_rotation_and_is_relative():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 4, 1, 4)).astype(np.float32)
  out = np.asarray(positions.apply_rope(jnp.asarray(x), jnp.arange(4)))
  p, theta = 3, 3 * 10_000 ** (-2 / 4)  # Pair (1, 3) at position 3 rotates by p * base^(-2/d).
  a, b = x[0, p, 0, 1], x[0, p, 0, 3]
  np.testing.assert_allclose(out[0, p, 0, [1, 3]],
                             [a * np.cos(theta) - b * np.sin(theta),
                              b * np.cos(theta) + a * np.sin(theta)], atol=1e-6)
  q, k = jnp.asarray(x[:, :1]), jnp.asarray(x[:, 1:2])
  dot = lambda i, j: float(jnp.sum(positions.apply_rope(q, jnp.array([i]))
                                   * positions.apply_rope(k, jnp.array([j]))))
  assert dot(2, 5) == pytest.approx(dot(10, 13), abs=1e-5)  # Depends on j - i only.


def _block_config(**kwargs) -> layers.BlockConfig:
  return layers.BlockConfig(num_heads=2, mlp_dim=16, **kwargs)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_kv_cache_decoding_equals_full_causal_pass(scan_layers):
  config = _block_config(num_kv_heads=1, rope_base=10_000.0)
  full = layers.TransformerEncoder(2, config, scan_layers=scan_layers)
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  params = layers.unbox(jax.jit(full.init)(jax.random.key(1), x)["params"])
  expected = jax.jit(full.apply)({"params": params}, x, layers.causal_mask(6))
  decoder = layers.TransformerEncoder(2, _block_config(num_kv_heads=1, rope_base=10_000.0,
                                                       decode=True), scan_layers=scan_layers)
  cache = jax.eval_shape(decoder.init, jax.random.key(1), x)["cache"]
  cache = jax.tree_util.tree_map(lambda c: jnp.zeros(c.shape, c.dtype), cache)
  step = jax.jit(lambda c, xt: decoder.apply({"params": params, "cache": c}, xt,
                                             mutable=["cache"]))
  outputs = []
  for t in range(6):
    y, updated = step(cache, x[:, t:t + 1])
    cache = updated["cache"]
    outputs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), expected, atol=1e-5)


def test_scan_and_remat_match_unrolled_layers():
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  mask = layers.causal_mask(5)
  unrolled = layers.TransformerEncoder(3, _block_config())
  params = _random_params(unrolled, x, mask)
  stacked = {"layers": jax.tree_util.tree_map(
      lambda *xs: jnp.stack(xs), *[params[f"layer_{i}"] for i in range(3)])}
  loss = lambda module, p: jnp.sum(module.apply({"params": p}, x, mask) ** 2)
  expected, expected_grad = jax.jit(jax.value_and_grad(lambda p: loss(unrolled, p)))(params)
  for remat in (False, True):
    scanned = layers.TransformerEncoder(3, _block_config(), remat=remat, scan_layers=True)
    value, grad = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    np.testing.assert_allclose(grad["layers"]["mlp"]["fc1"]["kernel"][1],
                               expected_grad["layer_1"]["mlp"]["fc1"]["kernel"], atol=1e-4)
  remat_only = layers.TransformerEncoder(3, _block_config(), remat=True)
  assert float(loss(remat_only, params)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_parameter_has_known_logical_axes(scan_layers):
  encoder = layers.TransformerEncoder(2, _block_config(num_kv_heads=1), scan_layers=scan_layers)
  boxed = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 4, 8)))["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) - {None} <= set(layers.LOGICAL_AXES)
    assert (leaf.names[0] == "layers") == scan_layers

