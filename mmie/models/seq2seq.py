"""Encoder-decoder transformer (translation) and decoder-only language model.

Both compose ``mmie.models.layers`` (attention with a KV cache, MLP, blocks, encoder stack),
share one token embedding between input and (tied) output, and accept ``decode=True``
(``model.clone(decode=True)``) for autoregressive use: the self-attention keys/values and the
position counter then live in the ``cache`` collection and each call consumes the next
token(s). ``lm_step_fn`` / ``translation_step_fn`` wrap a model into the
``step_fn(tokens, state)`` interface of ``mmie.models.decoding``; each model's ``generate``
method runs a whole search inside ``model.apply`` (the protocol of the BLEU evaluator).

Limitations: prompts in one batch share a length (no ragged left padding); the decoder's
cross-attention recomputes the encoder keys/values at every step (correct, O(source length)
extra work per step; caching them needs a cross-attention cache in ``layers``).
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmie.models import builder
from mmie.models import decoding
from mmie.models import layers
from mmie.models import positions as positions_lib
from mmie.models import remat as remat_lib

Array = jnp.ndarray
_INT, _FLOAT, _STR = (int,), (int, float), (str,)


def _add_positions(module: nn.Module, x: Array, kind: str, context_length: int,
                   decode: bool) -> Array:
  """Adds learned / sinusoidal positions (rope: nothing, attention rotates q and k).

  In decode mode the start position is a ``cache`` counter advanced by the tokens consumed;
  the first (allocating) call starts at 0 and does not advance it, like the attention cache.
  """
  positions_lib.check_position_kind(kind, where=type(module).__name__)
  length, width = x.shape[1], x.shape[2]
  if length > context_length:
    raise ValueError(f"{type(module).__name__}: {length} tokens exceed "
                     f"context_length={context_length}.")
  start = jnp.zeros((), jnp.int32)
  if decode:
    initialised = module.has_variable("cache", "position")
    counter = module.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
    if initialised:
      start = counter.value
      counter.value = start + length
  if kind == "rope":
    return x
  if kind == "learned":
    table = module.param("pos_embed", layers.partitioned(
        nn.initializers.normal(0.02), ("length", "embed")), (context_length, width),
                         module.param_dtype)
  else:
    table = jnp.asarray(positions_lib.sinusoidal_1d(context_length, width))
  return x + jnp.take(table, start + jnp.arange(length), axis=0).astype(x.dtype)[None]


def _embed(module: nn.Module, vocab_size: int, width: int) -> nn.Embed:
  """The (shared) token table, initialised N(0, 1/width) as in Vaswani et al. (2017).

  Inputs read it through ``_embed_tokens`` (times sqrt(width): unit scale per dimension, the
  scale of sinusoidal positions, which would otherwise drown the tokens), and tied output
  logits through ``attend``, where 1/sqrt(width) rows keep initial logits at unit scale.
  """
  return nn.Embed(vocab_size, width, dtype=module.dtype, param_dtype=module.param_dtype,
                  name="token_embed", embedding_init=layers.partitioned(
                      nn.initializers.normal(width ** -0.5), ("vocab", "embed")))


def _embed_tokens(embed: nn.Embed, tokens: Array) -> Array:
  """Token embeddings scaled by sqrt(width) (Vaswani et al. 2017, section 3.4)."""
  x = embed(tokens)
  return x * jnp.asarray(embed.features ** 0.5, x.dtype)


_LOGITS = (layers.BATCH, layers.LENGTH, layers.VOCAB)


def _output_logits(module: nn.Module, embed: nn.Embed, x: Array, tie: bool) -> Array:
  """Vocabulary logits in float32: through the (tied) embedding or a separate projection."""
  if tie:
    return layers.constrain(embed.attend(x).astype(jnp.float32), _LOGITS)
  return layers.constrain(nn.Dense(
      embed.num_embeddings, use_bias=False, dtype=module.dtype, param_dtype=module.param_dtype,
      name="logits", kernel_init=layers.partitioned(nn.initializers.lecun_normal(),
                                                    ("embed", "vocab")))(x).astype(jnp.float32),
                          _LOGITS)


class DecoderBlock(nn.Module):
  """Causal self-attention (KV-cached when decoding), cross-attention to the encoder, MLP."""

  config: layers.BlockConfig

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_mask: Array | None, cross_mask: Array,
               deterministic: bool = True) -> Array:
    c = self.config
    drop = nn.Dropout(c.dropout_rate, deterministic=deterministic)
    attention = functools.partial(
        layers.MultiHeadAttention, num_heads=c.num_heads, head_dim=c.head_dim,
        num_kv_heads=c.num_kv_heads, use_bias=c.use_bias, dtype=c.dtype,
        param_dtype=c.param_dtype)
    norm = lambda name: layers.layer_norm(name, c.layer_norm_eps, c.dtype, c.param_dtype)
    sublayers = (
        ("self_attention", lambda h: attention(rope_base=c.rope_base, decode=c.decode,
                                               name="self_attention")(h, mask=self_mask)),
        ("cross_attention", lambda h: attention(name="cross_attention")(h, encoded,
                                                                        mask=cross_mask)),
        ("mlp", lambda h: layers.MLP(c.mlp_dim, activation=c.activation, use_bias=c.use_bias,
                                     dtype=c.dtype, param_dtype=c.param_dtype, name="mlp")(h)),
    )
    for name, fn in sublayers:
      if c.norm == "pre":
        x = x + drop(fn(norm(f"{name}_norm")(x)))
      else:
        x = norm(f"{name}_norm")(x + drop(fn(x)))
    return x


class _ScannedDecoderBlock(DecoderBlock):
  """The block in the (carry, output) form ``nn.scan`` expects."""

  @nn.compact
  def __call__(self, x, encoded, self_mask, cross_mask, deterministic=True):
    return super().__call__(x, encoded, self_mask, cross_mask, deterministic), None


class Decoder(nn.Module):
  """Positions + ``depth`` decoder blocks + final LayerNorm, over embedded target tokens."""

  depth: int
  config: layers.BlockConfig
  context_length: int
  positions: str = "learned"
  remat: bool | str = False
  scan_layers: bool = False
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, encoded: Array, encoder_valid: Array,
               deterministic: bool = True) -> Array:
    c = self.config
    x = _add_positions(self, x, self.positions, self.context_length, c.decode)
    x = nn.Dropout(c.dropout_rate, deterministic=deterministic)(x)
    # Decoding: the cache's own mask hides future slots; training: an explicit causal mask.
    self_mask = None if c.decode else layers.causal_mask(x.shape[1])
    cross_mask = layers.key_mask(encoder_valid)
    block_cls = _ScannedDecoderBlock if self.scan_layers else DecoderBlock
    # argnums count self as 0: (self, x, encoded, self_mask, cross_mask, deterministic).
    block_cls = remat_lib.rematerialised(block_cls, self.remat, static_argnums=(5,),
                                         prevent_cse=not self.scan_layers)
    if self.scan_layers:
      scanned = nn.scan(
          block_cls, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * 4,
          length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(c, name="layers")(x, encoded, self_mask, cross_mask, deterministic)
    else:
      for i in range(self.depth):
        x = block_cls(c, name=f"layer_{i}")(x, encoded, self_mask, cross_mask, deterministic)
    return layers.layer_norm("final_norm", c.layer_norm_eps, c.dtype, c.param_dtype)(x)


class _TransformerCommon(nn.Module):
  """Hyperparameters shared by the encoder-decoder and the language model."""

  vocab_size: int
  width: int
  num_heads: int
  mlp_dim: int
  context_length: int
  num_kv_heads: int | None = None
  positions: str = "learned"
  rope_base: float = 10_000.0
  activation: str = "gelu"
  norm: str = "pre"
  layer_norm_eps: float = 1e-5
  dropout_rate: float = 0.0
  tie_embeddings: bool = True
  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2
  remat: bool | str = False
  scan_layers: bool = False
  decode: bool = False
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def block_config(self, decode: bool) -> layers.BlockConfig:
    return layers.BlockConfig(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_kv_heads=self.num_kv_heads,
        activation=self.activation, norm=self.norm, layer_norm_eps=self.layer_norm_eps,
        dropout_rate=self.dropout_rate,
        rope_base=self.rope_base if self.positions == "rope" else None, decode=decode,
        dtype=self.dtype, param_dtype=self.param_dtype)


class Seq2SeqTransformer(_TransformerCommon):
  """Vaswani et al. (2017) encoder-decoder over one shared (source + target) vocabulary.

  ``__call__(source, target_in)`` -> logits [B, T, vocab] (teacher forcing); ``encode`` and
  ``decoder_logits`` are the two halves, used separately for decoding.
  """

  encoder_depth: int = 1
  decoder_depth: int = 1

  def setup(self):
    self.token_embed = _embed(self, self.vocab_size, self.width)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.encoder_stack = layers.TransformerEncoder(
        self.encoder_depth, self.block_config(decode=False), remat=self.remat,
        scan_layers=self.scan_layers, name="encoder")
    self.encoder_norm = layers.layer_norm("encoder_norm", self.layer_norm_eps, self.dtype,
                                          self.param_dtype)
    self.decoder = Decoder(self.decoder_depth, self.block_config(decode=self.decode),
                           self.context_length, self.positions, remat=self.remat,
                           scan_layers=self.scan_layers, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="decoder")
    if self.positions == "learned":
      self.encoder_pos_embed = self.param(
          "encoder_pos_embed", layers.partitioned(nn.initializers.normal(0.02),
                                                  ("length", "embed")),
          (self.context_length, self.width), self.param_dtype)
    if not self.tie_embeddings:
      self.logits_dense = nn.Dense(
          self.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
          name="logits", kernel_init=layers.partitioned(nn.initializers.lecun_normal(),
                                                        ("embed", "vocab")))

  def source_valid(self, source: Array, source_mask: Array | None) -> Array:
    """[B, S] bool: the mask if given (1 = token), else ``source != pad_id``."""
    return source != self.pad_id if source_mask is None else source_mask > 0

  def encode(self, source: Array, source_mask: Array | None = None, *,
             train: bool = False) -> Array:
    """[B, S] source tokens -> [B, S, width] encoder states (padding hidden from attention)."""
    valid = self.source_valid(source, source_mask)
    x = _embed_tokens(self.token_embed, source)
    positions_lib.check_position_kind(self.positions, where="seq2seq")
    if self.positions != "rope":
      length = source.shape[1]
      if length > self.context_length:
        raise ValueError(f"seq2seq: source length {length} exceeds "
                         f"context_length={self.context_length}.")
      table = (self.encoder_pos_embed if self.positions == "learned"
               else jnp.asarray(positions_lib.sinusoidal_1d(self.context_length, self.width)))
      x = x + table[:length].astype(x.dtype)[None]
    x = self.dropout(x, deterministic=not train)
    x = self.encoder_stack(x, layers.key_mask(valid), not train)
    return self.encoder_norm(x)

  def decoder_logits(self, target_in: Array, encoded: Array, source_valid: Array, *,
                     train: bool = False) -> Array:
    """Decoder inputs [B, T] (BOS-shifted targets) + encoder states -> float32 logits."""
    x = self.decoder(_embed_tokens(self.token_embed, target_in), encoded, source_valid,
                     not train)
    if self.tie_embeddings:
      return layers.constrain(self.token_embed.attend(x).astype(jnp.float32), _LOGITS)
    return layers.constrain(self.logits_dense(x).astype(jnp.float32), _LOGITS)

  def __call__(self, source: Array, target_in: Array, source_mask: Array | None = None, *,
               train: bool = False) -> Array:
    """Teacher-forced logits [B, T, vocab] for decoder inputs ``target_in``."""
    encoded = self.encode(source, source_mask, train=train)
    return self.decoder_logits(target_in, encoded, self.source_valid(source, source_mask),
                               train=train)

  def generate(self, source: Array, source_mask: Array | None = None, *, max_length: int,
               **options: Any) -> Array:
    """Translations [B, max_length] (BOS first, PAD after EOS) of ``source``, by
    ``decoding.generate`` (``strategy='greedy'`` unless ``options`` say otherwise); for
    ``model.apply({'params': p}, source, max_length=..., method=model.generate)``."""
    model = self.clone(parent=None)
    step_fn, state = translation_decoder(model, self.variables["params"], source, source_mask,
                                         max_length=max_length)
    prefix = jnp.full((source.shape[0], 1), self.bos_id, jnp.int32)
    return decoding.generate(step_fn, state, prefix, max_length=max_length, eos_id=self.eos_id,
                             pad_id=self.pad_id, **options)


class DecoderLM(_TransformerCommon):
  """GPT-style causal language model: embeddings, causal blocks, final LayerNorm, logits."""

  depth: int = 1

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False,
               return_hidden: bool = False) -> Array | tuple[Array, Array]:
    """[B, T] tokens -> float32 logits [B, T, vocab]; position t sees tokens 0..t only.
    ``return_hidden``: (logits, final-normed states [B, T, width]), for heads on the LM."""
    embed = _embed(self, self.vocab_size, self.width)
    x = _add_positions(self, _embed_tokens(embed, tokens), self.positions, self.context_length,
                       self.decode)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    mask = None if self.decode else layers.causal_mask(tokens.shape[1])
    x = layers.TransformerEncoder(self.depth, self.block_config(self.decode), remat=self.remat,
                                  scan_layers=self.scan_layers, name="decoder")(
                                      x, mask, not train)
    x = layers.layer_norm("final_norm", self.layer_norm_eps, self.dtype, self.param_dtype)(x)
    logits = _output_logits(self, embed, x, self.tie_embeddings)
    return (logits, x) if return_hidden else logits

  def generate(self, prompt: Array, *, max_length: int, **options: Any) -> Array:
    """Continuations [B, max_length] of ``prompt`` [B, P] (included), by ``decoding.generate``:
    ``model.apply({'params': p}, prompt, max_length=32, method=model.generate,
    strategy='sample', rng=key, top_p=0.9)``."""
    step_fn, state = lm_decoder(self.clone(parent=None), self.variables["params"], prompt,
                                max_length=max_length)
    return decoding.generate(step_fn, state, prompt, max_length=max_length, eos_id=self.eos_id,
                             pad_id=self.pad_id, **options)


def lm_decoder(model: DecoderLM, params: Any, prompt: Array, *,
               max_length: int) -> tuple[decoding.StepFn, dict[str, Any]]:
  """(step_fn, state) for ``mmie.models.decoding`` with ``prompt[:, :-1]`` already consumed
  (one prefill call); pass ``prompt`` as the decoding prefix and the same ``max_length``."""
  _check_max_length(model, max_length)
  decoder = model.clone(decode=True)
  state = {"cache": decoding.init_cache(
      decoder, params, jnp.zeros((prompt.shape[0], max_length), jnp.int32))}
  if prompt.shape[1] > 1:
    _, state = decoding.feed(decoder, params, state, prompt[:, :-1])
  return decoding.make_step_fn(decoder, params), state


def translation_decoder(model: Seq2SeqTransformer, params: Any, source: Array,
                        source_mask: Array | None = None, *,
                        max_length: int) -> tuple[decoding.StepFn, dict[str, Any]]:
  """(step_fn, state) for decoding translations of ``source``: encodes once; the state holds
  the encoder states, the source mask and the decoder's KV cache. The prefix is [B, 1] BOS."""
  _check_max_length(model, max_length)
  encoded = model.apply({"params": params}, source, source_mask, method="encode")
  valid = source != model.pad_id if source_mask is None else source_mask > 0
  decoder = model.clone(decode=True)
  context = ("encoded", "source_valid")
  zeros = jnp.zeros((source.shape[0], max_length), jnp.int32)
  cache = decoding.init_cache(decoder, params, zeros, encoded, valid, method="decoder_logits")
  state = {"cache": cache, "encoded": encoded, "source_valid": valid}
  return decoding.make_step_fn(decoder, params, method="decoder_logits", context=context), state


