"""ViT size strings: parsing, and parameter counts against transformers' own models."""

import jax
import jax.numpy as jnp
import pytest

from mmie import models
from mmie.models import vit

transformers = pytest.importorskip("transformers")


def _count_hf(model_cls, config) -> int:
  hf = model_cls(config, _do_init=False)
  shapes = jax.eval_shape(lambda: hf.init_weights(jax.random.key(0), hf.input_shape))
  return models.count_params(shapes)


def _count_ours(variant: str, image_size: int, **keys) -> int:
  section = dict(name="vit", image_size=image_size, variant=variant, **keys)
  tower = models.build_tower(section)
  images = jnp.zeros((1, image_size, image_size, 3))
  return models.count_params(jax.eval_shape(tower.init, jax.random.key(0), images)["params"])


def test_parse_variant():
  assert vit.parse_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                                           patch_size=16)
  assert vit.parse_variant("mu/4")["patch_size"] == 4
  for bad in ("B16", "X/16", "B/sixteen"):
    with pytest.raises(ValueError, match="is not of the form SIZE/PATCH"):
      vit.parse_variant(bad)


@pytest.mark.parametrize("variant", ["Ti/16", "B/32"])
def test_vit_variant_counts_match_hf_vit(variant):
  """HF ViT layout: patch bias, class token, no ln_pre; HF's pooler head is not ours."""
  sizes = vit.parse_variant(variant)
  config = transformers.ViTConfig(
      hidden_size=sizes["width"], num_hidden_layers=sizes["depth"],
      intermediate_size=sizes["mlp_dim"], num_attention_heads=sizes["num_heads"],
      patch_size=sizes["patch_size"], image_size=224)
  expected = _count_hf(transformers.FlaxViTModel, config) - (sizes["width"] + 1) * sizes["width"]
  assert _count_ours(variant, 224, patch_bias=True, ln_pre=False) == expected


@pytest.mark.slow
def test_vit_l14_count_matches_hf_clip_vision():
  """CLIP layout (ln_pre, no patch bias), the largest preset, from shapes alone."""
  sizes = vit.parse_variant("L/14")
  config = transformers.CLIPVisionConfig(
      hidden_size=sizes["width"], num_hidden_layers=sizes["depth"],
      intermediate_size=sizes["mlp_dim"], num_attention_heads=sizes["num_heads"],
      patch_size=14, image_size=224)
  ours = _count_ours("L/14", 224)
  assert ours == _count_hf(transformers.FlaxCLIPVisionModel, config) == 303_179_776
