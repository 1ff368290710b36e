"""Cross-modal fusion: text and image token sequences into one joint representation.

Four ways to let the modalities see each other, each a module
``fusion(image [B, Ni, D], text [B, Nt, D], text_valid [B, Nt], image_valid=None) ->
FusionOutput(image, text, pooled)``:

  cross_attention        text attends to the image (ALBEF / BLIP fusion encoder layers).
  gated_cross_attention  Flamingo's tanh-gated cross-attention + MLP, gates start at 0 so an
                         untrained fusion leaves the text stream exactly unchanged.
  bidirectional          both directions at once (ViLBERT / LXMERT-style co-attention).
  co_attention           one self-attention stack over [fusion token; image; text] whose
                         learned fusion token reads out the pair.

``FusionModel`` puts two towers (token outputs), ALBEF's contrastive projections and one of
these fusions under an image-text matching (ITM) head, for ``mmie.tasks.matching``.
Every attention is ``mmie.models.layers.MultiHeadAttention``; padded keys are always masked.
"""

import math
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from mmie.models import builder
from mmie.models import layers
from mmie.models import remat as remat_lib
from mmie.models import text as text_lib
from mmie.models import two_towers

Array = jnp.ndarray


class FusionOutput(NamedTuple):
  """Token streams after fusion and the pooled pair representation the ITM head reads."""

  image: Array   # [B, Ni, D]; unchanged by fusions where only text queries.
  text: Array    # [B, Nt, D]
  pooled: Array  # [B, P]


def masked_mean(x: Array, valid: Array) -> Array:
  """Mean of ``x`` [B, N, D] over positions where ``valid`` [B, N] is true (0 if none are)."""
  weights = valid.astype(x.dtype)[..., None]
  return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


def _valid_or_all(valid: Array | None, tokens: Array) -> Array:
  return jnp.ones(tokens.shape[:2], bool) if valid is None else valid.astype(bool)


def _attention(c: layers.BlockConfig, name: str) -> layers.MultiHeadAttention:
  return layers.MultiHeadAttention(
      num_heads=c.num_heads, head_dim=c.head_dim, num_kv_heads=c.num_kv_heads,
      use_bias=c.use_bias, dtype=c.dtype, param_dtype=c.param_dtype, name=name)


def _mlp(c: layers.BlockConfig, name: str) -> layers.MLP:
  return layers.MLP(c.mlp_dim, activation=c.activation, use_bias=c.use_bias, dtype=c.dtype,
                    param_dtype=c.param_dtype, name=name)


def _norm(c: layers.BlockConfig, name: str) -> nn.LayerNorm:
  return layers.layer_norm(name, c.layer_norm_eps, c.dtype, c.param_dtype)


class CrossAttentionLayer(nn.Module):
  """Pre-LN [self-attention] + cross-attention + MLP on a query stream.

  ``gated`` multiplies the cross-attention and MLP residuals by tanh of a scalar initialised at
  0 (Alayrac et al. 2022, Flamingo), so a fresh layer is the identity on its query stream and a
  pretrained model it is inserted into starts from its own behaviour.
  """

  config: layers.BlockConfig
  self_attention: bool = True
  gated: bool = False

  def _gate(self, name: str) -> Array | float:
    if not self.gated:
      return 1.0
    alpha = self.param(name, layers.partitioned(nn.initializers.zeros, ()), (),
                       self.config.param_dtype)
    return jnp.tanh(alpha).astype(self.config.dtype)

  @nn.compact
  def __call__(self, x: Array, context: Array, x_valid: Array, context_valid: Array,
               deterministic: bool = True) -> Array:
    c = self.config
    drop = nn.Dropout(c.dropout_rate, deterministic=deterministic)
    if self.self_attention:
      x = x + drop(_attention(c, "self_attention")(
          _norm(c, "self_attention_norm")(x), mask=layers.key_mask(x_valid)))
    attended = _attention(c, "cross_attention")(
        _norm(c, "cross_attention_norm")(x), context, mask=layers.key_mask(context_valid))
    x = x + self._gate("attention_gate") * drop(attended)
    return x + self._gate("mlp_gate") * drop(_mlp(c, "mlp")(_norm(c, "mlp_norm")(x)))


def _layer_cls(cls: type[nn.Module], remat: bool | str) -> Any:
  # argnums count self as 0: (self, x, context, x_valid, context_valid, deterministic).
  return remat_lib.rematerialised(cls, remat, static_argnums=(5,))


