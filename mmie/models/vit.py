"""Vision Transformer image tower (Dosovitskiy et al. 2021), CLIP / ViT / big_vision flavours.

The tower returns pooled features of width ``width`` (or the token sequence with
``pool='none'``); projections to a shared embedding space belong to the two-tower model.
"""

import flax.linen as nn
import jax.numpy as jnp

from mmie.models import layers
from mmie.models import positions as positions_lib

Array = jnp.ndarray

POOLS = ("cls", "gap", "map", "none")

# name -> (width, depth, mlp_dim, num_heads); "B/16" = size B with patch 16.
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 64, 2),       # Test size: one layer, seconds to compile.
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}


def parse_variant(variant: str) -> dict[str, int]:
  """'B/16' -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)."""
  size, sep, patch = variant.partition("/")
  if not sep or size not in VIT_SIZES or not patch.isdigit():
    raise ValueError(
        f"ViT variant={variant!r} is not of the form SIZE/PATCH with SIZE one of "
        f"{tuple(VIT_SIZES)} and PATCH an integer, e.g. 'B/16' or 'mu/8'.")
  width, depth, mlp_dim, num_heads = VIT_SIZES[size]
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
              patch_size=int(patch))


class MAPHead(nn.Module):
  """Multihead attention pooling (Lee et al. 2019, as in big_vision): a learned probe query."""

  num_heads: int
  mlp_dim: int
  activation: str = "gelu"
  layer_norm_eps: float = 1e-5
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    probe = self.param("probe", layers.partitioned(nn.initializers.xavier_uniform(),
                                                   (None, None, "embed")),
                       (1, 1, width), self.param_dtype)
    probe = jnp.broadcast_to(probe, (x.shape[0], 1, width)).astype(self.dtype)
    y = layers.MultiHeadAttention(self.num_heads, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name="attention")(probe, x)
    norm = layers.layer_norm("norm", self.layer_norm_eps, self.dtype, self.param_dtype)
    y = y + layers.MLP(self.mlp_dim, activation=self.activation, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="mlp")(norm(y))
    return y[:, 0]


