"""Transformer building blocks shared by every model: attention, MLP, block, encoder stack.

One implementation of each: the vision, text, fusion and seq2seq models all compose these.
Parameter layout mirrors Hugging Face (separate query/key/value/out projections with biases)
so that pretrained CLIP / BERT / ViT weights import by reshaping alone.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) drawn from
``LOGICAL_AXES`` so the engine can map them onto a mesh; ``nn.unbox`` (or ``unbox`` below)
turns an initialised tree into plain arrays for users who do not shard.

The activations between sublayers carry logical names too (``ACTIVATION_AXES``, through
:func:`constrain`): the residual stream [batch, length, embed], queries, keys and values
[batch, length, heads, kv], the MLP hidden units [batch, length, mlp] and vocabulary logits.
They are sharding constraints only inside :func:`activation_sharding` (the engine enters it
while tracing its step), so data, FSDP and tensor-parallel layouts are stated rather than left
to XLA's propagation, as MaxText does; elsewhere they do nothing.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmie.models import positions as positions_lib, remat as remat_lib
# Re-exported: callers name activations as layers.BATCH, layers.constrain, ...
from mmie.models.activation_sharding import (  # noqa: F401
    ACTIVATION_AXES, BATCH, EMBED, HEADS, KV, LENGTH, MLP_UNITS, RESIDUAL, SEQUENCE, VOCAB,
    activation_sharding, constrain)

Array = jnp.ndarray
Dtype = Any

# Every logical axis name used on a parameter in mmie.models.
LOGICAL_AXES = (
    "embed", "mlp", "heads", "kv_heads", "kv", "vocab", "length", "layers", "projection",
    "token_types",
)

# A starting point for the engine's logical -> mesh axis rules on DESIGN's
# ('data', 'fsdp', 'model') mesh: FSDP over the model width, tensor parallelism over heads,
# MLP hidden units and vocabulary. Unlisted names ('kv', 'length', 'layers', ...) replicate.
SUGGESTED_AXIS_RULES = (
    ("embed", "fsdp"), ("mlp", "model"), ("heads", "model"), ("kv_heads", "model"),
    ("vocab", "model"),
)

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
NORM_PLACEMENTS = ("pre", "post")


# jax.nn.dot_product_attention's implementations. 'xla' runs everywhere; 'cudnn' is cuDNN's fused
# flash attention (NVIDIA GPUs, bf16/fp16 inputs, head_dim <= 128 and a multiple of 8).
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


def check_attention(name: str) -> str:
  """The attention implementation ``name``, or a ValueError naming the allowed ones."""
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention={name!r} is not known; choose one of "
                     f"{ATTENTION_IMPLEMENTATIONS} ('cudnn' needs an NVIDIA GPU and bf16/fp16).")
  return name


def unbox(tree: Any) -> Any:
  """Strips logical-partitioning metadata: plain arrays for users who do not shard."""
  return nn.meta.unbox(tree)


def partitioned(init: Callable[..., Array], names: tuple[str | None, ...]) -> Callable[..., Array]:
  """Wraps an initializer so the parameter it creates carries logical axis ``names``."""
  return nn.with_logical_partitioning(init, names)


def activation_fn(name: str) -> Callable[[Array], Array]:
  """Looks up an activation by config name, failing with the allowed names."""
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r} is not known; choose one of {tuple(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def causal_mask(length: int) -> Array:
  """[1, 1, L, L] boolean mask: query i may attend to keys 0..i."""
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def padding_mask(query_valid: Array, key_valid: Array) -> Array:
  """[B, 1, T, S] boolean mask from [B, T] / [B, S] validity vectors (True = real token)."""
  return query_valid[:, None, :, None].astype(bool) & key_valid[:, None, None, :].astype(bool)


def key_mask(key_valid: Array) -> Array:
  """[B, 1, 1, S] mask hiding padded keys only; padded queries still get (ignored) outputs."""
  return key_valid[:, None, None, :].astype(bool)


def combine_masks(*masks: Array | None) -> Array | None:
  """Logical AND of the masks that are not None (broadcasting), or None if all are None."""
  present = [m for m in masks if m is not None]
  if not present:
    return None
  return functools.reduce(jnp.logical_and, present)


def layer_norm(name: str, epsilon: float, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  """LayerNorm whose scale and bias are partitioned along 'embed'."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=partitioned(nn.initializers.ones, ("embed",)),
      bias_init=partitioned(nn.initializers.zeros, ("embed",)),
  )


