"""Contrastive heads: CLIP, SigLIP, NT-Xent, DCL/DCLW and SupCon on one similarity engine.

Each head is a pure function returning ``(loss, metrics)``. Beyond the paper's arguments
they take (all optional, all documented in docs/losses.md):

* ``negatives``: ``{input name: Candidates}``, candidates beyond the batch that the stateful
  transforms write: momentum-encoder ``keys`` and memory-``queue`` entries;
* options set in the head's call-string, one way each: ``hard_negatives`` (negative
  re-weighting, ``"clip(hard_negatives={'beta': 0.5})"``), ``block_size`` (rows computed in
  blocks, so the B x B logits never live at once) and ``axis_name`` (negatives gathered from
  every device of a mesh axis, ``"clip(axis_name='data')"``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmie.losses import distributed as dist
from mmie.losses.pairwise import (Candidates, HardNegatives, Ids, check_negatives,
                                  info_nce_rows, sigmoid_rows, symmetric_info_nce_rows)

Array = jax.Array
Metrics = dict[str, Array]


def _check_pair(a: Array, b: Array, head: str) -> None:
  """Pairs must be ``[batch, dim]`` of equal shape; say which shapes were given."""
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"{head}: expected two [batch, dim] arrays of the same shape, got "
                     f"{tuple(a.shape)} and {tuple(b.shape)}.")


def _l2_normalize(x: Array) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _with_queue(cands: Array, ids: Ids, ok: Array, queue: Array | None, valid: Array | None
                ) -> tuple[Array, Ids, Array]:
  """Appends queue entries as pure negatives (instance and label -1 never match an anchor)."""
  if queue is None:
    return cands, ids, ok
  k = queue.shape[0]
  valid = jnp.ones(k, bool) if valid is None else valid
  neg_ids = jnp.full(k, -1, jnp.int32)
  return (jnp.concatenate([cands, queue.astype(cands.dtype)]),
          Ids(jnp.concatenate([ids.instance, neg_ids]), jnp.concatenate([ids.label, neg_ids])),
          jnp.concatenate([ok, valid]))


def _present(**kwargs):
  return {k: v for k, v in kwargs.items() if v is not None}


Negatives = dict[str, Candidates] | None


def _unpack(negatives: Negatives, inputs: tuple[str, str], head: str) -> dict[str, Array | None]:
  """``{X_keys, X_queue, X_queue_valid}`` for each embedding input X, None where absent."""
  out = {}
  for name, c in check_negatives(negatives, inputs, head).items():
    out.update({f"{name}_keys": c.keys, f"{name}_queue": c.queue,
                f"{name}_queue_valid": c.queue_valid})
  return out


def clip(image_emb: Array, text_emb: Array, *, logit_scale: Array | float,
         label_smoothing: float = 0.0, negatives: Negatives = None,
         hard_negatives: HardNegatives | None = None, block_size: int | None = None,
         axis_name: dist.AxisName = None) -> tuple[Array, Metrics]:
  """Symmetric InfoNCE of CLIP (Radford et al. 2021): matched pairs on the diagonal.

  ``image_emb`` and ``text_emb`` are ``[batch, dim]`` and used as given (the task
  L2-normalises them); ``logit_scale`` multiplies the similarities (1/temperature). The loss
  is the mean of the image->text and text->image cross-entropies; ``label_smoothing`` mixes a
  uniform target over all candidates into each.
  """
  _check_pair(image_emb, text_emb, "clip")
  extra = _unpack(negatives, ("image_emb", "text_emb"), "clip")
  image_emb_keys, text_emb_keys = extra["image_emb_keys"], extra["text_emb_keys"]

  def local(axis, image_emb, text_emb, logit_scale, image_emb_keys=None, text_emb_keys=None,
            image_emb_queue=None, image_emb_queue_valid=None, text_emb_queue=None,
            text_emb_queue_valid=None):
    n = image_emb.shape[0]
    anchor_ids = Ids(jnp.full(n, -2, jnp.int32), dist.global_index(n, axis))

    def direction(anchors, cands, queue, valid):
      cands = dist.gather(cands, axis)
      ids = Ids(jnp.full(cands.shape[0], -3, jnp.int32), jnp.arange(cands.shape[0]))
      cands, ids, ok = _with_queue(cands, ids, jnp.ones(cands.shape[0], bool), queue, valid)
      return info_nce_rows(anchors, anchor_ids, cands, ids, scale=logit_scale,
                           candidate_valid=ok, label_smoothing=label_smoothing,
                           hard=hard_negatives, block_size=block_size)

    plain = (axis is None and hard_negatives is None and image_emb_keys is None
             and text_emb_keys is None and image_emb_queue is None and text_emb_queue is None)
    if plain:  # t2i is i2t's transpose: one pass over one logit matrix gives both.
      labels = jnp.arange(n)
      i2t, t2i = symmetric_info_nce_rows(image_emb, labels, text_emb, labels,
                                         scale=logit_scale, label_smoothing=label_smoothing,
                                         block_size=block_size)
    else:
      text_keys = text_emb if text_emb_keys is None else text_emb_keys
      image_keys = image_emb if image_emb_keys is None else image_emb_keys
      i2t = direction(image_emb, text_keys, text_emb_queue, text_emb_queue_valid)
      t2i = direction(text_emb, image_keys, image_emb_queue, image_emb_queue_valid)
    i2t_loss, t2i_loss = dist.mean(i2t.loss, axis), dist.mean(t2i.loss, axis)
    loss = 0.5 * (i2t_loss + t2i_loss)
    return loss, {"loss": loss, "i2t_loss": i2t_loss, "t2i_loss": t2i_loss,
                  "i2t_accuracy": dist.mean(i2t.correct, axis),
                  "t2i_accuracy": dist.mean(t2i.correct, axis),
                  "logit_scale": jnp.asarray(logit_scale, loss.dtype)}

  return dist.run(
      local, axis_name,
      sharded=dict(image_emb=image_emb, text_emb=text_emb, image_emb_keys=image_emb_keys,
                   text_emb_keys=text_emb_keys),
      replicated=_present(logit_scale=jnp.asarray(logit_scale),
                          **{k: v for k, v in extra.items() if "_queue" in k}))


def siglip(image_emb: Array, text_emb: Array, *, logit_scale: Array | float,
           logit_bias: Array | float, block_size: int | None = None,
           axis_name: dist.AxisName = None) -> tuple[Array, Metrics]:
  """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023).

  ``-1/B sum_ij log sigmoid(z_ij (logit_scale * x_i.y_j + logit_bias))`` with z = +1 on the
  diagonal and -1 elsewhere, normalised by the (global) batch size as in the paper.
  """
  _check_pair(image_emb, text_emb, "siglip")

  def local(axis, image_emb, text_emb, logit_scale, logit_bias):
    n = image_emb.shape[0]
    texts = dist.gather(text_emb, axis)
    stats = sigmoid_rows(image_emb, dist.global_index(n, axis), texts,
                         jnp.arange(texts.shape[0]), scale=logit_scale, bias=logit_bias,
                         block_size=block_size)
    loss = dist.total(stats.loss, axis) / texts.shape[0]
    col_pos, col_neg = stats.column_pos, stats.column_neg
    if axis is not None:
      col_pos, col_neg = jax.lax.pmax(col_pos, axis), jax.lax.pmax(col_neg, axis)
    return loss, {"loss": loss, "i2t_accuracy": dist.mean(stats.correct, axis),
                  "t2i_accuracy": jnp.mean((col_pos > col_neg).astype(loss.dtype)),
                  "logit_scale": jnp.asarray(logit_scale, loss.dtype),
                  "logit_bias": jnp.asarray(logit_bias, loss.dtype)}

  return dist.run(local, axis_name, sharded=dict(image_emb=image_emb, text_emb=text_emb),
                  replicated=dict(logit_scale=jnp.asarray(logit_scale),
                                  logit_bias=jnp.asarray(logit_bias)))


def _two_view(z_a: Array, z_b: Array, temperature: Array | float, *, decoupled: bool,
              sigma: float | None, hard_negatives: HardNegatives | None,
              block_size: int | None, axis_name: dist.AxisName, head: str,
              negatives: Negatives) -> tuple[Array, Metrics]:
  """2N anchors (both views) against 2N candidates: the partner view is the positive."""
  _check_pair(z_a, z_b, head)
  extra = _unpack(negatives, ("z_a", "z_b"), head)
  z_a_keys, z_b_keys = extra["z_a_keys"], extra["z_b_keys"]
  queues = {k: v for k, v in extra.items() if "_queue" in k}

  def local(axis, z_a, z_b, temperature, z_a_keys=None, z_b_keys=None, z_a_queue=None,
            z_a_queue_valid=None, z_b_queue=None, z_b_queue_valid=None):
    key_a = _l2_normalize(z_a if z_a_keys is None else z_a_keys)
    key_b = _l2_normalize(z_b if z_b_keys is None else z_b_keys)
    z_a, z_b = _l2_normalize(z_a), _l2_normalize(z_b)
    n = z_a.shape[0]
    g = dist.global_index(n, axis)
    anchors = jnp.concatenate([z_a, z_b])
    anchor_ids = Ids(jnp.concatenate([2 * g, 2 * g + 1]), jnp.concatenate([g, g]))
    cands = jnp.concatenate([dist.gather(key_a, axis), dist.gather(key_b, axis)])
    big = jnp.arange(cands.shape[0] // 2)
    ids = Ids(jnp.concatenate([2 * big, 2 * big + 1]), jnp.concatenate([big, big]))
    ok = jnp.ones(cands.shape[0], bool)
    for queue, valid in ((z_a_queue, z_a_queue_valid), (z_b_queue, z_b_queue_valid)):
      if queue is not None:
        cands, ids, ok = _with_queue(cands, ids, ok, _l2_normalize(queue), valid)
    weight = None
    if sigma is not None:  # DCLW: von Mises-Fisher weight of each positive pair
      pos_cos = dist.gather(jnp.sum(z_a * z_b, axis=-1), axis)
      w = 2.0 - pos_cos.shape[0] * jax.nn.softmax(pos_cos / sigma)
      weight = jnp.concatenate([w[g], w[g]])
    rows = info_nce_rows(anchors, anchor_ids, cands, ids, scale=1.0 / temperature,
                         candidate_valid=ok, positive_weight=weight, decoupled=decoupled,
                         hard=hard_negatives, block_size=block_size)
    loss = dist.mean(rows.loss, axis)
    return loss, {"loss": loss, "accuracy": dist.mean(rows.correct, axis),
                  "temperature": jnp.asarray(temperature, loss.dtype)}

  return dist.run(local, axis_name,
                  sharded=dict(z_a=z_a, z_b=z_b, z_a_keys=z_a_keys, z_b_keys=z_b_keys),
                  replicated=_present(temperature=jnp.asarray(temperature), **queues))


def ntxent(z_a: Array, z_b: Array, *, temperature: Array | float = 0.1,
           negatives: Negatives = None, hard_negatives: HardNegatives | None = None,
           block_size: int | None = None, axis_name: dist.AxisName = None) -> tuple[Array, Metrics]:
  """SimCLR's NT-Xent (Chen et al. 2020): cosine similarity over 2N views, 2N-2 negatives.

  Mean over the 2N anchors of ``-log e^{s_ij/t} / sum_{k != i} e^{s_ik/t}``.
  """
  extras = dict(locals())
  return _two_view(decoupled=False, sigma=None, head="ntxent", **extras)


def dcl(z_a: Array, z_b: Array, *, temperature: Array | float = 0.1,
        negatives: Negatives = None, hard_negatives: HardNegatives | None = None,
        block_size: int | None = None, axis_name: dist.AxisName = None) -> tuple[Array, Metrics]:
  """Decoupled contrastive loss (Yeh et al. 2022): the positive leaves the denominator.

  Mean over the 2N anchors of ``-s_ij/t + log sum_{k not in {i, j}} e^{s_ik/t}`` (the
  reference code sums the two view directions; this is their mean, like NT-Xent).
  """
  extras = dict(locals())
  return _two_view(decoupled=True, sigma=None, head="dcl", **extras)


def dclw(z_a: Array, z_b: Array, *, temperature: Array | float = 0.1, sigma: float = 0.5,
         negatives: Negatives = None, hard_negatives: HardNegatives | None = None,
         block_size: int | None = None, axis_name: dist.AxisName = None) -> tuple[Array, Metrics]:
  """DCL with von Mises-Fisher weighting of the positive term (Yeh et al. 2022).

  The positive term of pair i is scaled by ``2 - N softmax_i(s_ii / sigma)`` over the batch.
  """
  extras = dict(locals())
  return _two_view(decoupled=True, head="dclw", **extras)


def supcon(features: Array, labels: Array, *, temperature: Array | float = 0.1,
           hard_negatives: HardNegatives | None = None, block_size: int | None = None,
           axis_name: dist.AxisName = None) -> tuple[Array, Metrics]:
  """Supervised contrastive loss L_out (Khosla et al. 2020), every view an anchor.

  ``features`` is ``[batch, views, dim]``, used as given (the paper's projection normalises
  it); ``labels`` is ``[batch]`` ints. Per anchor: ``log sum_{a != i} e^{s_ia/t}`` minus the
  mean positive logit; anchors without a positive contribute 0, as in the reference code.
  """
  if features.ndim != 3 or labels.shape != features.shape[:1]:
    raise ValueError(f"supcon: expected features [batch, views, dim] and labels [batch], got "
                     f"{tuple(features.shape)} and {tuple(labels.shape)}.")

  def local(axis, features, labels, temperature):
    n, v, _ = features.shape
    views = jnp.arange(v)
    g = dist.global_index(n, axis)
    anchor_ids = Ids((g[:, None] * v + views).reshape(-1), jnp.repeat(labels, v))
    every = dist.gather(features, axis)
    big = jnp.arange(every.shape[0])
    ids = Ids((big[:, None] * v + views).reshape(-1),
              jnp.repeat(dist.gather(labels, axis), v))
    rows = info_nce_rows(features.reshape(n * v, -1), anchor_ids,
                         every.reshape(-1, every.shape[-1]), ids, scale=1.0 / temperature,
                         hard=hard_negatives, block_size=block_size)
    has_positive = rows.num_positives > 0
    loss = dist.mean(jnp.where(has_positive, rows.loss, 0.0), axis)
    accuracy = (dist.total(rows.correct & has_positive, axis)
                / jnp.maximum(dist.total(has_positive, axis), 1)).astype(loss.dtype)
    return loss, {"loss": loss, "accuracy": accuracy,
                  "temperature": jnp.asarray(temperature, loss.dtype)}

  return dist.run(local, axis_name, sharded=dict(features=features, labels=labels),
                  replicated=dict(temperature=jnp.asarray(temperature)))
