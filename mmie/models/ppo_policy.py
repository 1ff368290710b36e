"""PPO's model: the policy (a language model with a value head), its frozen reference copy and
the frozen reward model, as one module with three parameter subtrees.

One module, so the engine's one ``TrainState`` holds all three and one jitted step samples,
scores and updates (the ``ppo`` task, mmie/tasks/ppo.py). The subtrees:

* ``policy``: ``lm_heads.ScalarHeadLM``: the LM being tuned, its ``scalar_head`` the value
  head (one value per position, each seeing the tokens up to it);
* ``reference``: ``seq2seq.DecoderLM`` of the policy's architecture, a frozen copy of the LM
  the policy started from (the KL penalty's anchor);
* ``reward``: ``lm_heads.ScalarHeadLM``, the frozen reward model, read at a sequence's last
  token. It must share the policy's tokenizer (vocabulary and special ids are checked).

Freezing ``reference/`` and ``reward/`` is a parameter rule (configs/ppo.py); the train step
then runs no backward pass through them. Config (docs/safety.md, PPO)::

    model.name = "ppo_policy"
    model.policy = {LM keys of model.name='lm', head_init_std}   # also the reference's
    model.reward = {keys of model.name='reward_model'}
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmie.models import builder
from mmie.models import decoding
from mmie.models import lm_heads
from mmie.models import seq2seq

Array = jax.Array
SUBTREES = ("policy", "reference", "reward")
_SPECIAL_IDS = ("vocab_size", "pad_id", "bos_id", "eos_id")


def response_mask(tokens: Array, prompt_length: Array, response_length: int,
                  eos_id: int) -> Array:
  """1.0 on each row's generated tokens, ``prompt_length <= t < prompt_length +
  response_length``, up to and including the first EOS among them; 0 elsewhere. [B, L]."""
  positions = jnp.arange(tokens.shape[1])[None, :]
  start = jnp.asarray(prompt_length)[:, None]
  generated = (positions >= start) & (positions < start + response_length)
  eos = generated & (tokens == eos_id)
  after_eos = (jnp.cumsum(eos, axis=1) - eos) > 0
  return (generated & ~after_eos).astype(jnp.float32)


def plain_lm(module: seq2seq.DecoderLM) -> seq2seq.DecoderLM:
  """A ``DecoderLM`` with ``module``'s fields (a ``ScalarHeadLM`` without its head): what
  decoding runs, on the same parameters (the head's are simply not read)."""
  names = [f.name for f in dataclasses.fields(seq2seq.DecoderLM)
           if f.init and f.name not in ("parent", "name")]
  return seq2seq.DecoderLM(**{n: getattr(module, n) for n in names}, parent=None)


class PPOPolicy(nn.Module):
  """Policy with value head, frozen reference and frozen reward model (module docstring)."""

  policy: lm_heads.ScalarHeadLM
  reference: seq2seq.DecoderLM
  reward: lm_heads.ScalarHeadLM

  def init(self, rngs: Any, *args: Any, **kwargs: Any) -> Any:  # pylint: disable=arguments-differ
    """Flax's init, then the reference made a copy of the policy's LM: from scratch (no
    ``init_from``) the KL penalty must still start at 0, as it does from an LM run."""
    variables = dict(super().init(rngs, *args, **kwargs))
    params = dict(variables.get("params", {}))
    if "policy" in params and "reference" in params:  # Not when init ran another method.
      params["reference"] = {k: params["policy"][k] for k in params["reference"]}
      variables["params"] = params
    return variables

  def __call__(self, tokens: Array, *, train: bool = False) -> dict[str, Array]:
    """All three models on tokens [B, T] (so ``init`` makes every subtree)."""
    values, logits = self.policy_outputs(tokens, train=train)
    return {"values": values, "logits": logits, "reference_logits": self.reference(tokens),
            "rewards": self.reward(tokens)}

  def policy_outputs(self, tokens: Array, *, train: bool = False) -> tuple[Array, Array]:
    """(values [B, T], next-token logits [B, T, V]) of the policy, one pass."""
    return self.policy(tokens, train=train, return_logits=True)

  def reference_logits(self, tokens: Array) -> Array:
    """The frozen reference LM's next-token logits [B, T, V]."""
    return self.reference(tokens)

  def reward_scalars(self, tokens: Array) -> Array:
    """The reward model's scalar at every position [B, T] (read it at the last token)."""
    return self.reward(tokens)

  def sample(self, prompt: Array, prompt_length: Array, rng: Array, *, response_length: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             min_response_length: int = 0) -> tuple[Array, Array]:
    """Continuations of ragged prompts from the policy: (tokens [B, P + R], response mask).

    ``prompt`` [B, P] is BOS + prompt tokens right-padded; row b's first
    ``prompt_length[b]`` tokens are forced, then ``R = response_length`` tokens are sampled
    from softmax(logits / temperature) (top-k, then top-p filtered) until EOS, which is
    banned for the first ``min_response_length``; PAD follows.
    One token a step through the KV cache, so prompts of any lengths share one loop.
    """
    if response_length < 1:
      raise ValueError(f"ppo sample: response_length={response_length} must be >= 1.")
    lm = plain_lm(self.policy)
    max_length = prompt.shape[1] + response_length
    step_fn, state = seq2seq.lm_decoder(lm, self.variables["params"]["policy"], prompt[:, :1],
                                        max_length=max_length)
    prompt_length = jnp.asarray(prompt_length, jnp.int32)
    # decoding's shared loop: stops once every row has sampled EOS, pads after it.
    tokens = decoding.sample_after_prompts(
        step_fn, state, prompt.astype(jnp.int32), prompt_length, rng, max_length=max_length,
        eos_id=lm.eos_id, pad_id=lm.pad_id, temperature=temperature, top_k=top_k, top_p=top_p,
        new_tokens=response_length, min_new_tokens=min_response_length)
    return tokens, response_mask(tokens, prompt_length, response_length, lm.eos_id)


def _section_schema() -> dict[str, Any]:
  return {k: v for k, v in lm_heads.schema().items() if k != "name"}


def schema() -> dict[str, Any]:
  """config.model keys of 'ppo_policy': two sections of the reward model's keys (no name)."""
  return {"name": builder.Field((str,), builder.REQUIRED), "policy": _section_schema(),
          "reward": _section_schema()}


def _scalar_lm(section: Any, where: str) -> lm_heads.ScalarHeadLM:
  c = builder.resolve_keys(section, _section_schema(), where)
  std = float(c["head_init_std"])
  if std < 0:
    raise ValueError(f"{where}.head_init_std={std} must be >= 0 (0: a zero-initialised head).")
  return lm_heads.ScalarHeadLM(depth=c["depth"], head_init_std=std,
                               **seq2seq._common_kwargs(c))  # pylint: disable=protected-access


def build_ppo_policy(model_config: Any) -> PPOPolicy:
  """``config.model`` with name='ppo_policy' -> ``PPOPolicy`` (docs/safety.md, PPO)."""
  c = builder.resolve_keys(model_config, {"name": builder.Field((str,), builder.REQUIRED),
                                          "policy": builder.TOWER, "reward": builder.TOWER},
                           "model")
  policy = _scalar_lm(c["policy"], "model.policy")
  reward = _scalar_lm(c["reward"], "model.reward")
  differ = [k for k in _SPECIAL_IDS if getattr(policy, k) != getattr(reward, k)]
  if differ:
    raise ValueError(
        f"model.reward must read the policy's tokens: {', '.join(differ)} differ "
        f"({', '.join(f'{k}={getattr(policy, k)} vs {getattr(reward, k)}' for k in differ)}). "
        "Train the reward model with the LM run's tokenizer (data tokenizer=).")
  return PPOPolicy(policy=policy, reference=plain_lm(policy), reward=reward)
