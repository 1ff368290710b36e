"""Typed preset arguments (``configs/clip.py:b16,batch=4096``) and the pod presets they set."""

import pytest

from mmie import config as config_lib
from mmie.configs import clip, presets, siglip
from mmie.models import build_model

PRESETS = {"default": {}, "big": {"batch": 8, "rate": 0.5, "remat": True, "name": "x"}}


@pytest.mark.parametrize("arg,want", [
    (None, ("default", {})),
    ("", ("default", {})),
    ("big", ("big", {"batch": 8, "rate": 0.5, "remat": True, "name": "x"})),
    ("big, batch=32 ,remat=false,rate=1e-3,name=y",
     ("big", {"batch": 32, "rate": 1e-3, "remat": False, "name": "y"})),
    ("big,remat=1", ("big", {"batch": 8, "rate": 0.5, "remat": True, "name": "x"})),
])
def test_parse(arg, want):
  assert presets.parse(arg, "c.py", PRESETS) == want


@pytest.mark.parametrize("arg,fragments", [
    ("huge", ["unknown preset 'huge'", "['big', 'default']"]),
    ("big,batch=32k", ["batch='32k' is not of type int", "default 8"]),
    ("big,remat=maybe", ["remat='maybe' is not of type bool"]),
    ("big,size=3", ["has no argument 'size'", "['batch', 'name', 'rate', 'remat']"]),
    ("default,batch=3", ["preset 'default' has no argument 'batch'", "none"]),
    ("big,batch", ["'batch' is not key=value"]),
])
def test_parse_errors_name_the_argument(arg, fragments):
  with pytest.raises(ValueError) as error:
    presets.parse(arg, "c.py", PRESETS)
  for fragment in fragments:
    assert fragment in str(error.value)


def _sizes(config):
  image, text = config.model.image, config.model.text
  return ((image.patch_size, image.width, image.depth, image.num_heads, image.mlp_dim),
          (text.width, text.depth, text.num_heads, text.mlp_dim), config.model.embed_dim)


def test_pod_presets_are_the_published_architectures_at_pod_settings():
  b16 = config_lib.validate(clip.get_config("b16,batch=4096,fsdp=16,model=2,remat=false"))
  # Radford et al. (2021), table 19 / 20: ViT-B/16 and its text transformer.
  assert _sizes(b16) == ((16, 768, 12, 12, 3072), (512, 12, 8, 2048), 512)
  assert (b16.model.image.image_size, b16.model.text.context_length) == (224, 77)
  assert b16.batch_size == 4096 and dict(b16.mesh) == {"data": -1, "fsdp": 16, "model": 2}
  assert (b16.model.dtype, b16.model.param_dtype, b16.model.remat) == (
      "bfloat16", "float32", "none")
  assert b16.loss.name == "clip(axis_name=('data', 'fsdp'), block_size=2048)"
  l14 = config_lib.validate(clip.get_config("l14"))
  assert _sizes(l14) == ((14, 1024, 24, 16, 4096), (768, 12, 12, 3072), 768)
  assert l14.batch_size == clip.POD_ARGUMENTS["batch"] and l14.model.scan_layers
  assert l14.model.remat == "full"
  assert config_lib.validate(clip.get_config("l14,remat=dots")).model.remat == "dots"
  with pytest.raises(config_lib.ConfigError, match="rematerialisation policy: none, full"):
    build_model(clip.get_config("l14,remat=some").model)
  so400m = config_lib.validate(siglip.get_config("so400m"))
  # Alabdulmohsin et al. (2023): width 1152, depth 27, MLP 4304, 16 heads.
  assert _sizes(so400m) == ((14, 1152, 27, 16, 4304), (1152, 27, 16, 4304), 1152)
  assert so400m.loss.name.startswith("siglip(") and so400m.model.logit_bias_init == -10.0
  assert not so400m.model.text.causal


def test_small_presets_are_unchanged_by_the_argument_parser():
  assert config_lib.validate(clip.get_config("tiny")).batch_size == 16
  assert config_lib.validate(clip.get_config(None)).batch_size == 128
  assert config_lib.validate(siglip.get_config("tiny")).loss.name == "siglip"


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def test_default_is_the_base_plus_the_generalisation_settings():
  """docs/experiments.md's winner, and nothing else, separates the default from ``base``."""
  base = _flat(config_lib.to_dict(config_lib.validate(clip.get_config("base"))))
  default = _flat(config_lib.to_dict(config_lib.validate(clip.get_config("default"))))
  changed = {k: (base.get(k), default.get(k)) for k in base.keys() | default.keys()
             if base.get(k) != default.get(k)}
  assert changed == {
      "data.tokenizer": ("", "bert_uncased"), "model.text.vocab_size": (1024, 30522),
      "model.text.eos_id": (2, 102), "data.augment.random_resized_crop": (False, True),
      "data.augment.crop_scale": ([0.5, 1.0], [0.6, 1.0]), "total_steps": (500, 1000),
      "eval_every": (250, 500)}
  # The recipes built on CLIP keep the base their README figures were measured on.
  assert siglip.get_config().data.tokenizer == "" and siglip.get_config().total_steps == 500
