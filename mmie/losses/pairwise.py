"""The one similarity engine behind every contrastive head: row statistics of ``a @ c.T``.

Every contrastive loss here is a mean over *anchor rows* of a function of that row's logits
against all *candidates*. Which candidates are positives, which are excluded (an anchor's own
view, unfilled queue slots) and which are negatives is decided from small id vectors, never
from a materialised B x B mask. That makes three execution forms the same code:

- dense: one block holding every row;
- chunked: rows in blocks of ``block_size`` under `lax.scan` with a rematerialised body, so
  at most ``block_size x num_candidates`` logits exist at once, in the forward and backward
  pass, and every block still sees complete rows (exact log-sum-exp, exact top-k);
- global: local anchor rows against candidates gathered over a mesh axis (see distributed.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

HARD_NEGATIVE_MODES = ("importance", "top_fraction", "semi_hard")


class HardNegatives(NamedTuple):
  """Static settings of negative re-weighting: a contrastive head's ``hard_negatives`` option.

  importance: Robinson et al. 2021, weights exp(beta * s) / mean(exp(beta * s)) over the
    negatives, optionally debiased with class prior ``tau_plus``.
  top_fraction: keep the hardest ``fraction`` of candidates per anchor (the prototype's mode).
  semi_hard: keep negatives with s_pos - margin < cos < s_pos (FaceNet's semi-hard band,
    margin in cosine units); rows with none fall back to all negatives.
  """

  mode: str = "importance"
  beta: float = 1.0
  tau_plus: float = 0.0
  fraction: float = 0.1
  margin: float = 0.2


HARD_NEGATIVE_FIELDS = ("mode", "beta", "tau_plus", "fraction", "margin")


def hard_negatives_option(value: Any, where: str = "hard_negatives") -> HardNegatives | None:
  """A head's ``hard_negatives`` option from a config: None, a mode name, a dict of
  `HardNegatives` fields (``{'mode': 'importance', 'beta': 0.5}``) or the struct itself;
  every field checked. ``beta`` >= 0 concentrates the importance weights on similar negatives
  (0 recovers the plain loss); ``tau_plus`` in [0, 1) is the class prior of the debiased
  estimator; ``fraction`` in (0, 1] the share of candidates kept; ``margin`` >= 0 the
  semi-hard band width in cosine units."""
  if value is None or isinstance(value, HardNegatives):
    options = value
  elif isinstance(value, str):
    options = HardNegatives(mode=value)
  elif isinstance(value, Mapping):
    unknown = sorted(set(value) - set(HARD_NEGATIVE_FIELDS))
    if unknown:
      raise ValueError(f"{where}: unknown field(s) {unknown}; fields are {HARD_NEGATIVE_FIELDS}.")
    options = HardNegatives(**value)
  else:
    raise TypeError(f"{where} must be a mode name or a dict of {HARD_NEGATIVE_FIELDS}, got "
                    f"{value!r}.")
  if options is None:
    return None
  if options.mode not in HARD_NEGATIVE_MODES:
    raise ValueError(f"{where}: unknown mode {options.mode!r}; choose one of "
                     f"{HARD_NEGATIVE_MODES}.")
  checks = [("beta", options.beta >= 0, ">= 0"), ("tau_plus", 0 <= options.tau_plus < 1,
                                                   "in [0, 1)"),
            ("fraction", 0 < options.fraction <= 1, "in (0, 1]"),
            ("margin", options.margin >= 0, ">= 0")]
  for name, ok, allowed in checks:
    if not ok:
      raise ValueError(f"{where}: {name}={getattr(options, name)!r} must be {allowed}.")
  return HardNegatives(options.mode, *(float(getattr(options, f))
                                       for f in HARD_NEGATIVE_FIELDS[1:]))


class Candidates(NamedTuple):
  """Candidates beyond the batch for one embedding input ``X`` (``image_emb``, ``z_a``, ...).

  Written by the stateful transforms, read by the contrastive heads through their one
  ``negatives`` argument, ``{input name: Candidates}``: ``keys`` [B, D] replace ``X`` on the
  candidate side (a momentum encoder's outputs, `momentum_keys`); ``queue`` [K, D] and
  ``queue_valid`` [K] are extra negatives (past keys, `memory_queue`).
  """

  keys: Array | None = None
  queue: Array | None = None
  queue_valid: Array | None = None


def check_negatives(negatives: Mapping[str, Candidates] | None, inputs: tuple[str, ...],
                    head: str) -> dict[str, Candidates]:
  """``negatives`` with one entry per embedding input of the head (absent -> empty)."""
  negatives = dict(negatives or {})
  unknown = sorted(set(negatives) - set(inputs))
  if unknown:
    raise ValueError(f"{head}: negatives for {unknown}, but its embedding inputs are "
                     f"{list(inputs)}; set the transform's inputs= to those names.")
  return {name: negatives.get(name, Candidates()) for name in inputs}


class Ids(NamedTuple):
  """Per-row identity: same ``instance`` = same view (excluded); same ``label`` = positive."""

  instance: Array
  label: Array


class RowStats(NamedTuple):
  loss: Array           # [rows] per-anchor loss
  correct: Array        # [rows] top-1 over allowed candidates is a positive
  num_positives: Array  # [rows] positives among the allowed candidates


def masked_lse(x: Array, mask: Array, axis: int = -1) -> Array:
  """log-sum-exp over ``mask``; -inf (with zero gradient, never NaN) where the mask is empty."""
  m = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  total = jnp.sum(jnp.where(mask, jnp.exp(x - m), 0.0), axis=axis)
  nonempty = total > 0
  out = jnp.squeeze(m, axis) + jnp.log(jnp.where(nonempty, total, 1.0))
  return jnp.where(nonempty, out, -jnp.inf)


def _negative_log_mass(s: Array, neg: Array, pos_logit: Array, scale: Array,
                       hard: HardNegatives | None) -> Array:
  """log of the (re-weighted) negative term of the InfoNCE denominator, per row."""
  if hard is None:
    return masked_lse(s, neg)
  if hard.mode == "importance":
    n_neg = jnp.sum(neg, axis=-1).astype(s.dtype)
    log_n = jnp.log(jnp.maximum(n_neg, 1.0))
    reweighted = log_n + masked_lse((1.0 + hard.beta) * s, neg) - masked_lse(hard.beta * s, neg)
    if hard.tau_plus == 0.0:
      return reweighted
    # Debiased estimator: (reweighted - tau+ * N * e^pos) / (1 - tau+), floored at N * e^{-scale}.
    inner = 1.0 - hard.tau_plus * n_neg * jnp.exp(pos_logit - reweighted)
    debiased = reweighted + jnp.log(jnp.maximum(inner, 1e-30)) - math.log1p(-hard.tau_plus)
    return jnp.maximum(debiased, log_n - scale)
  if hard.mode == "top_fraction":
    k = max(1, math.ceil(hard.fraction * s.shape[-1]))
    kth = jax.lax.top_k(jnp.where(neg, s, -jnp.inf), k)[0][..., -1:]
    return masked_lse(s, neg & (s >= jax.lax.stop_gradient(kth)))
  # semi_hard: negatives inside the band (pos - margin, pos) in cosine units.
  pos = pos_logit[..., None]
  band = neg & (s < pos) & (s > pos - hard.margin * scale)
  band = jnp.where(jnp.any(band, axis=-1, keepdims=True), band, neg)
  return masked_lse(s, band)


def _is_zero(x: float | Array) -> bool:
  """True only for a static (python) zero, so a traced smoothing value is always honoured."""
  return isinstance(x, (int, float)) and x == 0


def _info_nce_block(a: Array, a_ids: Ids, weight: Array, c: Array, c_ids: Ids, c_valid: Array,
                    scale: Array, *, decoupled: bool, label_smoothing: float | Array,
                    hard: HardNegatives | None) -> RowStats:
  """InfoNCE rows for one block of anchors against all candidates."""
  s = scale * (a @ c.T)
  allowed = c_valid[None, :] & (a_ids.instance[:, None] != c_ids.instance[None, :])
  pos = allowed & (a_ids.label[:, None] == c_ids.label[None, :])
  return _info_nce_from_logits(s, allowed, pos, weight, scale, decoupled=decoupled,
                               label_smoothing=label_smoothing, hard=hard)


def _info_nce_from_logits(s: Array, allowed: Array, pos: Array, weight: Array, scale: Array, *,
                          decoupled: bool, label_smoothing: float | Array,
                          hard: HardNegatives | None) -> RowStats:
  """InfoNCE rows from their logits ``s`` and the allowed and positive candidates."""
  neg = allowed & ~pos
  count = jnp.sum(pos, axis=-1)
  pos_mean = jnp.sum(jnp.where(pos, s, 0.0), axis=-1) / jnp.maximum(count, 1).astype(s.dtype)
  if hard is None and not decoupled:  # plain softmax: one log-sum-exp over the allowed set
    log_denominator = masked_lse(s, allowed)
  else:
    neg_log = _negative_log_mass(s, neg, pos_mean, scale, hard)
    log_denominator = neg_log if decoupled else jnp.logaddexp(masked_lse(s, pos), neg_log)
  target = pos_mean
  if not _is_zero(label_smoothing):
    n_allowed = jnp.maximum(jnp.sum(allowed, axis=-1), 1).astype(s.dtype)
    allowed_mean = jnp.sum(jnp.where(allowed, s, 0.0), axis=-1) / n_allowed
    target = (1.0 - label_smoothing) * pos_mean + label_smoothing * allowed_mean
  s_stop = jax.lax.stop_gradient(s)
  best_pos = jnp.max(jnp.where(pos, s_stop, -jnp.inf), axis=-1)
  best_neg = jnp.max(jnp.where(neg, s_stop, -jnp.inf), axis=-1)
  return RowStats(log_denominator - weight * target, best_pos > best_neg, count)


def info_nce_rows(anchors: Array, anchor_ids: Ids, candidates: Array, candidate_ids: Ids, *,
                  scale: Array, candidate_valid: Array | None = None,
                  positive_weight: Array | None = None, decoupled: bool = False,
                  label_smoothing: float | Array = 0.0, hard: HardNegatives | None = None,
                  block_size: int | None = None) -> RowStats:
  """Per-anchor InfoNCE: ``log sum_{allowed} w e^s - w_pos * mean_{positives} s``.

  ``decoupled`` drops positives from the denominator (DCL). ``positive_weight`` ([rows])
  scales the positive term (DCLW). ``label_smoothing`` mixes the uniform target over allowed
  candidates into the positive target (CLIP's smoothed cross-entropy).
  """
  if not _is_zero(label_smoothing) and (decoupled or hard is not None):
    raise ValueError("label_smoothing is defined for the plain softmax cross-entropy only; "
                     "it cannot be combined with decoupled or hard-negative denominators.")
  if candidate_valid is None:
    candidate_valid = jnp.ones(candidates.shape[0], bool)
  if positive_weight is None:
    positive_weight = jnp.ones(anchors.shape[0], anchors.dtype)

  def block(rows):
    a, inst, lab, w = rows
    return _info_nce_block(a, Ids(inst, lab), w, candidates, candidate_ids, candidate_valid,
                           scale, decoupled=decoupled, label_smoothing=label_smoothing, hard=hard)

  return map_row_blocks(block, (anchors, anchor_ids.instance, anchor_ids.label, positive_weight),
                        block_size)


class _ColumnPartials(NamedTuple):
  """One block's contribution to each candidate's column: what sums (or maxes) over blocks."""

  lse: Array        # log-sum-exp of the column's logits over the block's rows
  pos_sum: Array    # sum of its positive logits
  pos_count: Array  # number of its positives
  total: Array      # sum of all its logits (the label-smoothing target)
  best_pos: Array   # largest positive logit (no gradient): top-1 accuracy
  best_neg: Array   # largest negative logit (no gradient)


def symmetric_info_nce_rows(a: Array, a_label: Array, c: Array, c_label: Array, *,
                            scale: Array, label_smoothing: float | Array = 0.0,
                            block_size: int | None = None) -> tuple[RowStats, RowStats]:
  """Both directions of a symmetric InfoNCE (CLIP's) from one pass over ``scale * a @ c.T``.

  Every pair is allowed and ``a_label == c_label`` marks the positives. The rows give the
  ``a -> c`` InfoNCE as :func:`info_nce_rows` would; the columns give ``c -> a``, from per-block
  column partials combined after the blocks (log-sum-exp of log-sum-exps, sums, maxima). One
  logit matrix serves both directions, so the forward pass makes one ``a @ c.T`` instead of
  two, and a chunked backward recomputes each block once, not once per direction.
  """
  n = a.shape[0]

  def block(rows):
    x, lab, real = rows  # `real` is False on the padding rows of the last block
    s = scale * (x @ c.T)
    pos = lab[:, None] == c_label[None, :]
    everyone = jnp.ones_like(pos)
    row = _info_nce_from_logits(s, everyone, pos, jnp.ones((), s.dtype), scale,
                                decoupled=False, label_smoothing=label_smoothing, hard=None)
    in_block = real[:, None]
    col_pos = pos & in_block
    s_stop = jax.lax.stop_gradient(s)
    return row, _ColumnPartials(
        masked_lse(s, in_block, axis=0), jnp.sum(jnp.where(col_pos, s, 0.0), axis=0),
        jnp.sum(col_pos, axis=0), jnp.sum(jnp.where(in_block, s, 0.0), axis=0),
        jnp.max(jnp.where(col_pos, s_stop, -jnp.inf), axis=0),
        jnp.max(jnp.where(in_block & ~pos, s_stop, -jnp.inf), axis=0))

  def combine(parts: _ColumnPartials) -> _ColumnPartials:  # [blocks, columns] -> [columns]
    return _ColumnPartials(jax.nn.logsumexp(parts.lse, axis=0), jnp.sum(parts.pos_sum, 0),
                           jnp.sum(parts.pos_count, 0), jnp.sum(parts.total, 0),
                           jnp.max(parts.best_pos, 0), jnp.max(parts.best_neg, 0))

  rows, cols = map_row_blocks(block, (a, a_label, jnp.ones(n, bool)), block_size,
                              reduce_columns=combine)
  dtype = cols.total.dtype
  target = cols.pos_sum / jnp.maximum(cols.pos_count, 1).astype(dtype)
  if not _is_zero(label_smoothing):
    target = (1.0 - label_smoothing) * target + label_smoothing * cols.total / n
  return rows, RowStats(cols.lse - target, cols.best_pos > cols.best_neg, cols.pos_count)


class SigmoidStats(NamedTuple):
  loss: Array          # [rows] sum over candidates of -log sigmoid(z * logit)
  correct: Array       # [rows] row top-1 is the positive
  column_pos: Array    # [cands] max positive logit seen in the column
  column_neg: Array    # [cands] max negative logit seen in the column


def sigmoid_rows(anchors: Array, anchor_label: Array, candidates: Array, candidate_label: Array,
                 *, scale: Array, bias: Array, block_size: int | None = None) -> SigmoidStats:
  """SigLIP rows: ``-sum_j log sigmoid(z_ij (scale * a_i.c_j + bias))``, z = +1 on positives.

  Also returns the column maxima of positive and negative logits so the caller gets the
  text->image top-1 without a second pass over the candidates.
  """

  def block(rows):
    a, lab, real = rows  # `real` is False on the padding rows of the last block
    logits = scale * (a @ c_t) + bias
    pos = lab[:, None] == candidate_label[None, :]
    loss = -jnp.sum(jax.nn.log_sigmoid(jnp.where(pos, logits, -logits)), axis=-1)
    correct = (jnp.max(jnp.where(pos, logits, -jnp.inf), -1)
               > jnp.max(jnp.where(pos, -jnp.inf, logits), -1))
    stop = jnp.where(real[:, None], jax.lax.stop_gradient(logits), -jnp.inf)
    return (loss, correct), (jnp.max(jnp.where(pos, stop, -jnp.inf), 0),
                             jnp.max(jnp.where(pos, -jnp.inf, stop), 0))

  c_t = candidates.T
  (loss, correct), (col_pos, col_neg) = map_row_blocks(
      block, (anchors, anchor_label, jnp.ones(anchors.shape[0], bool)), block_size,
      reduce_columns=lambda maxima: jax.tree.map(lambda m: jnp.max(m, axis=0), maxima))
  return SigmoidStats(loss, correct, col_pos, col_neg)


def map_row_blocks(block: Callable, rows: tuple[Array, ...], block_size: int | None, *,
                   reduce_columns: Callable | None = None):
  """Applies ``block`` to all rows at once, or to blocks of rows under a rematerialised scan.

  ``block`` returns per-row outputs, or, with ``reduce_columns``, ``(per_row, per_column)``:
  the per-column outputs of every block are stacked on a leading axis and
  ``reduce_columns`` combines them (the dense form is one block). Rows are padded to a
  multiple of ``block_size``; padded rows are sliced off, so they add neither value nor
  gradient to the rows (a block that emits per-column outputs masks them itself).
  """
  n = rows[0].shape[0]
  if block_size is None or block_size >= n:
    out = block(rows)
    if reduce_columns is None:
      return out
    per_row, per_col = out
    return per_row, reduce_columns(jax.tree.map(lambda c: c[None], per_col))
  if block_size < 1:
    raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
  nb = -(-n // block_size)
  pad = nb * block_size - n
  blocked = tuple(jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1)).reshape(
      (nb, block_size) + r.shape[1:]) for r in rows)
  body_fn = jax.checkpoint(block)

  _, out = jax.lax.scan(lambda carry, x: (carry, body_fn(x)), None, blocked)
  if reduce_columns is not None:  # per-block column outputs are [blocks, columns]: small
    per_row, per_col = out
    return _unblock(per_row, n), reduce_columns(per_col)
  return _unblock(out, n)


def _unblock(tree, n: int):
  return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:n], tree)