class CrossModalFusion(nn.Module):
  """Text queries the image through ``depth`` self+cross-attention layers (ALBEF's fusion)."""

  depth: int
  config: layers.BlockConfig
  remat: bool | str = False

  @nn.compact
  def __call__(self, image: Array, text: Array, text_valid: Array,
               image_valid: Array | None = None, *, deterministic: bool = True) -> FusionOutput:
    image_valid = _valid_or_all(image_valid, image)
    layer = _layer_cls(CrossAttentionLayer, self.remat)
    for i in range(self.depth):
      text = layer(self.config, name=f"layer_{i}")(text, image, text_valid, image_valid,
                                                   deterministic)
    text = _norm(self.config, "final_norm")(text)
    return FusionOutput(image, text, masked_mean(text, text_valid))


class GatedCrossAttentionFusion(nn.Module):
  """Flamingo's GATED XATTN-DENSE layers: the identity on the text stream at initialisation."""

  depth: int
  config: layers.BlockConfig
  remat: bool | str = False

  @nn.compact
  def __call__(self, image: Array, text: Array, text_valid: Array,
               image_valid: Array | None = None, *, deterministic: bool = True) -> FusionOutput:
    image_valid = _valid_or_all(image_valid, image)
    layer = _layer_cls(CrossAttentionLayer, self.remat)
    for i in range(self.depth):
      text = layer(self.config, self_attention=False, gated=True, name=f"layer_{i}")(
          text, image, text_valid, image_valid, deterministic)
    # No final norm: it would break the identity-at-init property the gates exist for.
    return FusionOutput(image, text, masked_mean(text, text_valid))


class BidirectionalLayer(nn.Module):
  """Text attends to image and image to text, both from the same (pre-update) streams."""

  config: layers.BlockConfig

  @nn.compact
  def __call__(self, image: Array, text: Array, image_valid: Array, text_valid: Array,
               deterministic: bool = True) -> tuple[Array, Array]:
    c = self.config
    drop = nn.Dropout(c.dropout_rate, deterministic=deterministic)
    image_in, text_in = _norm(c, "image_norm")(image), _norm(c, "text_norm")(text)
    text = text + drop(_attention(c, "text_to_image")(
        text_in, image_in, mask=layers.key_mask(image_valid)))
    image = image + drop(_attention(c, "image_to_text")(
        image_in, text_in, mask=layers.key_mask(text_valid)))
    text = text + drop(_mlp(c, "text_mlp")(_norm(c, "text_mlp_norm")(text)))
    image = image + drop(_mlp(c, "image_mlp")(_norm(c, "image_mlp_norm")(image)))
    return image, text


class BidirectionalFusion(nn.Module):
  """``depth`` bidirectional layers; pooled = [mean text; mean image] ([B, 2D])."""

  depth: int
  config: layers.BlockConfig
  remat: bool | str = False

  @nn.compact
  def __call__(self, image: Array, text: Array, text_valid: Array,
               image_valid: Array | None = None, *, deterministic: bool = True) -> FusionOutput:
    image_valid = _valid_or_all(image_valid, image)
    layer = _layer_cls(BidirectionalLayer, self.remat)
    for i in range(self.depth):
      image, text = layer(self.config, name=f"layer_{i}")(image, text, image_valid, text_valid,
                                                          deterministic)
    image = _norm(self.config, "image_final_norm")(image)
    text = _norm(self.config, "text_final_norm")(text)
    pooled = jnp.concatenate([masked_mean(text, text_valid), masked_mean(image, image_valid)], -1)
    return FusionOutput(image, text, pooled)


class CoAttentionFusion(nn.Module):
  """Self-attention over [fusion token; image + type 0; text + type 1] (padded text masked).

  The learned fusion token attends to both modalities at every layer; its output is the pair
  representation. Uses ``layers.TransformerEncoder``, so ``remat`` / ``scan_layers`` apply.
  """

  depth: int
  config: layers.BlockConfig
  remat: bool | str = False
  scan_layers: bool = False

  @nn.compact
  def __call__(self, image: Array, text: Array, text_valid: Array,
               image_valid: Array | None = None, *, deterministic: bool = True) -> FusionOutput:
    c, width = self.config, text.shape[-1]
    if image.shape[-1] != width:
      raise ValueError(f"co_attention: image width {image.shape[-1]} != text width {width}; "
                       "project both to one width first (FusionModel does).")
    image_valid = _valid_or_all(image_valid, image)
    init = layers.partitioned(nn.initializers.normal(0.02), ("embed",))
    token = self.param("fusion_token", init, (width,), c.param_dtype).astype(c.dtype)
    types = self.param("modality_embed", layers.partitioned(
        nn.initializers.normal(0.02), ("token_types", "embed")), (2, width), c.param_dtype)
    batch, num_image = image.shape[0], image.shape[1]
    x = jnp.concatenate([jnp.broadcast_to(token, (batch, 1, width)),
                         image + types[0].astype(c.dtype), text + types[1].astype(c.dtype)], 1)
    valid = jnp.concatenate([jnp.ones((batch, 1), bool), image_valid, text_valid.astype(bool)], 1)
    x = layers.TransformerEncoder(self.depth, c, remat=self.remat, scan_layers=self.scan_layers,
                                  name="encoder")(x, layers.key_mask(valid), deterministic)
    x = _norm(c, "final_norm")(x)
    return FusionOutput(x[:, 1:1 + num_image], x[:, 1 + num_image:], x[:, 0])


FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "cross_attention": CrossModalFusion,
    "gated_cross_attention": GatedCrossAttentionFusion,
    "bidirectional": BidirectionalFusion,
    "co_attention": CoAttentionFusion,
}


class ITMHead(nn.Module):
  """Image-text matching logits [B, 2] (index 1 = match) from the pooled pair, as in ALBEF."""

  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: Array) -> Array:
    return nn.Dense(2, dtype=self.dtype, param_dtype=self.param_dtype, name="dense",
                    kernel_init=layers.partitioned(nn.initializers.xavier_uniform(),
                                                   ("embed", None)),
                    bias_init=layers.partitioned(nn.initializers.zeros, (None,)))(
                        pooled).astype(jnp.float32)


IMAGE_POOLS = ("cls", "gap")


class FusionModel(nn.Module):
  """Two towers (token outputs) + contrastive projections + fusion + ITM head.

  ``encode`` gives what the contrastive loss and the hard-negative sampler need (unimodal
  embeddings from pooled tower tokens, as in ALBEF) plus the token sequences; ``match`` fuses
  any pairing of those sequences into ITM logits. Parameter names ``image``, ``text``,
  ``image_projection``, ``text_projection`` and ``logit_scale`` match ``TwoTower``.

  Attributes:
    image / text: towers built with pool='none' ([B, N, width] outputs).
    fusion: one of ``FUSIONS`` at the text tower's width.
    image_pool: 'cls' (token 0, the class token) or 'gap' (mean of tokens) for the embedding.
    text_pool / eos_id: the text tower's pooling (``text.pool_sequence``) for the embedding.
    adapt_image: a linear map of image tokens to the text width before fusion (set when the
      tower widths differ).
  """

  image: nn.Module
  text: nn.Module
  fusion: nn.Module
  embed_dim: int
  width: int
  image_pool: str = "cls"
  text_pool: str = "eos"
  eos_id: int | None = None
  pad_id: int | None = 0
  adapt_image: bool = False
  logit_scale_init: float = math.log(1 / 0.07)
  logit_scale_max: float = 100.0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def setup(self):
    dense = lambda features, name, axes: nn.Dense(
        features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        kernel_init=layers.partitioned(nn.initializers.lecun_normal(), axes))
    self.image_projection = dense(self.embed_dim, "image_projection", ("embed", "projection"))
    self.text_projection = dense(self.embed_dim, "text_projection", ("embed", "projection"))
    if self.adapt_image:
      self.image_adapter = dense(self.width, "image_adapter", (None, "embed"))
    self.logit_scale = self.param("logit_scale", layers.partitioned(
        nn.initializers.constant(self.logit_scale_init), ()), (), jnp.float32)
    self.itm_head = ITMHead(self.dtype, self.param_dtype)

  def encode(self, images: Array, tokens: Array, attention_mask: Array | None = None, *,
             train: bool = False) -> dict[str, Array]:
    """Unimodal pass: ``image_emb``/``text_emb`` (unit, float32), ``logit_scale`` (exp, capped),
    ``image_tokens`` [B, Ni, Di], ``text_tokens`` [B, Nt, Dt], ``text_valid`` [B, Nt]."""
    if self.image_pool not in IMAGE_POOLS:
      raise ValueError(f"fusion: image_pool={self.image_pool!r}; choose one of {IMAGE_POOLS}.")
    image_tokens = self.image(images, train=train)
    text_tokens = self.text(tokens, attention_mask, train=train)
    if attention_mask is not None:
      text_valid = attention_mask > 0
    elif self.pad_id is not None:
      text_valid = tokens != self.pad_id
    else:
      text_valid = jnp.ones(tokens.shape, bool)
    pooled_image = image_tokens[:, 0] if self.image_pool == "cls" else image_tokens.mean(1)
    pooled_text = text_lib.pool_sequence(text_tokens, tokens, text_valid, self.text_pool,
                                         self.eos_id)
    return {
        "image_emb": two_towers.l2_normalize(self.image_projection(pooled_image)),
        "text_emb": two_towers.l2_normalize(self.text_projection(pooled_text)),
        "logit_scale": jnp.minimum(jnp.exp(self.logit_scale), self.logit_scale_max),
        "image_tokens": image_tokens, "text_tokens": text_tokens, "text_valid": text_valid,
    }

  def match(self, image_tokens: Array, text_tokens: Array, text_valid: Array, *,
            train: bool = False) -> Array:
    """ITM logits [B, 2] for the pairs (image_tokens[b], text_tokens[b])."""
    if self.adapt_image:
      image_tokens = self.image_adapter(image_tokens)
    fused = self.fusion(image_tokens, text_tokens, text_valid, deterministic=not train)
    return self.itm_head(fused.pooled)

  def __call__(self, images: Array, tokens: Array, attention_mask: Array | None = None, *,
               train: bool = False) -> dict[str, Array]:
    """Contrastive outputs (as ``TwoTower``) plus ``itm_logits`` of the given (positive) pairs."""
    out = self.encode(images, tokens, attention_mask, train=train)
    itm = self.match(out["image_tokens"], out["text_tokens"], out["text_valid"], train=train)
    keys = ("image_emb", "text_emb", "logit_scale")
    return {**{k: out[k] for k in keys}, "itm_logits": itm}


