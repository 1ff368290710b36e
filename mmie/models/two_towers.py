"""Two-tower (dual encoder) model for CLIP, SigLIP and LiT.

Parameter subtrees have stable names the training engine's parameter rules can target:
``image``, ``text`` (the towers), ``image_projection``, ``text_projection``, ``logit_scale``
and, for SigLIP, ``logit_bias``. Locking a tower (LiT) is such a rule, not a model option.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

from mmie.models import layers

Array = jnp.ndarray


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """Unit-norm rows, in float32 so the contrastive logits are computed at full precision."""
  x = x.astype(jnp.float32)
  return x * jnp.reciprocal(jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps))


class TwoTower(nn.Module):
  """Image tower + text tower + bias-free linear projections into a shared ``embed_dim`` space.

  Attributes:
    image: image tower module mapping NHWC images to [B, width_image].
    text: text tower module mapping tokens [B, L] to [B, width_text].
    embed_dim: shared embedding width.
    logit_scale_init: initial value of the learnable log temperature (CLIP: log(1/0.07)).
    logit_scale_max: cap on exp(logit_scale) (CLIP: 100).
    logit_bias_init: None for CLIP; a float adds SigLIP's learnable logit bias.
  """

  image: nn.Module
  text: nn.Module
  embed_dim: int
  logit_scale_init: float = math.log(1 / 0.07)
  logit_scale_max: float = 100.0
  logit_bias_init: float | None = None
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def setup(self):
    if self.logit_scale_max <= 0 or self.logit_scale_init > math.log(self.logit_scale_max):
      raise ValueError(
          f"two_tower: exp(logit_scale_init)={math.exp(self.logit_scale_init):.4g} exceeds "
          f"logit_scale_max={self.logit_scale_max}; lower the init or raise the max.")
    projection = lambda name: nn.Dense(
        self.embed_dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name, kernel_init=layers.partitioned(nn.initializers.lecun_normal(),
                                                  ("embed", "projection")))
    self.image_projection = projection("image_projection")
    self.text_projection = projection("text_projection")
    constant = lambda value: layers.partitioned(nn.initializers.constant(value), ())
    self.logit_scale = self.param("logit_scale", constant(self.logit_scale_init), (),
                                  jnp.float32)
    if self.logit_bias_init is not None:
      self.logit_bias = self.param("logit_bias", constant(self.logit_bias_init), (),
                                   jnp.float32)

  def encode_image(self, images: Array, *, train: bool = False) -> Array:
    """[B, H, W, C] -> [B, embed_dim] projected, not normalised (like HF get_image_features)."""
    return self.image_projection(self.image(images, train=train))

  def encode_text(self, tokens: Array, attention_mask: Array | None = None, *,
                  train: bool = False) -> Array:
    """[B, L] tokens -> [B, embed_dim] projected, not normalised (like HF get_text_features)."""
    return self.text_projection(self.text(tokens, attention_mask, train=train))

  def scale(self) -> Array:
    """exp(logit_scale) clamped at logit_scale_max (zero gradient beyond the cap)."""
    return jnp.minimum(jnp.exp(self.logit_scale), self.logit_scale_max)

  def __call__(self, images: Array, tokens: Array, attention_mask: Array | None = None, *,
               train: bool = False) -> dict[str, Array]:
    """Returns L2-normalised ``image_emb`` / ``text_emb`` (float32), ``logit_scale``
    (exp-clamped) and, for SigLIP, ``logit_bias``: exactly the inputs of the loss heads."""
    out = {
        "image_emb": l2_normalize(self.encode_image(images, train=train)),
        "text_emb": l2_normalize(self.encode_text(tokens, attention_mask, train=train)),
        "logit_scale": self.scale(),
    }
    if self.logit_bias_init is not None:
      out["logit_bias"] = self.logit_bias
    return out