def _check_max_length(model: _TransformerCommon, max_length: int) -> None:
  if max_length > model.context_length:
    raise ValueError(f"decoding max_length={max_length} exceeds the model's context_length="
                     f"{model.context_length} (its positions and cache are sized by it).")


def schema(name: str) -> dict[str, Any]:
  """config.model keys of 'seq2seq' or 'lm' -> ``Field(types, default)``. A function so that
  ``builder`` may import this module at its top (see ``fusion.fusion_schemas``)."""
  required, Field = builder.REQUIRED, builder.Field  # pylint: disable=invalid-name
  common = {
      "name": Field(_STR, required), "vocab_size": Field(_INT, required),
      "width": Field(_INT, required), "num_heads": Field(_INT, required),
      "mlp_dim": Field(_INT, required), "context_length": Field(_INT, required),
      "num_kv_heads": Field((int, type(None)), None), "positions": Field(_STR, "learned"),
      "rope_base": Field(_FLOAT, 10_000.0), "activation": Field(_STR, "gelu"),
      "norm": Field(_STR, "pre"), "layer_norm_eps": Field(_FLOAT, 1e-5),
      "dropout_rate": Field(_FLOAT, 0.0), "tie_embeddings": Field((bool,), True),
      "pad_id": Field(_INT, 0), "bos_id": Field(_INT, 1), "eos_id": Field(_INT, 2),
      "remat": builder.REMAT, "scan_layers": Field((bool,), False),
      "dtype": Field(_STR, "float32"), "param_dtype": Field(_STR, "float32"),
  }
  depths = ("encoder_depth", "decoder_depth") if name == "seq2seq" else ("depth",)
  return {**common, **{key: Field(_INT, required) for key in depths}}


