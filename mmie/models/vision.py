"""Image-only models: one image tower with the heads the vision tasks need.

``ImageEncoder`` = a pooled image tower (ViT) + optional projector MLP (SimCLR / MoCo /
VICReg / Barlow Twins), optional predictor MLP (BYOL / SimSiam / MoCo v3) and optional linear
classifier. ``model.name = "image_encoder"``; every head is off unless configured, so the same
module is the SSL backbone (``projector``), the ViT classifier (``num_classes``) and the
"contrastive + classification" multitask model (both).

Projector and predictor layers are ``Dense -> LayerNorm -> GELU`` with a bare final ``Dense``:
the papers' BatchNorm needs batch statistics in the train state and cross-device averaging,
and with ViT backbones LayerNorm heads are the common replacement (DINO, MoCo v3's ViT heads
keep BN only in the last layer). ``encode_image`` returns the tower's pooled features, before
any head, which is what kNN and linear probes read (as in every SSL paper).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmie import schema as schema_lib
from mmie.models import builder
from mmie.models import layers

Array = jnp.ndarray


class MLPHead(nn.Module):
  """``Dense -> LayerNorm -> GELU`` for every hidden width, then a bare ``Dense(dims[-1])``."""

  dims: Sequence[int]
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i, width in enumerate(self.dims):
      last = i == len(self.dims) - 1
      x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}",
                   kernel_init=layers.partitioned(nn.initializers.lecun_normal(),
                                                  ("embed", None if last else "mlp")),
                   bias_init=layers.partitioned(nn.initializers.zeros,
                                                (None if last else "mlp",)))(x)
      if not last:
        x = layers.layer_norm(f"norm_{i}", 1e-5, self.dtype, self.param_dtype)(x)
        x = nn.gelu(x, approximate=False)
    return x


class ImageEncoder(nn.Module):
  """A pooled image tower and its optional heads (see the module docstring).

  ``__call__(images, train)`` -> ``features`` [B, width] (the tower's pooled output),
  ``z`` [B, projector[-1]] (``features`` when there is no projector), ``p`` (the predictor
  on ``z``; present with a predictor) and ``logits`` [B, num_classes] float32 (with a
  classifier). Heads read float32-cast features so their outputs are float32 under bfloat16.
  """

  tower: nn.Module
  projector: tuple[int, ...] = ()
  predictor: tuple[int, ...] = ()
  num_classes: int = 0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def setup(self):
    head = lambda dims, name: MLPHead(dims, self.dtype, self.param_dtype, name=name)
    self.projector_head = head(self.projector, "projector") if self.projector else None
    self.predictor_head = head(self.predictor, "predictor") if self.predictor else None
    if self.num_classes:
      self.classifier = nn.Dense(
          self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier",
          kernel_init=layers.partitioned(nn.initializers.zeros, ("embed", None)),
          bias_init=layers.partitioned(nn.initializers.zeros, (None,)))

  def encode_image(self, images: Array, train: bool = False) -> Array:
    """Pooled backbone features [B, width], float32: what probes and kNN evaluate."""
    return self.tower(images, train=train).astype(jnp.float32)

  def __call__(self, images: Array, train: bool = False) -> dict[str, Array]:
    features = self.encode_image(images, train=train)
    out = {"features": features}
    z = features if self.projector_head is None else self.projector_head(features)
    out["z"] = z.astype(jnp.float32)
    if self.predictor_head is not None:
      out["p"] = self.predictor_head(z).astype(jnp.float32)
    if self.num_classes:
      out["logits"] = self.classifier(features).astype(jnp.float32)
    return out


MODEL_KEYS: schema_lib.Schema = {
    "name": builder.Field((str,)),
    "image": builder.TOWER,
    "projector": builder.WIDTHS, "predictor": builder.WIDTHS,
    "num_classes": builder.Field((int,), 0, lambda n: n >= 0, ">= 0"),
    "dtype": builder.Field((str,), "float32"), "param_dtype": builder.Field((str,), "float32"),
    "remat": builder.REMAT, "scan_layers": builder.Field((bool,), False),
}


def build_image_encoder(model_config: Any) -> ImageEncoder:
  """``config.model`` with name='image_encoder' -> ``ImageEncoder`` (docs/models.md)."""
  model = builder.resolve_keys(model_config, MODEL_KEYS, "model")
  tower = builder.lookup(builder.IMAGE_TOWERS, model["image"], "model.image")(
      model["image"], model, "model.image")
  if getattr(tower, "pool", "cls") == "none":
    raise schema_lib.ConfigError("Config key model.image.pool='none' gives token sequences; an "
                                 "image_encoder needs pooled features: use 'cls' or 'gap'.")
  if model["predictor"] and not model["projector"]:
    raise schema_lib.ConfigError("Config key model.predictor is set without model.projector; "
                                 "the predictor reads the projection.")
  if model["predictor"] and model["predictor"][-1] != model["projector"][-1]:
    raise schema_lib.ConfigError(
        f"Config key model.predictor={model['predictor']!r} must end at the projection width "
        f"{model['projector'][-1]} (the predictor's output is compared with a projection).")
  return ImageEncoder(
      tower=tower, projector=tuple(model["projector"]), predictor=tuple(model["predictor"]),
      num_classes=int(model["num_classes"]),
      dtype=builder.parse_dtype(model["dtype"], "model.dtype"),
      param_dtype=builder.parse_dtype(model["param_dtype"], "model.param_dtype"))
