"""A scalar head on the decoder-only LM: a reward model, and PPO's value head on a policy.

``ScalarHeadLM`` is ``DecoderLM`` (same fields, same parameter names: ``token_embed``,
``decoder``, ``final_norm``, ``logits`` when untied) plus one ``Dense(1)`` named
``scalar_head`` on the final-normed hidden states. Its parameter tree is the LM's with one
extra subtree, so an LM run's weights load into it by ``config.init_from`` without renaming
(each LM subtree from the run: ``{'token_embed': 'mmie:RUN', 'decoder': 'mmie:RUN',
'final_norm': 'mmie:RUN'}``, plus ``pos_embed`` / ``logits`` where the LM has them; see
:func:`backbone_init_from`), and a reward model's ``scalar_head`` can seed a value head the
same way.

API (stable; the preference and PPO tasks build on it)::

    model = ScalarHeadLM(vocab_size=..., width=..., ..., depth=...)
    scalars = model.apply({"params": p}, tokens)                      # [B, T] float32
    scalars, logits = model.apply({"params": p}, tokens, return_logits=True)  # + [B, T, V]
    values = scalars                                          # per position: PPO's value head
    reward = preference.last_token_value(scalars, mask)      # [B]: a reward model's reward

(``mmie.tasks.preference`` holds the pure readers: ``last_token_value``, ``token_logps``,
``response_logps``; models do not import tasks.)

Position ``t``'s scalar sees tokens ``0..t`` only (causal), so one pass gives a value for
every prefix of a sequence (PPO's value of each state) and, read at a row's last real token,
the reward of the whole sequence (Ouyang et al. 2022; Stiennon et al. 2020).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmie.models import builder
from mmie.models import layers
from mmie.models import seq2seq

Array = jnp.ndarray
HEAD = "scalar_head"
# The parameter subtrees every LM has (see ``backbone_names`` for the rest).
BACKBONE = ("token_embed", "decoder", "final_norm")


class ScalarHeadLM(seq2seq.DecoderLM):
  """``DecoderLM`` + a scalar per position (see the module docstring).

  ``head_init_std``: the head kernel's initial N(0, std^2). 0 (the default) is a zero kernel:
  every scalar starts at the bias, 0, so a reward model's first Bradley-Terry loss is exactly
  log 2 and a value head starts neutral.
  """

  head_init_std: float = 0.0

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False,
               return_logits: bool = False) -> Array | tuple[Array, Array]:
    """[B, T] tokens -> float32 scalars [B, T] (and the LM's logits [B, T, vocab])."""
    logits, hidden = super().__call__(tokens, train=train, return_hidden=True)
    init = (nn.initializers.zeros if self.head_init_std == 0
            else nn.initializers.normal(self.head_init_std))
    head = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name=HEAD,
                    kernel_init=layers.partitioned(init, ("embed", None)),
                    bias_init=layers.partitioned(nn.initializers.zeros, (None,)))
    scalars = head(hidden)[..., 0].astype(jnp.float32)
    return (scalars, logits) if return_logits else scalars

  def language_model(self) -> seq2seq.DecoderLM:
    """The same LM without the head, for decoding: its params are these minus ``HEAD``."""
    return seq2seq.DecoderLM(parent=None, **{f.name: getattr(self, f.name)
                                             for f in dataclasses.fields(seq2seq.DecoderLM)
                                             if f.init and f.name not in ("parent", "name")})

  def generate(self, prompt: Array, *, max_length: int, **options: Any) -> Array:
    """``DecoderLM.generate`` of the backbone's LM (the head plays no part in decoding)."""
    params = {k: v for k, v in self.variables["params"].items() if k != HEAD}
    return self.language_model().apply({"params": params}, prompt, max_length=max_length,
                                       method="generate", **options)


def backbone_names(positions: str, tie_embeddings: bool) -> tuple[str, ...]:
  """The LM's top-level parameter subtrees (what an LM run contributes to a ScalarHeadLM):
  ``BACKBONE``, ``pos_embed`` with learned positions, ``logits`` with untied embeddings."""
  return (BACKBONE + (("pos_embed",) if positions == "learned" else ())
          + (() if tie_embeddings else ("logits",)))


def backbone_init_from(source: str, model: seq2seq.DecoderLM) -> dict[str, str]:
  """``config.init_from`` loading an LM run's weights into every backbone subtree of
  ``model`` (the head stays freshly initialised): ``{'token_embed': 'mmie:runs/kjv_lm',
  ...}``."""
  return {name: source for name in backbone_names(model.positions, model.tie_embeddings)}


def schema() -> dict[str, Any]:
  """config.model keys of 'reward_model': the LM's (``depth`` included) and ``head_init_std``."""
  return {**seq2seq.schema("lm"), "head_init_std": builder.Field((int, float), 0.0)}


def build_reward_model(model_config: Any) -> ScalarHeadLM:
  """``config.model`` with name='reward_model' -> ``ScalarHeadLM`` (docs/safety.md)."""
  c = builder.resolve_keys(model_config, schema(), "model")
  std = float(c["head_init_std"])
  if std < 0:
    raise ValueError(f"model.head_init_std={std} must be >= 0 (0: a zero-initialised head).")
  return ScalarHeadLM(depth=c["depth"], head_init_std=std,
                      **seq2seq._common_kwargs(c))  # pylint: disable=protected-access
