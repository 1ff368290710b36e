"""Learning from preferences: a reward model (Bradley-Terry) and DPO, on pairs of responses.

Batch (the ``preference`` data view, one pair per row)::

    chosen, rejected             int32 [B, L]  BOS prompt-tokens response-tokens EOS PAD...
    chosen_mask, rejected_mask   [B, L]        1 exactly on the response tokens and the EOS
    reference_chosen_logp,       float32 [B]   (DPO only) the frozen reference model's summed
    reference_rejected_logp                    response log-probs, precomputed per pair

* ``reward_model`` (model ``reward_model``, ``mmie.models.lm_heads.ScalarHeadLM``): both rows
  in one pass, each row's reward read at its last real token (the response's EOS), into
  ``reward_chosen`` / ``reward_rejected`` for the ``bradley_terry`` head (Ouyang et al. 2022,
  eq. 1), whose ``accuracy`` is the fraction of pairs ranked right.
* ``dpo`` (model ``lm``: the policy is a plain ``DecoderLM``): the policy's summed
  log-probabilities of each response (:func:`response_logps`) beside the batch's reference
  ones, for the ``dpo`` head (Rafailov et al. 2023, eq. 7). The reference is not run in the
  step: its log-probs are data, computed once, so DPO costs one model, not two.

The pure helpers (:func:`token_logps`, :func:`response_logps`, :func:`last_token_value`) are
shared with the pair builder (reference log-probs) and PPO (per-token log-probs, rewards).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmie.tasks.base import Task

PAIR_KEYS = ("chosen", "rejected", "chosen_mask", "rejected_mask")
REFERENCE_KEYS = ("reference_chosen_logp", "reference_rejected_logp")


def token_logps(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target_t | tokens before it): logits [B, T, V] and int targets [B, T] -> [B, T]."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_p, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def response_logps(logits: jax.Array, row: jax.Array, mask: jax.Array) -> jax.Array:
  """A response's summed log-probability [B] under the model whose next-token ``logits``
  [B, L-1, V] were computed from ``row[:, :-1]``: ``sum_t mask[:, 1:] * log p(row[:, 1:])``.

  ``row`` [B, L] is a preference row, ``mask`` [B, L] its response mask (1 on the response
  tokens and EOS); the prompt is conditioned on, never scored.
  """
  if row.ndim != 2 or mask.shape != row.shape or logits.shape[:2] != (row.shape[0],
                                                                         row.shape[1] - 1):
    raise ValueError(f"response_logps: logits [B, L-1, V] for row[:, :-1], row [B, L] and mask"
                     f" [B, L]; got logits {tuple(logits.shape)}, row {tuple(row.shape)}, mask"
                     f" {tuple(mask.shape)}.")
  return jnp.sum(token_logps(logits, row[:, 1:]) * (mask[:, 1:] > 0), axis=-1)


def last_token_index(mask: jax.Array) -> jax.Array:
  """[B, T] mask (1 = a real token) -> int32 [B]: each row's last masked position (0 if none)."""
  positions = jnp.arange(mask.shape[-1], dtype=jnp.int32)
  return jnp.max(jnp.where(mask > 0, positions, 0), axis=-1)


def last_token_value(scalars: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-position scalars [B, T] (``ScalarHeadLM``) read at each row's last masked token: [B].
  With a preference row's response mask that is the EOS, where the reward model has read the
  whole prompt and response."""
  return jnp.take_along_axis(scalars, last_token_index(mask)[:, None], axis=-1)[:, 0]


def _pairs(batch: Mapping[str, jax.Array], task: str) -> tuple[jax.Array, jax.Array, int]:
  """Chosen and rejected rows (and masks) stacked into one [2B, L] batch: one model pass."""
  missing = [k for k in PAIR_KEYS if k not in batch]
  if missing:
    raise ValueError(f"task {task!r} reads preference batches {list(PAIR_KEYS)}; this batch"
                     f" lacks {missing} (it has {sorted(batch)}). Train it on a preference"
                     " data set (data.name='jsonl(...)' with prompt/chosen/rejected fields).")
  rows = jnp.concatenate([batch["chosen"], batch["rejected"]], axis=0)
  masks = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
  return rows, masks, batch["chosen"].shape[0]


def reward_forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array],
                   *, rng: jax.Array, train: bool, ema_params: Any = None
                   ) -> dict[str, jax.Array]:
  """Rewards [B] of the chosen and the rejected rows (``ema_params`` accepted, unused)."""
  del ema_params
  rows, masks, b = _pairs(batch, "reward_model")
  scalars = apply_fn({"params": params}, rows, train=train, rngs={"dropout": rng})
  if scalars.ndim != 2:
    raise ValueError(f"task 'reward_model' needs a model with one scalar per position [B, L]"
                     f" (model.name='reward_model'); it returned shape {scalars.shape}.")
  rewards = last_token_value(scalars, masks)
  return {"reward_chosen": rewards[:b], "reward_rejected": rewards[b:]}


def dpo_forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
                rng: jax.Array, train: bool, ema_params: Any = None) -> dict[str, jax.Array]:
  """The policy's and the reference's summed response log-probs [B], chosen and rejected."""
  del ema_params
  missing = [k for k in REFERENCE_KEYS if k not in batch]
  if missing:
    raise ValueError(f"task 'dpo' needs the reference model's log-probs {list(REFERENCE_KEYS)}"
                     f" in every batch; this one lacks {missing}. Give each preference row"
                     " 'reference_chosen_logp' and 'reference_rejected_logp' (the reference"
                     " LM's response_logps of the pair, from mmie.tasks.preference).")
  rows, masks, b = _pairs(batch, "dpo")
  logits = apply_fn({"params": params}, rows[:, :-1], train=train, rngs={"dropout": rng})
  if logits.ndim != 3:
    raise ValueError(f"task 'dpo' needs a language model's next-token logits [B, L-1, V]"
                     f" (model.name='lm'); it returned shape {logits.shape}.")
  logps = response_logps(logits, rows, masks)
  return {"policy_chosen_logps": logps[:b], "policy_rejected_logps": logps[b:],
          "reference_chosen_logps": batch["reference_chosen_logp"].astype(jnp.float32),
          "reference_rejected_logps": batch["reference_rejected_logp"].astype(jnp.float32)}


def pair_example(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a preference batch, for initialisation and AOT compiles."""
  zeros = lambda: np.zeros((batch_size, config.data.context_length), np.int32)
  return {key: zeros() for key in PAIR_KEYS}


def dpo_example(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  return {**pair_example(config, batch_size),
          **{key: np.zeros((batch_size,), np.float32) for key in REFERENCE_KEYS}}


_EVALS = {"eval": {"type": "preference", "prefix": "eval/"}}
REWARD_TASK = Task(name="reward_model", forward=reward_forward, batch_keys=PAIR_KEYS,
                   example_batch=pair_example, init_args=lambda batch: (batch["chosen"],),
                   data_view="preference", default_evals=_EVALS)
DPO_TASK = Task(name="dpo", forward=dpo_forward, batch_keys=PAIR_KEYS + REFERENCE_KEYS,
                example_batch=dpo_example, init_args=lambda batch: (batch["chosen"][:, :-1],),
                data_view="preference", default_evals=_EVALS)
