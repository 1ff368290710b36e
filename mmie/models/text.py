"""Text transformer tower: causal (CLIP) or bidirectional (BERT), with several poolings.

Returns pooled features of width ``width`` (or the hidden-state sequence with
``pool='none'``); projections to a shared embedding space belong to the two-tower model.
"""

import flax.linen as nn
import jax.numpy as jnp

from mmie.models import layers
from mmie.models import positions as positions_lib

Array = jnp.ndarray

POOLS = ("eos", "cls", "mean", "argmax", "none")


def pool_sequence(x: Array, tokens: Array, valid: Array, pool: str, eos_id: int | None) -> Array:
  """Reduces hidden states [B, L, D] to [B, D].

  'eos': the first position whose token is ``eos_id`` (the last position if there is none,
  e.g. a truncated caption); 'cls': position 0; 'mean': mean over ``valid`` positions;
  'argmax': the position of the largest token id (Hugging Face's legacy CLIP pooling,
  where end-of-text has the largest id).
  """
  batch = jnp.arange(x.shape[0])
  if pool == "eos":
    is_eos = tokens == eos_id
    index = jnp.where(is_eos.any(axis=-1), jnp.argmax(is_eos, axis=-1), tokens.shape[1] - 1)
    return x[batch, index]
  if pool == "argmax":
    return x[batch, jnp.argmax(tokens, axis=-1)]
  if pool == "cls":
    return x[:, 0]
  if pool == "mean":
    weights = valid.astype(x.dtype)[..., None]
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
  raise ValueError(f"text: pool={pool!r} is not known; choose one of {POOLS}.")


class TextTransformer(nn.Module):
  """Token + position (+ token type) embeddings, transformer stack, optional final LayerNorm.

  Attributes:
    causal: causal self-attention (CLIP, LMs); otherwise bidirectional (BERT).
    pool: one of ``POOLS``; 'none' returns the [B, L, width] hidden states.
    eos_id: end-of-text id used by pool='eos'.
    pad_id: padding id; when no attention_mask is given, mean pooling skips it and a
      bidirectional tower hides keys equal to it. A causal tower needs no padding mask for
      'eos' pooling: the causal mask already hides everything after end-of-text.
    type_vocab_size: > 0 adds BERT token-type (segment) embeddings.
    embed_norm: LayerNorm on the summed embeddings (BERT).
    final_norm: LayerNorm after the stack (CLIP; BERT's post-LN blocks end normalised).
    norm: 'pre' or 'post' LayerNorm placement in the blocks.
    positions: 'learned', 'sinusoidal' or 'rope'.
  """

  vocab_size: int
  context_length: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  causal: bool = True
  pool: str = "eos"
  eos_id: int | None = None
  pad_id: int | None = 0
  type_vocab_size: int = 0
  embed_norm: bool = False
  final_norm: bool = True
  norm: str = "pre"
  positions: str = "learned"
  rope_base: float = 10_000.0
  activation: str = "gelu"
  layer_norm_eps: float = 1e-5
  num_kv_heads: int | None = None
  dropout_rate: float = 0.0
  remat: bool | str = False
  scan_layers: bool = False
  attention: str = "xla"
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def _check(self, tokens: Array) -> None:
    if self.pool not in POOLS:
      raise ValueError(f"text: pool={self.pool!r} is not known; choose one of {POOLS}.")
    if self.pool == "eos" and self.eos_id is None:
      raise ValueError("text: pool='eos' needs eos_id (the end-of-text token id).")
    positions_lib.check_position_kind(self.positions, where="text")
    if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
      raise ValueError(f"text: expected int tokens [batch, length <= context_length="
                       f"{self.context_length}]; got shape {tokens.shape}.")

  def _embed(self, tokens: Array, token_type_ids: Array | None) -> Array:
    embed = lambda num, name, axis: nn.Embed(
        num, self.width, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        embedding_init=layers.partitioned(nn.initializers.normal(0.02), (axis, "embed")))
    x = embed(self.vocab_size, "token_embed", "vocab")(tokens)
    length = tokens.shape[1]
    if self.positions == "learned":
      x = x + embed(self.context_length, "pos_embed", "length")(jnp.arange(length))[None]
    elif self.positions == "sinusoidal":
      table = positions_lib.sinusoidal_1d(self.context_length, self.width)[:length]
      x = x + jnp.asarray(table, self.dtype)[None]
    if self.type_vocab_size:
      types = jnp.zeros_like(tokens) if token_type_ids is None else token_type_ids
      x = x + embed(self.type_vocab_size, "type_embed", "token_types")(types)
    if self.embed_norm:
      x = layers.layer_norm("embed_norm", self.layer_norm_eps, self.dtype, self.param_dtype)(x)
    return x

  @nn.compact
  def __call__(self, tokens: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, *, train: bool = False) -> Array:
    """[B, L] int tokens -> [B, width] pooled features ([B, L, width] for pool='none').

    ``attention_mask`` [B, L] is 1 for real tokens, 0 for padding (Hugging Face convention).
    """
    self._check(tokens)
    if attention_mask is not None:
      valid = attention_mask > 0
    elif self.pad_id is not None:
      valid = tokens != self.pad_id
    else:
      valid = jnp.ones(tokens.shape, bool)
    # Keys are masked when the caller says so, or by pad_id in a bidirectional tower; a
    # causal tower already hides everything after end-of-text from 'eos' pooling.
    hide_keys = attention_mask is not None or (self.pad_id is not None and not self.causal)
    # Causality is the blocks' flag (a fused kernel applies it without a mask); the mask
    # carries padding only.
    mask = layers.key_mask(valid) if hide_keys else None
    x = self._embed(tokens, token_type_ids)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    block = layers.BlockConfig(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_kv_heads=self.num_kv_heads,
        activation=self.activation, norm=self.norm, layer_norm_eps=self.layer_norm_eps,
        dropout_rate=self.dropout_rate,
        rope_base=self.rope_base if self.positions == "rope" else None,
        causal=self.causal, attention=self.attention, dtype=self.dtype,
        param_dtype=self.param_dtype)
    x = layers.TransformerEncoder(self.depth, block, remat=self.remat,
                                  scan_layers=self.scan_layers, name="encoder")(
                                      x, mask, not train)
    if self.final_norm:
      x = layers.layer_norm("ln_final", self.layer_norm_eps, self.dtype, self.param_dtype)(x)
    if self.pool == "none":
      return x
    return pool_sequence(x, tokens, valid, self.pool, self.eos_id)