class MultiHeadAttention(nn.Module):
  """Multi-head (optionally grouped-query) dot-product attention, self or cross.

  Attributes:
    num_heads: query heads.
    head_dim: per-head width; defaults to input width // num_heads.
    num_kv_heads: key/value heads for grouped-query attention (must divide num_heads);
      None means num_heads (standard multi-head attention).
    out_features: output width; defaults to the query input width.
    use_bias: biases on the four projections (True for CLIP / BERT / ViT).
    rope_base: if set, rotary positions with this base are applied to self-attention q and k.
    decode: autoregressive mode with a KV cache in the 'cache' collection; initialise it by
      calling once with a full-length input, then feed one (or a few) tokens per call.
    is_causal: each query attends to itself and earlier keys only. Said as a flag rather than a
      mask so that a fused kernel (cuDNN's) applies it without reading a [T, S] bias.
    implementation: ``jax.nn.dot_product_attention``'s: 'xla' (any backend) or 'cudnn' (fused
      flash attention on NVIDIA GPUs, bf16/fp16 only); see ATTENTION_IMPLEMENTATIONS.
  """

  num_heads: int
  head_dim: int | None = None
  num_kv_heads: int | None = None
  out_features: int | None = None
  use_bias: bool = True
  rope_base: float | None = None
  decode: bool = False
  is_causal: bool = False
  implementation: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _projection(self, heads: int, head_dim: int, name: str, axis: str) -> nn.DenseGeneral:
    return nn.DenseGeneral(
        (heads, head_dim), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name,
        kernel_init=partitioned(nn.initializers.xavier_uniform(), ("embed", axis, "kv")),
        bias_init=partitioned(nn.initializers.zeros, (axis, "kv")),
    )

  def _check_heads(self, width: int) -> tuple[int, int]:
    head_dim = self.head_dim or width // self.num_heads
    if self.head_dim is None and width % self.num_heads:
      raise ValueError(
          f"attention width {width} is not divisible by num_heads={self.num_heads}; "
          "choose num_heads dividing the width or set head_dim."
      )
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ValueError(
          f"num_kv_heads={kv_heads} must divide num_heads={self.num_heads} (grouped-query "
          "attention shares each key/value head among num_heads // num_kv_heads query heads)."
      )
    return head_dim, kv_heads

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array | None = None,
               mask: Array | None = None) -> Array:
    """Attends ``inputs_q`` [B, T, D] to ``inputs_kv`` [B, S, D'] (itself if None).

    ``mask`` is boolean, broadcastable to [B, heads, T, S], True where attention is allowed.
    """
    self_attention = inputs_kv is None
    inputs_kv = inputs_q if self_attention else inputs_kv
    head_dim, kv_heads = self._check_heads(inputs_q.shape[-1])
    heads = (BATCH, LENGTH, HEADS, KV)
    query = constrain(self._projection(self.num_heads, head_dim, "query", "heads")(inputs_q),
                      heads)
    key = constrain(self._projection(kv_heads, head_dim, "key", "kv_heads")(inputs_kv), heads)
    value = constrain(self._projection(kv_heads, head_dim, "value", "kv_heads")(inputs_kv),
                      heads)

    offset = jnp.zeros((), jnp.int32)
    if self.decode and self_attention:
      key, value, offset, mask = self._update_cache(key, value, mask)
    if self.rope_base is not None and self_attention:
      q_pos = offset + jnp.arange(query.shape[1])
      k_pos = jnp.arange(key.shape[1]) if self.decode else q_pos
      query = positions_lib.apply_rope(query, q_pos, self.rope_base)
      key = positions_lib.apply_rope(key, k_pos, self.rope_base)

    query, key, value = (x.astype(self.dtype) for x in (query, key, value))
    if mask is not None:
      mask = jnp.broadcast_to(
          mask, (query.shape[0], self.num_heads, query.shape[1], key.shape[1]))
    if self.is_causal and self.decode:
      raise ValueError("is_causal with decode: the KV cache applies causality itself.")
    attended = constrain(jax.nn.dot_product_attention(query, key, value, mask=mask,
                                                      is_causal=self.is_causal,
                                                      implementation=self.implementation),
                         heads)
    out_features = self.out_features or inputs_q.shape[-1]
    out = nn.DenseGeneral(
        out_features, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name="out",
        kernel_init=partitioned(nn.initializers.xavier_uniform(), ("heads", "kv", "embed")),
        bias_init=partitioned(nn.initializers.zeros, ("embed",)),
    )(attended)
    return constrain(out, RESIDUAL)

  def _update_cache(self, key: Array, value: Array,
                    mask: Array | None) -> tuple[Array, Array, Array, Array | None]:
    """Writes new keys/values at the cache index; returns the full cache and a causal mask."""
    initialised = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialised:  # The init call only allocates the cache; it attends normally.
      return key, value, jnp.zeros((), jnp.int32), mask
    start = index.value
    steps, max_length = key.shape[1], cached_key.value.shape[1]
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, start, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, start, 0, 0))
    index.value = start + steps
    query_pos = start + jnp.arange(steps)
    visible = jnp.arange(max_length)[None, :] <= query_pos[:, None]  # [T, max_length]
    return cached_key.value, cached_value.value, start, combine_masks(mask, visible[None, None])


