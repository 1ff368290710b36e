"""Image-text retrieval: Recall@K and median rank over a whole split, both directions.

Similarities are computed a block of queries at a time, so the N x N matrix is never held:
100k items need memory for ``block x N`` scores only.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _best_correct_rank(queries: jax.Array, keys: jax.Array, correct: jax.Array) -> jax.Array:
  """0-based rank of the best-scoring correct key for each query (ties count in its favour)."""
  scores = queries @ keys.T  # [q, N]
  best = jnp.max(jnp.where(correct, scores, -jnp.inf), axis=1, keepdims=True)
  return jnp.sum(scores > best, axis=1)


def _ranks(queries: np.ndarray, keys: np.ndarray, query_ids: np.ndarray, key_ids: np.ndarray,
           block: int) -> np.ndarray:
  ranks = []
  keys_j = jnp.asarray(keys)
  key_ids_j = jnp.asarray(key_ids)
  for start in range(0, queries.shape[0], block):
    q = queries[start:start + block]
    ids = query_ids[start:start + block]
    pad = block - q.shape[0]
    if pad:  # One compiled shape for every block.
      q = np.concatenate([q, np.zeros((pad, q.shape[1]), q.dtype)])
      ids = np.concatenate([ids, np.full((pad,), -1, ids.dtype)])
    correct = jnp.asarray(ids)[:, None] == key_ids_j[None, :]
    ranks.append(np.asarray(_best_correct_rank(jnp.asarray(q), keys_j, correct))[:block - pad])
  return np.concatenate(ranks)


def retrieval_ranks(image_emb: np.ndarray, text_emb: np.ndarray,
                    text_image_ids: np.ndarray | None = None, *,
                    block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """0-based rank of the best correct answer per query: ``(i2t [images], t2i [captions])``.

  ``text_image_ids[t]`` is the index of the image that caption ``t`` describes; by default
  caption ``i`` belongs to image ``i``. An image's rank is that of its best-ranked caption.
  """
  n_images = image_emb.shape[0]
  if text_image_ids is None:
    if text_emb.shape[0] != n_images:
      raise ValueError(f"{n_images} images but {text_emb.shape[0]} captions: pass"
                       " text_image_ids to say which image each caption belongs to.")
    text_image_ids = np.arange(n_images)
  text_image_ids = np.asarray(text_image_ids, np.int32)
  image_ids = np.arange(n_images, dtype=np.int32)
  block = min(block, max(n_images, text_emb.shape[0]))
  i2t = _ranks(image_emb, text_emb, image_ids, text_image_ids, block)
  t2i = _ranks(text_emb, image_emb, text_image_ids, image_ids, block)
  return i2t, t2i


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray,
                      text_image_ids: np.ndarray | None = None, *,
                      ks: Sequence[int] = (1, 5, 10), block: int = 1024) -> dict[str, float]:
  """Recall@K (percent) and median rank (1-based) for image->text and text->image.

  ``text_image_ids[t]`` is the index of the image that caption ``t`` describes; by default
  caption ``i`` belongs to image ``i``. An image query counts as found when any of its
  captions is in the top K.
  """
  i2t, t2i = retrieval_ranks(image_emb, text_emb, text_image_ids, block=block)
  metrics = {}
  for name, ranks in (("i2t", i2t), ("t2i", t2i)):
    for k in ks:
      metrics[f"{name}_recall@{k}"] = float(100.0 * np.mean(ranks < k))
    metrics[f"{name}_median_rank"] = float(np.median(ranks) + 1)
  return metrics
