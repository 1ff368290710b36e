"""Attention maps and attention rollout for the ViT image tower, without changing the model.

The shared attention layer calls ``jax.nn.dot_product_attention`` and never materialises its
weights, so they are recomputed here: the query and key projections of every encoder layer are
captured with Flax's ``capture_intermediates`` and ``softmax(q k^T / sqrt(d))`` is redone
outside the model (the ViT has no attention mask and no rotary positions, so this is exact).

Rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): average the heads,
add the identity for the residual path, ``A_hat = (A + I) / 2``, and multiply the layers,
``R = A_hat_L ... A_hat_1``; row 0 (the class token) over the patch columns says how much each
patch flows into the pooled feature.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_LAYER = re.compile(r"layer_(\d+)$")


def _projection_filter(module: Any, method_name: str) -> bool:
  return method_name == "__call__" and getattr(module, "name", None) in ("query", "key")


def _encoder_layers(tree: dict) -> list[tuple[jax.Array, jax.Array]]:
  """[(query, key)] per encoder layer, in depth order, from captured intermediates.

  Handles both layer layouts: ``layer_i`` modules and one ``nn.scan`` over stacked layers.
  """
  encoder = tree.get("encoder")
  if encoder is None:
    raise ValueError("No 'encoder' in the captured intermediates: attention maps need a ViT"
                     f" image tower (found {sorted(tree)}).")
  grab = lambda block, name: block["attention"][name]["__call__"][0]
  if "layers" in encoder:  # Scanned: leading axis is the layer.
    q, k = grab(encoder["layers"], "query"), grab(encoder["layers"], "key")
    return [(q[i], k[i]) for i in range(q.shape[0])]
  names = sorted((n for n in encoder if _LAYER.match(n)), key=lambda n: int(_LAYER.match(n)[1]))
  return [(grab(encoder[n], "query"), grab(encoder[n], "key")) for n in names]


def attention_weights(query: jax.Array, key: jax.Array) -> jax.Array:
  """``softmax(q k^T / sqrt(d))`` per head: [B, T, H, D], [B, S, Hkv, D] -> [B, H, T, S].

  Grouped-query keys are repeated to the query heads as ``jax.nn.dot_product_attention`` does.
  """
  heads, kv_heads = query.shape[2], key.shape[2]
  if heads % kv_heads:
    raise ValueError(f"attention_weights: {heads} query heads not divisible by {kv_heads}.")
  key = jnp.repeat(key, heads // kv_heads, axis=2)
  logits = jnp.einsum("bthd,bshd->bhts", query.astype(jnp.float32), key.astype(jnp.float32))
  return jax.nn.softmax(logits / np.sqrt(query.shape[-1]), axis=-1)


def image_attention(model: Any, params: Any, images: jax.Array) -> list[jax.Array]:
  """Attention weights [B, H, T, T] of every encoder layer of the model's image tower.

  ``model`` is a two-tower model (its ``encode_image`` is run) or a bare ViT.
  """
  method = getattr(type(model), "encode_image", None)
  kwargs = {"method": method} if method is not None else {}
  _, state = model.apply({"params": params}, images, capture_intermediates=_projection_filter,
                         mutable=["intermediates"], **kwargs)
  tree = state["intermediates"]
  tree = tree.get("image", tree)  # A two-tower model nests the ViT under 'image'.
  return [attention_weights(q, k) for q, k in _encoder_layers(tree)]


def rollout(attentions: list[jax.Array] | list[np.ndarray]) -> np.ndarray:
  """Attention rollout [B, T, T] from per-layer weights [B, H, T, T] (first layer first)."""
  result = None
  for weights in attentions:
    mean = np.asarray(weights, np.float64).mean(axis=1)
    eye = np.eye(mean.shape[-1])[None]
    hat = 0.5 * (mean + eye)
    hat = hat / hat.sum(axis=-1, keepdims=True)
    result = hat if result is None else hat @ result
  if result is None:
    raise ValueError("rollout needs at least one layer of attention weights.")
  return result


def patch_relevance(matrix: np.ndarray, grid: int) -> np.ndarray:
  """[B, T, T] token-mixing matrix -> [B, grid, grid] relevance of each patch, rows sum to 1.

  With a class token (T = grid^2 + 1) its row is read; otherwise (mean pooling) the mean row.
  """
  matrix = np.asarray(matrix)
  prefix = matrix.shape[-1] - grid * grid
  if prefix not in (0, 1):
    raise ValueError(f"patch_relevance: {matrix.shape[-1]} tokens do not fit a {grid}x{grid}"
                     " grid with at most one class token.")
  row = matrix[:, 0, prefix:] if prefix else matrix.mean(axis=1)
  row = row / np.maximum(row.sum(axis=-1, keepdims=True), 1e-12)
  return row.reshape(-1, grid, grid)


def rollout_maps(model: Any, params: Any, images: jax.Array, grid: int) -> np.ndarray:
  """[B, grid, grid] attention-rollout relevance of each patch for the pooled image feature."""
  return patch_relevance(rollout(image_attention(model, params, images)), grid)


def last_layer_maps(model: Any, params: Any, images: jax.Array, grid: int) -> np.ndarray:
  """[B, grid, grid] head-averaged attention of the last layer (no residual, no rollout)."""
  last = np.asarray(image_attention(model, params, images)[-1]).mean(axis=1)
  return patch_relevance(last, grid)
