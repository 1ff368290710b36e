"""Image-text matching (ITM) evaluation of a fusion model: ITM accuracy and re-ranking.

ALBEF and BLIP retrieve in two stages: the dual encoder ranks the whole split cheaply, then
the fusion model rescores only each query's top ``rerank_k`` candidates (N x rerank_k fusion
passes instead of N x M). This evaluator scores both stages on one split, so their
difference says whether the fusion layers know something the embeddings do not. Metrics
(percent, like ``retrieval_metrics``; no prefix, the registry adds it):

  i2t_recall@k, t2i_recall@k, {i2t,t2i}_median_rank   the dual encoder (``retrieval_metrics``)
  itm_accuracy   every positive pair and the pair of its image with that image's hardest
                 non-matching text (highest dual-encoder similarity): 2 decisions per caption,
                 argmax of the 2 ITM logits (1 = match). Chance 50.
  itm_i2t_recall@k, itm_t2i_recall@k   Recall@K after re-ranking the candidates by ITM match
                 probability, for k <= rerank_k (beyond it the order is the dual encoder's).
  rerank_gain_i2t@k, rerank_gain_t2i@k   re-ranked minus dual-encoder recall, in points.

Re-ranking permutes a fixed candidate set, so recall@rerank_k never changes (gain 0 there);
a positive gain at small k is what the fusion model adds. Candidates are ranked by the
match logit margin ``l1 - l0``: the same order as softmax probability of class 1, without
the ties float32 saturation of the probability would create.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmie.evaluate.context import EvalContext
from mmie.evaluate.retrieval import retrieval_metrics

Evaluator = Callable[[Any], dict[str, float]]
_BLOCK = 1024  # Queries scored at a time: memory for BLOCK x N similarities only.


def _encoder(ctx: EvalContext) -> Callable:
  """``encode`` of image/text pairs, jitted once (one shape: batches are padded)."""
  model = ctx.model

  def encode(params: Any, images: jax.Array, texts: jax.Array) -> dict[str, jax.Array]:
    out = model.apply({"params": params}, images, texts, None, train=False, method="encode")
    return {k: out[k] for k in ("image_emb", "text_emb", "image_tokens", "text_tokens",
                                "text_valid")}
  return ctx.jit(encode)


def _matcher(ctx: EvalContext) -> Callable:
  """Match logit margins of index pairs into the split's token arrays, gathered on device.

  The token arrays keep one shape per split and the index batch one size, so it compiles once.
  """
  model = ctx.model

  def margins(params: Any, image_tokens: jax.Array, text_tokens: jax.Array,
              text_valid: jax.Array, image_idx: jax.Array, text_idx: jax.Array) -> jax.Array:
    logits = model.apply({"params": params}, image_tokens[image_idx], text_tokens[text_idx],
                         text_valid[text_idx], train=False, method="match")
    return logits[:, 1] - logits[:, 0]
  return ctx.jit(margins)


def encode_split(encode_fn: Callable, params: Any, images: np.ndarray, texts: np.ndarray,
                 batch_size: int) -> dict[str, Any]:
  """Embeddings (numpy) and token sequences (device) of every image and every text.

  ``encode`` takes pairs, so row r pairs image r % N with text r % M over max(N, M) rows; with
  one caption per image (M = N) nothing is computed twice. The last batch wraps around too,
  so only one shape is compiled.
  """
  n, m = len(images), len(texts)
  rows = max(n, m)
  parts: dict[str, list] = {}
  for start in range(0, rows, batch_size):
    index = np.arange(start, start + batch_size)
    out = encode_fn(params, images[index % n], texts[index % m])
    keep = min(batch_size, rows - start)
    for key, value in out.items():
      parts.setdefault(key, []).append(value[:keep])
  joined = {k: jnp.concatenate(v) for k, v in parts.items()}
  return {
      "image_emb": np.asarray(joined["image_emb"][:n], np.float32),
      "text_emb": np.asarray(joined["text_emb"][:m], np.float32),
      "image_tokens": joined["image_tokens"][:n],
      "text_tokens": joined["text_tokens"][:m], "text_valid": joined["text_valid"][:m],
  }


def rank_candidates(queries: np.ndarray, keys: np.ndarray, query_ids: np.ndarray,
                    key_ids: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
  """Each query's ``depth`` most similar keys, best first (ties: lower index), [Q, depth], and
  its most similar non-matching key (id differs), [Q] (-1 where every key matches)."""
  top, hardest = [], []
  for start in range(0, len(queries), _BLOCK):
    scores = queries[start:start + _BLOCK] @ keys.T
    top.append(np.argsort(-scores, axis=1, kind="stable")[:, :depth])
    positive = query_ids[start:start + _BLOCK, None] == key_ids[None, :]
    negative_scores = np.where(positive, -np.inf, scores)
    hardest.append(np.where(positive.all(1), -1, negative_scores.argmax(1)))
  return np.concatenate(top), np.concatenate(hardest)


def itm_margins(match_fn: Callable, params: Any, encoded: dict[str, Any], pairs: np.ndarray,
                batch_size: int) -> np.ndarray:
  """Match logit margin ``l1 - l0`` of each (image, text) index pair in ``pairs`` [P, 2].

  Each distinct pair is fused once (the two directions' candidates overlap), in chunks of
  ``batch_size``; the last chunk repeats its final pair so the shape never changes.
  """
  unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
  out = []
  for start in range(0, len(unique), batch_size):
    chunk = unique[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    margins = match_fn(params, encoded["image_tokens"], encoded["text_tokens"],
                       encoded["text_valid"], chunk[:, 0], chunk[:, 1])
    out.append(np.asarray(margins)[:batch_size - pad])
  return np.concatenate(out)[inverse.reshape(-1)]


def reranked_recall(margins: np.ndarray, correct: np.ndarray, ks: tuple[int, ...]
                    ) -> dict[int, float]:
  """Recall@k (percent) after sorting each row's candidates by descending ``margins`` [Q, K];
  ``correct`` [Q, K] marks the positives. Ties keep the dual-encoder order."""
  order = np.argsort(-margins, axis=1, kind="stable")
  hits = np.take_along_axis(correct, order, axis=1)
  return {k: float(100.0 * np.mean(hits[:, :k].any(axis=1))) for k in ks}


def _pairs(owners: np.ndarray, i2t: np.ndarray, t2i: np.ndarray, hardest: np.ndarray
           ) -> dict[str, np.ndarray]:
  """(image, text) index pairs [P, 2] each metric fuses: every image with its text candidates,
  every text with its image candidates, the positive pairs, and their hard negatives."""
  n, m = len(i2t), len(t2i)
  return {
      "i2t": np.stack([np.repeat(np.arange(n), i2t.shape[1]), i2t.reshape(-1)], 1),
      "t2i": np.stack([t2i.reshape(-1), np.repeat(np.arange(m), t2i.shape[1])], 1),
      "positive": np.stack([owners, np.arange(m)], 1),
      "negative": np.stack([owners, hardest[owners]], 1),
  }


def _itm_metrics(margins: dict[str, np.ndarray], owners: np.ndarray, i2t: np.ndarray,
                 t2i: np.ndarray, dual: dict[str, float], ks: tuple[int, ...]
                 ) -> dict[str, float]:
  """ITM accuracy and re-ranked recall from the margins of each kind of pair (``_pairs``)."""
  correct = np.sum(margins["positive"] > 0) + np.sum(margins["negative"] <= 0)  # Tie: 0.
  metrics = {"itm_accuracy": float(100.0 * correct / (2 * len(owners)))}
  positives = {"i2t": owners[i2t] == np.arange(len(i2t))[:, None],
               "t2i": t2i == owners[:, None]}
  for name, candidates in (("i2t", i2t), ("t2i", t2i)):
    scores = margins[name].reshape(candidates.shape)
    for k, recall in reranked_recall(scores, positives[name], ks).items():
      metrics[f"itm_{name}_recall@{k}"] = recall
      metrics[f"rerank_gain_{name}@{k}"] = recall - dual[f"{name}_recall@{k}"]
  return metrics


def _owners(split: dict[str, Any], split_name: str) -> np.ndarray:
  """Each caption's image index (identity without ``text_image_ids``), checked usable."""
  n, m = len(split["image"]), len(split["text"])
  if "text_image_ids" in split:
    owners = np.asarray(split["text_image_ids"], np.int64)
  elif m == n:
    owners = np.arange(n)
  else:
    raise ValueError(f"split {split_name!r} has {n} images but {m} captions and no "
                     "text_image_ids to say which image each caption belongs to.")
  if owners.shape != (m,) or owners.min() < 0 or owners.max() >= n:
    raise ValueError(f"split {split_name!r}: text_image_ids must be {m} image indices < {n}.")
  if len(np.unique(owners)) < 2:
    raise ValueError(f"The matching evaluator needs captions of at least 2 images in split "
                     f"{split_name!r}: with one, no caption has a non-matching image.")
  return owners


def matching(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Dual-encoder retrieval, ITM accuracy on hard negatives, and ITM re-ranking (see module)."""
  split = ctx.split(spec["split"])
  owners = _owners(split, spec["split"])
  images, texts = np.asarray(split["image"]), np.asarray(split["text"])
  n, batch_size, rerank_k = len(images), int(spec["batch_size"]), int(spec["rerank_k"])
  ks = tuple(int(k) for k in spec["ks"])
  rerank_ks = tuple(k for k in ks if k <= rerank_k)
  encode_fn, match_fn = _encoder(ctx), _matcher(ctx)

  def evaluate(params: Any) -> dict[str, float]:
    enc = encode_split(encode_fn, params, images, texts, batch_size)
    dual = retrieval_metrics(enc["image_emb"], enc["text_emb"], split.get("text_image_ids"),
                             ks=ks)
    i2t, hardest = rank_candidates(enc["image_emb"], enc["text_emb"], np.arange(n), owners,
                                   min(rerank_k, len(texts)))
    t2i, _ = rank_candidates(enc["text_emb"], enc["image_emb"], owners, np.arange(n),
                             min(rerank_k, n))
    pairs = _pairs(owners, i2t, t2i, hardest)
    flat = itm_margins(match_fn, params, enc, np.concatenate(list(pairs.values())), batch_size)
    sizes = np.cumsum([len(p) for p in pairs.values()])[:-1]
    margins = dict(zip(pairs, np.split(flat, sizes)))
    return {**dual, **_itm_metrics(margins, owners, i2t, t2i, dual, rerank_ks)}

  chance = {f"recall@{k}": min(100.0, 100.0 * k / n) for k in ks}
  chance["median_rank"] = (n + 1) / 2
  chance["itm_accuracy"] = 50.0
  evaluate.chance = chance  # type: ignore[attr-defined]
  return evaluate
