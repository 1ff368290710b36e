"""A trained language model as the safety pipeline uses it: sample continuations of text
prompts, score responses, measure perplexity and KL.

The constitutional pipeline (mmie/safety/constitution.py) samples and revises with it, and
the figures compare the reference LM with its PPO and DPO fine-tunes through it. Every
function batches to a fixed shape, so each compiles once whatever the prompts' lengths:
prompts of different lengths share one sampling loop (``decoding.sample_after_prompts``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from mmie.data import record_views, tokenizer as tokenizer_lib
from mmie.models import decoding, seq2seq
from mmie.tasks import preference

BANNED = -1e9  # A logit bias that no sampled token survives.


def _batches(n: int, size: int):
  for start in range(0, n, size):
    yield start, min(start + size, n)


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  """``rows`` [n <= size, ...] padded to ``size`` rows with copies of the last (discarded)."""
  return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])


@dataclasses.dataclass
class LanguageModel:
  """A ``DecoderLM``, its parameters and its tokenizer."""

  model: seq2seq.DecoderLM
  params: Any
  tokenizer: tokenizer_lib.Tokenizer
  batch_size: int = 64

  @classmethod
  def load(cls, workdir: str, *, part: str = "policy", **kwargs: Any) -> "LanguageModel":
    """The LM of a trained run: an ``lm`` or ``dpo`` run's model, or the ``part``
    (``policy`` or ``reference``) of a PPO run's model; always as a plain ``DecoderLM``
    (a value head's parameters are simply not read)."""
    # pylint: disable=g-import-not-at-top (loading a run imports the engine)
    from mmie.models.ppo_policy import PPOPolicy, plain_lm
    from mmie.train import trained

    _, model, params, _ = trained.load_trained(workdir)
    if isinstance(model, PPOPolicy):
      model, params = getattr(model, part), params[part]
    if not isinstance(model, seq2seq.DecoderLM):
      raise ValueError(f"{workdir}: expected a language model run (lm, dpo or ppo), found a "
                       f"{type(model).__name__}.")
    tokenizer = tokenizer_lib.load_tokenizer(os.path.join(workdir, "tokenizer.json"))
    return cls(plain_lm(model), params, tokenizer, **kwargs)

  @property
  def context_length(self) -> int:
    return int(self.model.context_length)

  @functools.cached_property
  def _sample_fn(self) -> Any:
    @functools.partial(jax.jit, static_argnames=("max_length", "top_k", "top_p"))
    def sample(params, prompt, length, rng, bias, *, max_length, top_k, top_p):
      step_fn, state = seq2seq.lm_decoder(self.model, params, prompt[:, :1],
                                          max_length=max_length)
      return decoding.sample_after_prompts(
          step_fn, state, prompt, length, rng, max_length=max_length,
          eos_id=self.model.eos_id, pad_id=self.model.pad_id, top_k=top_k, top_p=top_p,
          logit_bias=bias)
    return sample

  def encode_prompts(self, prompts: Sequence[str], prompt_length: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(prompt [N, prompt_length], lengths [N])`` as the ``prompts`` data view makes them."""
    out = record_views.encode_rows([{"prompt": p} for p in prompts], "prompts", self.tokenizer,
                                   self.context_length, prompt_length)
    return out["prompt"], out["prompt_length"]

  def sample(self, prompts: Sequence[str], *, seed: int, new_tokens: int = 24,
             prompt_length: int = 16, top_k: int = 0, top_p: float = 0.9,
             logit_bias: np.ndarray | None = None) -> list[str]:
    """One sampled continuation per prompt: its first ``new_tokens`` tokens (up to EOS) after
    the prompt, as text.

    ``top_k=1`` is greedy decoding; ``logit_bias`` [N, V] is added to each row's logits
    (``BANNED`` bans a token).
    """
    tokens, lengths = self.encode_prompts(prompts, prompt_length)
    max_length = prompt_length + new_tokens
    if max_length > self.context_length:
      raise ValueError(f"prompt_length + new_tokens = {max_length} exceeds the model's "
                       f"context_length {self.context_length}.")
    vocab = int(self.model.vocab_size)
    bias = np.zeros((len(prompts), vocab), np.float32) if logit_bias is None else logit_bias
    out = []
    for start, end in _batches(len(prompts), self.batch_size):
      rng = jax.random.fold_in(jax.random.key(seed), start)
      ids = self._sample_fn(self.params, _pad_rows(tokens[start:end], self.batch_size),
                            _pad_rows(lengths[start:end], self.batch_size), rng,
                            _pad_rows(bias[start:end], self.batch_size),
                            max_length=max_length, top_k=top_k, top_p=top_p)
      ids = np.asarray(ids)[:end - start]
      out.extend(self.tokenizer.decode(row[n:n + new_tokens])
                 for row, n in zip(ids, lengths[start:end]))
    return out

  def generate_fn(self, **sampling: Any) -> Callable[[Sequence[str]], list[str]]:
    """``generate(prompts) -> texts`` for the filter and the red-team harness, with fixed
    ``sample`` options (``top_k=1``: greedy; ``seed``, default 0)."""
    sampling.setdefault("seed", 0)
    return lambda prompts: self.sample(list(prompts), **sampling)

  @functools.cached_property
  def _token_logps_fn(self) -> Any:
    @jax.jit
    def token_logps(params, rows):
      return preference.token_logps(self.model.apply({"params": params}, rows[:, :-1]),
                                    rows[:, 1:])
    return token_logps

  def token_logps(self, rows: np.ndarray) -> np.ndarray:
    """log p(row[t] | row[:t]) for t >= 1: float32 [N, L - 1]."""
    out = []
    for start, end in _batches(len(rows), self.batch_size):
      logps = self._token_logps_fn(self.params, _pad_rows(rows[start:end], self.batch_size))
      out.append(np.asarray(logps)[:end - start])
    return np.concatenate(out)

  def response_logps(self, prompts: Sequence[str], responses: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(sum of log p(response tokens and EOS | prompt) [N], number of those tokens [N])``,
    on the rows the ``preference`` view builds (so DPO's precomputed reference matches)."""
    prompt_ids = self.tokenizer.tokenize(list(prompts))
    response_ids = self.tokenizer.tokenize(list(responses))
    pairs = [record_views.preference_row(self.tokenizer, p, r, self.context_length)
             for p, r in zip(prompt_ids, response_ids)]
    rows, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    logps = self.token_logps(rows) * masks[:, 1:]
    return logps.sum(-1), masks[:, 1:].sum(-1)

  def perplexity(self, texts: Sequence[str]) -> float:
    """Token-level perplexity ``exp(mean NLL)`` of ``texts`` (each ``BOS text EOS``)."""
    rows = self.tokenizer.encode(list(texts), self.context_length)
    mask = rows[:, 1:] != self.tokenizer.pad_id
    return float(np.exp(-(self.token_logps(rows) * mask).sum() / mask.sum()))


def kl_per_token(policy: LanguageModel, reference: LanguageModel, prompts: Sequence[str],
                 responses: Sequence[str]) -> float:
  """Monte-Carlo KL(policy || reference) per generated token: the mean over the policy's own
  samples' tokens (and EOS) of ``log pi(y_t) - log pi_ref(y_t)``."""
  policy_logps, counts = policy.response_logps(prompts, responses)
  reference_logps, _ = reference.response_logps(prompts, responses)
  return float((policy_logps - reference_logps).sum() / max(counts.sum(), 1))
