"""PPO on a language model against a reward model (RLHF), its rollouts sampled inside the
jitted train step.

Batch: the ``prompts`` data view, ``prompt`` int32 [B, P] (BOS + prompt tokens, right-padded)
and ``prompt_length`` [B]. Model: ``ppo_policy`` (mmie/models/ppo_policy.py): the policy with
its value head, the frozen reference LM and the frozen reward model.

The forward pass runs no model: it returns one input, ``rollout``, an
``alignment.RolloutSource`` of two closures over this step's parameters, and the loss's
``ppo_rollout`` transform decides when to call them (every step, or every ``epochs`` steps
with the rollout kept in the loss state between):

* ``collect()`` (no gradient; Ouyang et al. 2022, Ziegler et al. 2019): (a) sample
  ``response_length`` tokens from the current policy after each row's own prompt, stopping at
  EOS; (b) the reward model's score of the whole sequence at its last token, minus
  ``kl_coef`` * (log pi_old - log pi_ref) on every generated token; (c) the value head's
  values, GAE (``gamma``, ``lam``) -> advantages (whitened over the batch) and returns.
* ``evaluate(rollout)``: the live policy's log-probs, values and entropy on the rollout's
  tokens, from which the ``ppo`` head makes the clipped surrogate, the value loss and the
  entropy bonus.

``min_response_length`` bans EOS until a row has sampled that many tokens (TRL's
``min_length``): a reward model that prefers short answers is otherwise won by ending early.
Log-probabilities are of softmax(logits / temperature), the distribution sampled before
top-k / top-p truncation and the EOS ban (as Hugging Face's TRL); the policy runs without dropout, so the ratio
is exactly 1 on a rollout's first step.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmie.config import ConfigError
from mmie.losses import alignment
from mmie.tasks.base import Task
from mmie.tasks.preference import last_token_value

BATCH_KEYS = ("prompt", "prompt_length")


def rollout_targets(tokens: jax.Array, token_mask: jax.Array, log_probs: jax.Array,
                    reference_log_probs: jax.Array, values: jax.Array,
                    reward_scalars: jax.Array, *, kl_coef: float, gamma: float, lam: float,
                    whiten_advantages: bool = True, min_response_length: int = 0) -> dict[str, Any]:
  """A sampled batch made into PPO's experience: shaped rewards, GAE advantages and returns.

  ``tokens`` [B, L] and ``token_mask`` [B, L] (1 on generated tokens); the policy's and the
  reference's ``log_probs`` and the policy's ``values`` [B, L-1] are per target
  ``tokens[:, 1:]`` (computed from ``tokens[:, :-1]``); ``reward_scalars`` [B, L] is the
  reward model on ``tokens``, read at each row's last generated token.
  """
  mask = token_mask[:, 1:]
  score = last_token_value(reward_scalars, token_mask)
  rewards, kl = alignment.kl_shaped_rewards(score, log_probs, reference_log_probs, mask,
                                            kl_coef=kl_coef)
  advantages, returns = alignment.gae(rewards, values, gamma=gamma, lam=lam, mask=mask)
  if whiten_advantages:
    advantages = alignment.whiten(advantages, mask)
  lengths = jnp.sum(mask, axis=1)
  metrics = {"reward": jnp.mean(score),
             "kl_per_token": jnp.sum(kl) / jnp.maximum(jnp.sum(lengths), 1.0),
             "kl_per_sequence": jnp.mean(jnp.sum(kl, axis=1)),
             "response_length": jnp.mean(lengths)}
  return {"tokens": tokens, "mask": mask, "log_probs": log_probs, "values": values,
          "advantages": advantages, "returns": returns, "metrics": metrics}


def policy_terms(logits: jax.Array, targets: jax.Array, temperature: float
                 ) -> tuple[jax.Array, jax.Array]:
  """(log-probs of ``targets``, entropies) [B, T] of softmax(logits / temperature): one
  function for the rollout's and the live pass, so a rollout's first ratio is exactly 1."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  chosen = jnp.take_along_axis(log_p, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return chosen, -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def _check_options(response_length: int, temperature: float, top_k: int, top_p: float,
                   kl_coef: float, gamma: float, lam: float, min_response_length: int) -> None:
  checks = {"response_length": response_length >= 1, "temperature": temperature > 0,
            "min_response_length": 0 <= min_response_length <= response_length,
            "top_k": top_k >= 0, "top_p": 0.0 < top_p <= 1.0, "kl_coef": kl_coef >= 0,
            "gamma": 0.0 <= gamma <= 1.0, "lam": 0.0 <= lam <= 1.0}
  bad = [name for name, ok in checks.items() if not ok]
  if bad:
    raise ValueError(f"task 'ppo': option(s) {bad} out of range: response_length >= 1, "
                     "0 <= min_response_length <= response_length, temperature > 0, top_k >= 0 (0 = off), top_p in (0, 1], kl_coef >= 0, "
                     "gamma and lam in [0, 1].")


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool, ema_params: Any = None, response_length: int = 16,
            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            kl_coef: float = 0.1, gamma: float = 1.0, lam: float = 0.95,
            whiten_advantages: bool = True, min_response_length: int = 0) -> dict[str, Any]:
  """``{"rollout": RolloutSource}`` for the ``ppo_rollout`` transform (module docstring).

  ``rng`` is the sampling key; ``train`` and ``ema_params`` are unused (no dropout in the
  policy, whose log-prob ratio it would perturb; no momentum encoder).
  """
  del train, ema_params
  _check_options(response_length, temperature, top_k, top_p, kl_coef, gamma, lam,
                 min_response_length)
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"task 'ppo' reads prompt batches {list(BATCH_KEYS)}; this batch lacks "
                     f"{missing} (it has {sorted(batch)}). Use a text_records data set with a "
                     "'prompt' field and data.prompt_length.")
  prompt, prompt_length = batch["prompt"], batch["prompt_length"]
  frozen = jax.tree.map(jax.lax.stop_gradient, params)

  def run(p: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    return apply_fn({"params": p}, *args, method=method, **kwargs)

  def collect() -> dict[str, Any]:
    tokens, token_mask = run(frozen, "sample", prompt, prompt_length, rng,
                             response_length=response_length, temperature=temperature,
                             top_k=top_k, top_p=top_p, min_response_length=min_response_length)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    values, logits = run(frozen, "policy_outputs", inputs)
    log_probs = policy_terms(logits, targets, temperature)[0]
    reference = policy_terms(run(frozen, "reference_logits", inputs), targets, temperature)[0]
    return rollout_targets(tokens, token_mask, log_probs, reference, values,
                           run(frozen, "reward_scalars", tokens), kl_coef=kl_coef, gamma=gamma,
                           lam=lam, whiten_advantages=whiten_advantages)

  def evaluate(rollout: Mapping[str, Any]) -> dict[str, jax.Array]:
    tokens = rollout["tokens"]
    values, logits = run(params, "policy_outputs", tokens[:, :-1])
    log_probs, entropy = policy_terms(logits, tokens[:, 1:], temperature)
    return {"log_probs": log_probs, "values": values, "entropy": entropy}

  return {"rollout": alignment.RolloutSource(collect, evaluate)}


def example_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
  """Prompts of ``data.prompt_length`` zeros (BOS-only lengths), for init and AOT compiles."""
  width = config.data.get("prompt_length", None)
  if not width:
    raise ConfigError("task='ppo' needs data.prompt_length (the prompts' width in tokens, BOS "
                      "included); sampled rows are prompt_length + response_length long.")
  return {"prompt": np.zeros((batch_size, width), np.int32),
          "prompt_length": np.ones((batch_size,), np.int32)}


TASK = Task(name="ppo", forward=forward, batch_keys=BATCH_KEYS, example_batch=example_batch,
            init_args=lambda batch: (batch["prompt"],), data_view="prompts")
