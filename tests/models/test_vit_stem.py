"""The ViT's convolutional stem (Xiao et al. 2021): shapes, parameter counts, errors."""

import jax
import jax.numpy as jnp
import pytest

from mmie import models
from mmie import schema
from mmie.models import vit

WIDTH = 16


def _vit(image_size: int, patch_size: int, stem=(), pool="none") -> vit.VisionTransformer:
  return vit.VisionTransformer(image_size=image_size, patch_size=patch_size, width=WIDTH,
                               depth=1, num_heads=2, mlp_dim=32, pool=pool,
                               class_token=True, stem_channels=stem)


def _params(module, image_size):
  images = jnp.zeros((1, image_size, image_size, 3))
  return jax.eval_shape(module.init, jax.random.key(0), images)["params"]


def test_stem_halves_the_side_rounding_up_and_sets_the_token_count():
  module = _vit(28, 1, stem=(4, 8, 8))  # 28 -> 14 -> 7 -> 4.
  assert module.stem_side == 4
  out = jax.eval_shape(lambda: module.init_with_output(
      jax.random.key(0), jnp.zeros((2, 28, 28, 3)))[0])
  assert out.shape == (2, 1 + 4 * 4, WIDTH)


def test_stem_parameters_are_the_hand_count():
  """Same transformer on the same 7x7 token grid, with and without a (8, 16) stem: the
  difference is each conv's 3*3*c_in*c_out weights + its LayerNorm's 2*c_out, plus the
  patch embedding reading 16 channels instead of 3."""
  stem = (8, 16)
  with_stem = models.count_params(_params(_vit(28, 1, stem), 28))
  plain = models.count_params(_params(_vit(7, 1), 7))
  c_in, expected = 3, 0
  for c_out in stem:
    expected += 3 * 3 * c_in * c_out + 2 * c_out
    c_in = c_out
  expected += (stem[-1] - 3) * WIDTH  # 1x1 patch embedding, no bias.
  assert with_stem - plain == expected


def test_stem_output_not_divisible_by_the_patch_names_the_stem():
  with pytest.raises(ValueError, match=r"after the 2-conv stem: 7\) is not divisible"):
    _vit(28, 2, stem=(4, 8)).init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)))


def test_builder_reads_and_checks_stem_channels():
  tower = models.build_tower(dict(name="vit", image_size=28, patch_size=1, width=WIDTH,
                                  depth=1, num_heads=2, mlp_dim=32, stem_channels=(8, 8)))
  assert tower.stem_channels == (8, 8) and tower.stem_side == 7
  with pytest.raises(schema.ConfigError, match="stem_channels"):
    models.build_tower(dict(name="vit", image_size=28, patch_size=1, width=WIDTH, depth=1,
                            num_heads=2, mlp_dim=32, stem_channels=(8, 0)))