class MLP(nn.Module):
  """Two-layer feed-forward block ``fc2(act(fc1(x)))``."""

  hidden_dim: int
  activation: str = "gelu"
  out_features: int | None = None
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    act = activation_fn(self.activation)
    out_features = self.out_features or x.shape[-1]
    dense = functools.partial(nn.Dense, use_bias=self.use_bias, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    x = dense(self.hidden_dim, name="fc1",
              kernel_init=partitioned(nn.initializers.xavier_uniform(), ("embed", "mlp")),
              bias_init=partitioned(nn.initializers.normal(1e-6), ("mlp",)))(x)
    x = constrain(act(x), (BATCH, LENGTH, MLP_UNITS))
    x = dense(out_features, name="fc2",
              kernel_init=partitioned(nn.initializers.xavier_uniform(), ("mlp", "embed")),
              bias_init=partitioned(nn.initializers.normal(1e-6), ("embed",)))(x)
    return constrain(x, RESIDUAL)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Hyperparameters of one transformer block, shared by every layer of a stack."""

  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  activation: str = "gelu"
  norm: str = "pre"  # 'pre' (CLIP, ViT) or 'post' (BERT).
  layer_norm_eps: float = 1e-5
  dropout_rate: float = 0.0
  use_bias: bool = True
  rope_base: float | None = None
  decode: bool = False
  causal: bool = False  # Self-attention is causal (see MultiHeadAttention.is_causal).
  attention: str = "xla"  # MultiHeadAttention.implementation.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    if self.norm not in NORM_PLACEMENTS:
      raise ValueError(f"norm={self.norm!r} is not known; choose one of {NORM_PLACEMENTS}.")
    check_attention(self.attention)
    activation_fn(self.activation)


class TransformerBlock(nn.Module):
  """Self-attention + MLP with residuals; LayerNorm before ('pre') or after ('post') each."""

  config: BlockConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
    c = self.config
    norm = functools.partial(layer_norm, epsilon=c.layer_norm_eps, dtype=c.dtype,
                             param_dtype=c.param_dtype)
    attention = MultiHeadAttention(
        num_heads=c.num_heads, head_dim=c.head_dim, num_kv_heads=c.num_kv_heads,
        use_bias=c.use_bias, rope_base=c.rope_base, decode=c.decode, is_causal=c.causal,
        implementation=c.attention, dtype=c.dtype, param_dtype=c.param_dtype, name="attention")
    mlp = MLP(c.mlp_dim, activation=c.activation, use_bias=c.use_bias, dtype=c.dtype,
              param_dtype=c.param_dtype, name="mlp")
    dropout = nn.Dropout(c.dropout_rate, deterministic=deterministic)
    x = constrain(x, RESIDUAL)
    if c.norm == "pre":
      x = x + dropout(attention(norm("attention_norm")(x), mask=mask))
      return x + dropout(mlp(norm("mlp_norm")(x)))
    x = norm("attention_norm")(x + dropout(attention(x, mask=mask)))
    return norm("mlp_norm")(x + dropout(mlp(x)))


class _ScannedBlock(TransformerBlock):
  """The block in the (carry, output) form ``nn.scan`` expects."""

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None,
               deterministic: bool = True) -> tuple[Array, None]:
    return super().__call__(x, mask, deterministic), None


class TransformerEncoder(nn.Module):
  """A stack of ``depth`` identical blocks.

  Attributes:
    remat: which activations each block keeps for the backward pass: a policy of
      mmie/models/remat.py (``none``, ``full``, ``dots``) or a bool.
    scan_layers: one ``nn.scan`` over stacked layer parameters (leading 'layers' axis, under
      ``layers/``) instead of ``layer_0 .. layer_{depth-1}``: compile time independent of depth.
  """

  depth: int
  config: BlockConfig
  remat: bool | str = False
  scan_layers: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
    block_cls = _ScannedBlock if self.scan_layers else TransformerBlock
    # argnums count self as 0: (self, x, mask, deterministic).
    block_cls = remat_lib.rematerialised(block_cls, self.remat, static_argnums=(3,),
                                         prevent_cse=not self.scan_layers)
    if self.scan_layers:
      scanned = nn.scan(
          block_cls, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast, nn.broadcast),
          length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(self.config, name="layers")(x, mask, deterministic)
      return x
    for i in range(self.depth):
      x = block_cls(self.config, name=f"layer_{i}")(x, mask, deterministic)
    return x
