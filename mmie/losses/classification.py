"""Cross-entropy for classification, seq2seq and language modelling, with padding masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]


def cross_entropy(logits: Array, targets: Array, *, mask: Array | None = None,
                  label_smoothing: float | Array = 0.0) -> tuple[Array, Metrics]:
  """Token- or example-level softmax cross-entropy, averaged over unmasked positions.

  ``logits`` is ``[..., classes]``, ``targets`` integer ``[...]``, ``mask`` (1 = counts,
  0 = padding) broadcastable to ``targets``. With label smoothing e (Szegedy et al. 2016) the
  target is ``(1 - e) onehot + e / classes``. Metrics: the unsmoothed ``nll`` and top-1
  ``accuracy`` over the same positions, and ``num_targets``.
  """
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f"cross_entropy: logits {tuple(logits.shape)} must be targets' shape "
                     f"{tuple(targets.shape)} plus a classes axis.")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise TypeError(f"cross_entropy: targets must be integer class ids, got {targets.dtype}.")
  log_p = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
  nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
  per_target = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
  weight = jnp.ones(targets.shape, log_p.dtype) if mask is None else jnp.broadcast_to(
      mask, targets.shape).astype(log_p.dtype)
  count = jnp.sum(weight)
  denom = jnp.maximum(count, 1.0)
  loss = jnp.sum(per_target * weight) / denom
  correct = (jnp.argmax(logits, -1) == targets).astype(log_p.dtype)
  return loss, {"loss": loss, "nll": jnp.sum(nll * weight) / denom,
                "accuracy": jnp.sum(correct * weight) / denom, "num_targets": count}


def soft_cross_entropy(logits: Array, soft_targets: Array, *,
                       label_smoothing: float | Array = 0.0) -> tuple[Array, Metrics]:
  """Cross-entropy against a target distribution (mixup / CutMix), averaged over examples.

  ``logits`` and ``soft_targets`` are ``[..., classes]``; each row of ``soft_targets`` sums
  to 1. Label smoothing e mixes the targets with the uniform distribution first,
  ``(1 - e) q + e / classes`` (timm's ``mixup_target``). Metrics: ``accuracy`` of the argmax
  against the targets' argmax (the larger-weight label of a mixed pair), and the unsmoothed
  ``nll``.
  """
  if logits.shape != soft_targets.shape:
    raise ValueError(f"soft_cross_entropy: logits {tuple(logits.shape)} and soft_targets "
                     f"{tuple(soft_targets.shape)} must have one shape [..., classes].")
  log_p = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
  q = soft_targets.astype(log_p.dtype)
  smoothed = (1.0 - label_smoothing) * q + label_smoothing / logits.shape[-1]
  loss = jnp.mean(-jnp.sum(smoothed * log_p, axis=-1))
  nll = jnp.mean(-jnp.sum(q * log_p, axis=-1))
  correct = (jnp.argmax(logits, -1) == jnp.argmax(q, -1)).astype(log_p.dtype)
  return loss, {"loss": loss, "nll": nll, "accuracy": jnp.mean(correct)}