def fusion_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
  """(config.model keys, config.model.fusion keys), each key -> ``Field(types, default)``.

  A function, not constants, so that ``builder`` may import this module at its top (the
  schemas need ``builder``'s finished attributes; the import cycle then resolves lazily).
  """
  model_keys = {key: builder.MODEL_KEYS[key] for key in (
      "name", "embed_dim", "logit_scale_init", "logit_scale_max", "dtype", "param_dtype",
      "remat", "scan_layers", "image", "text")}
  model_keys["fusion"] = builder.TOWER  # Checked below against fusion_keys.
  fusion_keys = {
      "kind": builder.Field((str,), builder.REQUIRED),
      "depth": builder.Field((int,), builder.REQUIRED),
      "num_heads": builder.Field((int,), builder.REQUIRED),
      "mlp_dim": builder.Field((int,), builder.REQUIRED),
      "num_kv_heads": builder.Field((int, type(None)), None),
      "activation": builder.Field((str,), "gelu"),
      "layer_norm_eps": builder.Field((int, float), 1e-5),
      "dropout_rate": builder.Field((int, float), 0.0),
  }
  return model_keys, fusion_keys


def _token_tower(section: Any, model: Mapping[str, Any], where: str) -> tuple[nn.Module, str]:
  """Builds a tower that returns its token sequence; returns it and its configured pooling."""
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  pool = values.get("pool", "cls" if values.get("name") == "vit" else "eos")
  allowed = IMAGE_POOLS if values.get("name") == "vit" else tuple(
      p for p in text_lib.POOLS if p != "none")
  if pool not in allowed:
    raise ValueError(f"{where}.pool={pool!r} cannot pool a fusion model's embedding; choose "
                     f"one of {allowed}.")
  values["pool"] = "none"
  if values.get("name") == "vit" and pool == "cls":
    values["class_token"] = True
  tower = builder.build_tower(values, dtype=model["dtype"], param_dtype=model["param_dtype"],
                              remat=model["remat"], scan_layers=model["scan_layers"])
  return tower, pool


def build_fusion_model(model_config: Any) -> FusionModel:
  """``config.model`` with name='fusion' -> ``FusionModel`` (see docs/models.md, Fusion)."""
  model_keys, fusion_keys = fusion_schemas()
  model = builder.resolve_keys(model_config, model_keys, "model")
  f = builder.resolve_keys(model["fusion"], fusion_keys, "model.fusion")
  if f["kind"] not in FUSIONS:
    raise ValueError(f"model.fusion.kind={f['kind']!r} is not known; choose one of "
                     f"{sorted(FUSIONS)}.")
  image, image_pool = _token_tower(model["image"], model, "model.image")
  text, text_pool = _token_tower(model["text"], model, "model.text")
  dtype = builder.parse_dtype(model["dtype"], "model.dtype")
  param_dtype = builder.parse_dtype(model["param_dtype"], "model.param_dtype")
  block = layers.BlockConfig(
      num_heads=f["num_heads"], mlp_dim=f["mlp_dim"], num_kv_heads=f["num_kv_heads"],
      activation=f["activation"], layer_norm_eps=float(f["layer_norm_eps"]),
      dropout_rate=float(f["dropout_rate"]), dtype=dtype, param_dtype=param_dtype)
  kwargs = dict(remat=model["remat"])
  if f["kind"] == "co_attention":
    kwargs["scan_layers"] = model["scan_layers"]
  fusion = FUSIONS[f["kind"]](f["depth"], block, **kwargs)
  return FusionModel(
      image=image, text=text, fusion=fusion, embed_dim=model["embed_dim"], width=text.width,
      image_pool=image_pool, text_pool=text_pool, eos_id=text.eos_id, pad_id=text.pad_id,
      adapt_image=image.width != text.width,
      logit_scale_init=float(model["logit_scale_init"]),
      logit_scale_max=float(model["logit_scale_max"]), dtype=dtype, param_dtype=param_dtype)
