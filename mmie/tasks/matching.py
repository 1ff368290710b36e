"""Image-text matching (ITM) with hard negatives mined from the contrastive similarities.

The ALBEF / BLIP recipe (Li et al. 2021, 2022): for every image pick one non-matching text of
the batch with probability softmax(similarity) over the non-matching texts, and for every text
one non-matching image likewise; the fusion model then classifies the B positive pairs and the
2B hard negative pairs as match (1) / no match (0). Hard negatives are the pairs the
contrastive embeddings find most confusable, so the fusion layers learn what they cannot.

The task returns both the contrastive inputs (``image_emb``, ``text_emb``, ``logit_scale``) and
the ITM inputs (``logits`` [3B, 2], ``targets`` [3B] int, ``mask`` [3B]); ``cross_entropy``
on the latter is the 2-way softmax ITM loss of ALBEF, and ``combine`` adds ``clip`` for ITC.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mmie.tasks.base import Task

Array = jax.Array


def sample_hard_negatives(similarity: Array, rng: Array, positive: Array | None = None,
                          random_fraction: float = 0.0) -> tuple[Array, Array, Array, Array]:
  """Samples one negative text per image and one negative image per text.

  Each negative is drawn from ``(1 - random_fraction) * softmax(similarity)`` plus
  ``random_fraction`` spread uniformly over the non-matching candidates: 0 is ALBEF's pure
  hard-negative sampling, 1 uniform random negatives.

  Args:
    similarity: [B, B] image-to-text logits (row i: image i against every text), already
      scaled by the temperature; gradients are stopped here.
    rng: PRNG key.
    random_fraction: the uniform share of the sampling distribution, in [0, 1].
    positive: [B, B] bool, True where (image i, text j) match; the identity when None. Pass
      it when a batch holds several captions of one image (BLIP's image ids).

  Returns:
    ``text_for_image`` [B], ``image_for_text`` [B] (indices into the batch), and
    ``image_has_negative`` / ``text_has_negative`` [B] bool, False for a row (column) where
    every candidate matches: its sampled index is meaningless and must be masked out.
  """
  if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
    raise ValueError(f"sample_hard_negatives: similarity must be square [B, B]; got "
                     f"{similarity.shape}.")
  if similarity.shape[0] < 2:
    raise ValueError("sample_hard_negatives: a batch of 1 has no negatives; use batch >= 2.")
  if not 0.0 <= random_fraction <= 1.0:
    raise ValueError(f"matching: random_negatives={random_fraction} must be in [0, 1].")
  batch = similarity.shape[0]
  positive = jnp.eye(batch, dtype=bool) if positive is None else positive.astype(bool)
  logits = jnp.where(positive, -jnp.inf, jax.lax.stop_gradient(similarity).astype(jnp.float32))
  has_negative = ~positive
  text_rng, image_rng = jax.random.split(rng)
  text_for_image = jax.random.categorical(
      text_rng, _candidate_logits(logits, has_negative, random_fraction), axis=1)
  image_for_text = jax.random.categorical(
      image_rng, _candidate_logits(logits.T, has_negative.T, random_fraction), axis=1)
  return (text_for_image, image_for_text, has_negative.any(axis=1), has_negative.any(axis=0))


def _candidate_logits(logits: Array, candidate: Array, fraction: float) -> Array:
  """Per-row log-probabilities of ``(1 - f) softmax(logits) + f uniform`` over ``candidate``.

  ``logits`` is -inf off the candidates. A row without candidates gets zeros (its draw is
  masked out by the caller), never NaN.
  """
  if fraction == 0.0:
    return logits
  any_candidate = candidate.any(axis=1, keepdims=True)
  safe = jnp.where(any_candidate, logits, 0.0)
  hard = jax.nn.log_softmax(safe, axis=1)
  uniform = -jnp.log(jnp.maximum(candidate.sum(axis=1, keepdims=True), 1).astype(logits.dtype))
  mixed = jnp.logaddexp(jnp.log1p(-fraction) + hard if fraction < 1.0 else -jnp.inf,
                        jnp.log(fraction) + uniform)
  return jnp.where(any_candidate, jnp.where(candidate, mixed, -jnp.inf), 0.0)


def itm_pairs(image_tokens: Array, text_tokens: Array, text_valid: Array,
              text_for_image: Array, image_for_text: Array) -> tuple[Array, Array, Array]:
  """Stacks [positives; (image, its negative text); (negative image, text)] along the batch."""
  images = jnp.concatenate([image_tokens, image_tokens, image_tokens[image_for_text]], 0)
  texts = jnp.concatenate([text_tokens, text_tokens[text_for_image], text_tokens], 0)
  valid = jnp.concatenate([text_valid, text_valid[text_for_image], text_valid], 0)
  return images, texts, valid


def _positive_mask(batch: Mapping[str, Array]) -> Array | None:
  if "pair_id" not in batch:
    return None
  ids = batch["pair_id"]
  return ids[:, None] == ids[None, :]


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool, ema_params: Any = None,
            random_negatives: float = 0.0) -> dict[str, jax.Array]:
  """``mmie.models.fusion.FusionModel`` on a batch of pairs -> ITC and ITM loss inputs.

  ``random_negatives`` (the task option ``task="matching(random_negatives=0.5)"``) is the
  uniform share of the negative sampling (``sample_hard_negatives``). Models trained from
  scratch need it: pure hard negatives of untrained embeddings are near-duplicate captions,
  and the ITM head then settles at the class prior (always "no match").

  With ``ema_params`` (``train.ema_decay``) it also returns the momentum encoder's detached
  ``image_emb_momentum`` / ``text_emb_momentum`` (ALBEF's momentum distillation keys).

  Batch: ``image`` [B, H, W, C], ``text`` [B, L]; optional ``text_mask`` [B, L] (1 = token)
  and ``pair_id`` [B] (same id = same image, so those pairs are never negatives).
  """
  dropout_rng, negatives_rng, fusion_rng = jax.random.split(rng, 3)
  variables = {"params": params}
  out = apply_fn(variables, batch["image"], batch["text"], batch.get("text_mask"),
                 train=train, method="encode", rngs={"dropout": dropout_rng})
  similarity = out["logit_scale"] * out["image_emb"] @ out["text_emb"].T
  text_for_image, image_for_text, image_ok, text_ok = sample_hard_negatives(
      similarity, negatives_rng, _positive_mask(batch), random_negatives)
  images, texts, valid = itm_pairs(out["image_tokens"], out["text_tokens"], out["text_valid"],
                                   text_for_image, image_for_text)
  logits = apply_fn(variables, images, texts, valid, train=train, method="match",
                    rngs={"dropout": fusion_rng})
  size = similarity.shape[0]
  momentum = {}
  if ema_params is not None:
    m = apply_fn({"params": jax.lax.stop_gradient(ema_params)}, batch["image"], batch["text"],
                 batch.get("text_mask"), train=train, method="encode",
                 rngs={"dropout": dropout_rng})
    momentum = {"image_emb_momentum": m["image_emb"], "text_emb_momentum": m["text_emb"]}
  targets = jnp.concatenate([jnp.ones((size,), jnp.int32), jnp.zeros((2 * size,), jnp.int32)])
  mask = jnp.concatenate([jnp.ones((size,), bool), image_ok, text_ok]).astype(jnp.float32)
  return {"image_emb": out["image_emb"], "text_emb": out["text_emb"],
          "logit_scale": out["logit_scale"], "logits": logits, "targets": targets, "mask": mask,
          **momentum}


TASK = Task(name="matching", forward=forward, batch_keys=("image", "text"),
            default_evals={"eval": {"type": "matching", "prefix": "eval/"}})
