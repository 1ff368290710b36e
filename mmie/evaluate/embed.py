"""Embedding a whole split in fixed-size batches with one compiled function."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def embed_in_batches(embed_fn: Callable[[jax.Array], jax.Array], inputs: np.ndarray,
                     batch_size: int) -> np.ndarray:
  """Applies ``embed_fn`` (jitted once) over ``inputs`` in batches; returns normalised rows.

  The last batch is padded to ``batch_size`` so only one shape is ever compiled.
  """
  fn = jax.jit(embed_fn)
  n = inputs.shape[0]
  outputs = []
  for start in range(0, n, batch_size):
    chunk = inputs[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)], axis=0)
    outputs.append(np.asarray(fn(chunk))[:batch_size - pad])
  emb = np.concatenate(outputs, axis=0).astype(np.float32)
  return emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def two_tower_embedders(model: Any, params: Any) -> tuple[Callable, Callable]:
  """``(embed_images, embed_texts)`` closures over a two-tower model's params."""
  variables = {"params": params}
  embed_images = lambda x: model.apply(variables, x, method=model.encode_image)
  embed_texts = lambda t: model.apply(variables, t, method=model.encode_text)
  return embed_images, embed_texts


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