def _common_kwargs(c: dict[str, Any]) -> dict[str, Any]:
  positions_lib.check_position_kind(c["positions"], where="model")
  kwargs = {k: c[k] for k in ("vocab_size", "width", "num_heads", "mlp_dim", "context_length",
                              "num_kv_heads", "positions", "activation", "norm",
                              "tie_embeddings", "pad_id", "bos_id", "eos_id", "remat",
                              "scan_layers")}
  kwargs.update(rope_base=float(c["rope_base"]), layer_norm_eps=float(c["layer_norm_eps"]),
                dropout_rate=float(c["dropout_rate"]),
                dtype=builder.parse_dtype(c["dtype"], "model.dtype"),
                param_dtype=builder.parse_dtype(c["param_dtype"], "model.param_dtype"))
  layers.BlockConfig(num_heads=c["num_heads"], mlp_dim=c["mlp_dim"], norm=c["norm"],
                     activation=c["activation"])  # Fails early on a bad norm / activation.
  return kwargs


def build_seq2seq(model_config: Any) -> Seq2SeqTransformer:
  """``config.model`` with name='seq2seq' -> ``Seq2SeqTransformer`` (docs/models.md)."""
  c = builder.resolve_keys(model_config, schema("seq2seq"), "model")
  return Seq2SeqTransformer(encoder_depth=c["encoder_depth"], decoder_depth=c["decoder_depth"],
                            **_common_kwargs(c))


def build_lm(model_config: Any) -> DecoderLM:
  """``config.model`` with name='lm' -> ``DecoderLM`` (docs/models.md)."""
  c = builder.resolve_keys(model_config, schema("lm"), "model")
  return DecoderLM(depth=c["depth"], **_common_kwargs(c))