class VisionTransformer(nn.Module):
  """ViT over NHWC float images.

  Attributes:
    pool: 'cls' (class token), 'gap' (mean of patch tokens), 'map' (attention pooling),
      'none' (return the [B, tokens, width] sequence).
    class_token: prepend a learned class token; None means "only when pool == 'cls'".
    ln_pre: LayerNorm after the embeddings (CLIP has it, ViT does not).
    patch_bias: bias on the patch projection (ViT has it, CLIP does not).
    positions: 'learned' or 'sinusoidal' (fixed 2-D sin-cos).
    stem_channels: widths of 3x3 stride-2 convolutions (each + LayerNorm + GELU) run before
      the patch embedding, which then patchifies the stem's map: the convolutional stem of
      Xiao et al. 2021 ("Early convolutions help transformers see better"), which trains
      faster and more stably than a patchify stem at the same token count. Each halves the
      side (SAME padding, rounding up); () is the plain ViT.
  """

  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  pool: str = "cls"
  class_token: bool | None = None
  ln_pre: bool = True
  patch_bias: bool = False
  positions: str = "learned"
  stem_channels: tuple[int, ...] = ()
  activation: str = "gelu"
  layer_norm_eps: float = 1e-5
  num_kv_heads: int | None = None
  dropout_rate: float = 0.0
  remat: bool | str = False
  scan_layers: bool = False
  attention: str = "xla"
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def _check(self, images: Array) -> int:
    if self.pool not in POOLS:
      raise ValueError(f"vit: pool={self.pool!r} is not known; choose one of {POOLS}.")
    if self.positions not in ("learned", "sinusoidal"):
      raise ValueError(f"vit: positions={self.positions!r}; choose 'learned' or 'sinusoidal'.")
    side = self.stem_side
    if side % self.patch_size:
      stem = f" (after the {len(self.stem_channels)}-conv stem: {side})" if self.stem_channels \
          else ""
      raise ValueError(f"vit: image_size={self.image_size}{stem} is not divisible by "
                       f"patch_size={self.patch_size}.")
    if images.ndim != 4 or images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"vit: expected NHWC images of {self.image_size}x{self.image_size}; "
                       f"got shape {images.shape}.")
    return side // self.patch_size

  @property
  def stem_side(self) -> int:
    """Side of the map the patch embedding sees: each stride-2 SAME conv rounds up."""
    side = self.image_size
    for _ in self.stem_channels:
      side = -(-side // 2)
    return side

  def _stem(self, x: Array) -> Array:
    for i, channels in enumerate(self.stem_channels):
      x = nn.Conv(channels, (3, 3), strides=2, padding="SAME", use_bias=False,
                  dtype=self.dtype, param_dtype=self.param_dtype, name=f"stem_conv{i}",
                  kernel_init=layers.partitioned(nn.initializers.he_normal(),
                                                 (None, None, None, None)))(x)
      x = nn.LayerNorm(  # Replicated: stem widths are not the model's 'embed' axis.
          epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
          name=f"stem_norm{i}", scale_init=layers.partitioned(nn.initializers.ones, (None,)),
          bias_init=layers.partitioned(nn.initializers.zeros, (None,)))(x)
      x = nn.gelu(x)
    return x

  def _embed(self, images: Array, grid: int) -> Array:
    x = self._stem(images.astype(self.dtype))
    x = nn.Conv(
        self.width, (self.patch_size, self.patch_size), strides=self.patch_size,
        padding="VALID", use_bias=self.patch_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name="patch_embed",
        kernel_init=layers.partitioned(nn.initializers.lecun_normal(),
                                       (None, None, None, "embed")),
        bias_init=layers.partitioned(nn.initializers.zeros, ("embed",)),
    )(x)
    x = x.reshape(x.shape[0], grid * grid, self.width)
    use_cls = self.pool == "cls" if self.class_token is None else self.class_token
    if self.pool == "cls" and not use_cls:
      raise ValueError("vit: pool='cls' needs class_token=True (or None).")
    if use_cls:
      cls = self.param("cls_token", layers.partitioned(nn.initializers.normal(0.02), ("embed",)),
                       (self.width,), self.param_dtype)
      cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width))
      x = jnp.concatenate([cls, x], axis=1)
    if self.positions == "learned":
      table = self.param("pos_embed",
                         layers.partitioned(nn.initializers.normal(0.02), ("length", "embed")),
                         (x.shape[1], self.width), self.param_dtype)
    else:
      table = positions_lib.sincos_2d(grid, grid, self.width)
      if use_cls:  # The class token gets the zero position, as in MoCo v3.
        table = jnp.concatenate([jnp.zeros((1, self.width)), table], axis=0)
    return x + jnp.asarray(table, self.dtype)[None]

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    """[B, H, W, C] images -> [B, width] pooled features ([B, tokens, width] for pool='none')."""
    grid = self._check(images)
    x = self._embed(images, grid)
    norm = lambda name: layers.layer_norm(name, self.layer_norm_eps, self.dtype,
                                          self.param_dtype)
    if self.ln_pre:
      x = norm("ln_pre")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    block = layers.BlockConfig(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_kv_heads=self.num_kv_heads,
        activation=self.activation, layer_norm_eps=self.layer_norm_eps,
        dropout_rate=self.dropout_rate, attention=self.attention, dtype=self.dtype,
        param_dtype=self.param_dtype)
    x = layers.TransformerEncoder(self.depth, block, remat=self.remat,
                                  scan_layers=self.scan_layers, name="encoder")(
                                      x, None, not train)
    x = norm("ln_post")(x)
    num_prefix = x.shape[1] - grid * grid
    if self.pool == "cls":
      return x[:, 0]
    if self.pool == "gap":
      return jnp.mean(x[:, num_prefix:], axis=1)
    if self.pool == "map":
      return MAPHead(self.num_heads, self.mlp_dim, activation=self.activation,
                     layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="map_head")(x[:, num_prefix:])
    return x
