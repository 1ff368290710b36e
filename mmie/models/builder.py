"""Builds models from ``config.model``: the only place config strings become modules.

Small explicit registries map names to constructors; every key is checked against the
constructor's schema so a typo fails with the key, its value and what is allowed.
"""

import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmie import schema as schema_lib
from mmie.models import layers
from mmie.models import remat as remat_lib
from mmie.models import text as text_lib
from mmie.models import two_towers
from mmie.models import vit as vit_lib

Field, REQUIRED = schema_lib.Field, schema_lib.REQUIRED
# A tower section; its keys depend on its ``name`` and are checked by its own builder.
TOWER = schema_lib.Section({}, required=True, open=True)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_INT, _FLOAT, _BOOL, _STR = (int,), (int, float), (bool,), (str,)
_OPT_INT, _OPT_FLOAT, _OPT_BOOL, _OPT_STR = (int, type(None)), (int, float, type(None)), \
    (bool, type(None)), (str, type(None))

def _positive_ints(value: Any) -> bool:
  """Every entry a positive int (bools are ints in Python and are refused)."""
  return all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)


# A list of layer widths, empty by default (no such layers).
WIDTHS = Field((list, tuple), (), _positive_ints, "a list of positive widths")


# model.remat: a rematerialisation policy of mmie/models/remat.py, or a bool.
REMAT = Field((bool, str), False, remat_lib.is_policy,
              f"a bool or a rematerialisation policy: {', '.join(remat_lib.POLICIES)}")


# key -> Field(allowed types, default). Keys absent from a config take the default.
MODEL_KEYS: schema_lib.Schema = {
    "name": Field(_STR, REQUIRED), "embed_dim": Field(_INT, REQUIRED),
    "logit_scale_init": Field(_FLOAT, math.log(1 / 0.07)), "logit_scale_max": Field(_FLOAT, 100.0),
    "logit_bias_init": Field(_OPT_FLOAT, None), "dtype": Field(_STR, "float32"),
    "param_dtype": Field(_STR, "float32"), "remat": REMAT,
    "scan_layers": Field(_BOOL, False), "attention": Field(_STR, "xla"), "image": TOWER,
    "text": TOWER,
}
_TOWER_COMMON = {  # remat / scan_layers None: the model-level value.
    "name": Field(_STR, REQUIRED), "activation": Field(_STR, "gelu"),
    "layer_norm_eps": Field(_FLOAT, 1e-5), "num_kv_heads": Field(_OPT_INT, None),
    "dropout_rate": Field(_FLOAT, 0.0), "remat": Field(_OPT_BOOL + _STR, None, REMAT.check, REMAT.allowed),
    "scan_layers": Field(_OPT_BOOL, None),
}
VIT_KEYS = {
    **_TOWER_COMMON, "image_size": Field(_INT, REQUIRED), "num_channels": Field(_INT, 3),
    "variant": Field(_OPT_STR, None), "patch_size": Field(_OPT_INT, None),
    "width": Field(_OPT_INT, None), "depth": Field(_OPT_INT, None),
    "num_heads": Field(_OPT_INT, None), "mlp_dim": Field(_OPT_INT, None),
    "pool": Field(_STR, "cls"), "class_token": Field(_OPT_BOOL, None), "ln_pre": Field(_BOOL, True),
    "patch_bias": Field(_BOOL, False), "positions": Field(_STR, "learned"),
    "stem_channels": WIDTHS,
}
TEXT_KEYS = {
    **_TOWER_COMMON, "vocab_size": Field(_INT, REQUIRED), "context_length": Field(_INT, REQUIRED),
    "width": Field(_INT, REQUIRED), "depth": Field(_INT, REQUIRED),
    "num_heads": Field(_INT, REQUIRED), "mlp_dim": Field(_INT, REQUIRED),
    "causal": Field(_BOOL, True), "pool": Field(_STR, "eos"), "eos_id": Field(_OPT_INT, None),
    "pad_id": Field(_OPT_INT, 0), "type_vocab_size": Field(_INT, 0),
    "embed_norm": Field(_BOOL, False), "final_norm": Field(_BOOL, True), "norm": Field(_STR, "pre"),
    "positions": Field(_STR, "learned"), "rope_base": Field(_FLOAT, 10_000.0),
}
_VARIANT_KEYS = ("patch_size", "width", "depth", "num_heads", "mlp_dim")


def _as_dict(section: Any) -> dict[str, Any]:
  if isinstance(section, ml_collections.ConfigDict):
    return section.to_dict()
  return dict(section)


def resolve_keys(section: Any, schema: schema_lib.Schema, where: str) -> dict[str, Any]:
  """Checks ``section`` against ``schema`` (unknown, missing, mistyped keys) and fills defaults.

  Errors are ``schema.ConfigError`` naming the key (``where.key``) and what is allowed.
  """
  values = _as_dict(section)
  schema_lib.check(values, schema, f"{where}.")
  return {key: values[key] if key in values else spec.default
          for key, spec in schema.items() if key in values or not spec.required}


def parse_dtype(name: str, where: str) -> Any:
  """'bfloat16' -> jnp.bfloat16, failing with the allowed names."""
  if name not in DTYPES:
    raise ValueError(f"{where}={name!r} is not a known dtype; choose one of {tuple(DTYPES)}.")
  return DTYPES[name]


def _tower_common(c: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
  return dict(
      activation=c["activation"], layer_norm_eps=float(c["layer_norm_eps"]),
      num_kv_heads=c["num_kv_heads"], dropout_rate=float(c["dropout_rate"]),
      remat=model["remat"] if c["remat"] is None else c["remat"],
      scan_layers=model["scan_layers"] if c["scan_layers"] is None else c["scan_layers"],
      attention=layers.check_attention(model.get("attention", "xla")),
      dtype=parse_dtype(model["dtype"], "model.dtype"),
      param_dtype=parse_dtype(model["param_dtype"], "model.param_dtype"))


def vit_sizes(c: dict[str, Any], where: str) -> dict[str, int]:
  """Size keys from ``variant`` and/or explicit keys; a disagreement between them is an error."""
  sizes = vit_lib.parse_variant(c["variant"]) if c["variant"] else {}
  for key in _VARIANT_KEYS:
    if c[key] is None:
      if key not in sizes:
        raise ValueError(f"{where}.{key} is required when {where}.variant is not set.")
    elif key in sizes and sizes[key] != c[key]:
      raise ValueError(f"{where}.variant={c['variant']!r} implies {key}={sizes[key]} but "
                       f"{where}.{key}={c[key]}; set {key} to None or drop the variant.")
    else:
      sizes[key] = c[key]
  return sizes


def _build_vit(section: Any, model: dict[str, Any], where: str) -> nn.Module:
  c = resolve_keys(section, VIT_KEYS, where)
  if c["pool"] not in vit_lib.POOLS:
    raise ValueError(f"{where}.pool={c['pool']!r} is not known; choose one of {vit_lib.POOLS}.")
  return vit_lib.VisionTransformer(
      image_size=c["image_size"], **vit_sizes(c, where), pool=c["pool"],
      class_token=c["class_token"], ln_pre=c["ln_pre"], patch_bias=c["patch_bias"],
      positions=c["positions"], stem_channels=tuple(c["stem_channels"]),
      **_tower_common(c, model))


def _build_text(section: Any, model: dict[str, Any], where: str) -> nn.Module:
  c = resolve_keys(section, TEXT_KEYS, where)
  if c["pool"] not in text_lib.POOLS:
    raise ValueError(f"{where}.pool={c['pool']!r} is not known; choose one of {text_lib.POOLS}.")
  if c["pool"] == "eos" and c["eos_id"] is None:
    raise ValueError(f"{where}.pool='eos' needs {where}.eos_id (the end-of-text token id).")
  keys = ("vocab_size", "context_length", "width", "depth", "num_heads", "mlp_dim", "causal",
          "pool", "eos_id", "pad_id", "type_vocab_size", "embed_norm", "final_norm", "norm",
          "positions")
  return text_lib.TextTransformer(**{k: c[k] for k in keys}, rope_base=float(c["rope_base"]),
                                  **_tower_common(c, model))


TOWER_SCHEMAS = {"vit": VIT_KEYS, "text_transformer": TEXT_KEYS}
IMAGE_TOWERS: dict[str, Callable[[Any, dict[str, Any], str], nn.Module]] = {"vit": _build_vit}
TEXT_TOWERS: dict[str, Callable[[Any, dict[str, Any], str], nn.Module]] = {
    "text_transformer": _build_text}


def lookup(registry: Mapping[str, Any], section: Any, where: str) -> Any:
  name = _as_dict(section).get("name")
  if name not in registry:
    raise ValueError(f"{where}.name={name!r} is not known; choose one of {sorted(registry)}.")
  return registry[name]


def build_image_tower(model_config: Any) -> nn.Module:
  """The image tower named by ``model.image.name`` (usable alone, e.g. for a classifier)."""
  model = resolve_keys(model_config, MODEL_KEYS, "model")
  return lookup(IMAGE_TOWERS, model["image"], "model.image")(model["image"], model,
                                                             "model.image")


def build_text_tower(model_config: Any) -> nn.Module:
  """The text tower named by ``model.text.name``."""
  model = resolve_keys(model_config, MODEL_KEYS, "model")
  return lookup(TEXT_TOWERS, model["text"], "model.text")(model["text"], model, "model.text")


def _build_two_tower(model_config: Any) -> nn.Module:
  model = resolve_keys(model_config, MODEL_KEYS, "model")
  return two_towers.TwoTower(
      image=build_image_tower(model_config), text=build_text_tower(model_config),
      embed_dim=model["embed_dim"], logit_scale_init=float(model["logit_scale_init"]),
      logit_scale_max=float(model["logit_scale_max"]),
      logit_bias_init=None if model["logit_bias_init"] is None
      else float(model["logit_bias_init"]),
      dtype=parse_dtype(model["dtype"], "model.dtype"),
      param_dtype=parse_dtype(model["param_dtype"], "model.param_dtype"))


def _build_fusion(model_config: Any) -> nn.Module:
  from mmie.models import fusion  # fusion builds on this module's tower builders.
  return fusion.build_fusion_model(model_config)


def _build_seq2seq(model_config: Any) -> nn.Module:
  from mmie.models import seq2seq
  return seq2seq.build_seq2seq(model_config)


def _build_lm(model_config: Any) -> nn.Module:
  from mmie.models import seq2seq
  return seq2seq.build_lm(model_config)


def _build_reward_model(model_config: Any) -> nn.Module:
  from mmie.models import lm_heads
  return lm_heads.build_reward_model(model_config)


def _build_text_classifier(model_config: Any) -> nn.Module:
  from mmie.models import text_classifier
  return text_classifier.build_text_classifier(model_config)


def _build_ppo_policy(model_config: Any) -> nn.Module:
  from mmie.models import ppo_policy
  return ppo_policy.build_ppo_policy(model_config)


def _build_image_encoder(model_config: Any) -> nn.Module:
  from mmie.models import vision
  return vision.build_image_encoder(model_config)


MODELS: dict[str, Callable[[Any], nn.Module]] = {
    "two_tower": _build_two_tower, "fusion": _build_fusion, "seq2seq": _build_seq2seq,
    "lm": _build_lm, "image_encoder": _build_image_encoder, "reward_model": _build_reward_model,
    "text_classifier": _build_text_classifier, "ppo_policy": _build_ppo_policy,
}


def model_schema(model_config: Any) -> dict[str, Any]:
  """The nested schema of ``config.model`` for its ``name`` (and its towers' names).

  Unknown names give an empty schema here; :func:`build_model` reports them.
  """
  values = _as_dict(model_config)
  name = values.get("name")
  if name == "two_tower" or name == "fusion":
    if name == "two_tower":
      keys = dict(MODEL_KEYS)
    else:
      from mmie.models import fusion  # pylint: disable=g-import-not-at-top
      keys, fusion_keys = fusion.fusion_schemas()
      keys["fusion"] = fusion_keys
    for tower in ("image", "text"):
      tower_name = _as_dict(values.get(tower) or {}).get("name")
      keys[tower] = TOWER_SCHEMAS.get(tower_name, {})
    return keys
  if name in ("seq2seq", "lm"):
    from mmie.models import seq2seq  # pylint: disable=g-import-not-at-top
    return seq2seq.schema(name)
  if name == "reward_model":
    from mmie.models import lm_heads  # pylint: disable=g-import-not-at-top
    return lm_heads.schema()
  if name == "text_classifier":
    from mmie.models import text_classifier  # pylint: disable=g-import-not-at-top
    return text_classifier.schema(model_config)
  if name == "ppo_policy":
    from mmie.models import ppo_policy  # pylint: disable=g-import-not-at-top
    return ppo_policy.schema()
  if name == "image_encoder":
    from mmie.models import vision  # pylint: disable=g-import-not-at-top
    keys = dict(vision.MODEL_KEYS)
    keys["image"] = TOWER_SCHEMAS.get(_as_dict(values.get("image") or {}).get("name"), {})
    return keys
  return {}


def fill_model_defaults(model_config: ml_collections.ConfigDict) -> None:
  """Writes every default of the model's schema into ``config.model`` (before locking)."""
  keys = model_schema(model_config)
  flat = {k: v for k, v in keys.items() if not isinstance(v, dict)}
  schema_lib.fill_defaults(model_config, flat)
  for key, sub in keys.items():
    if isinstance(sub, dict) and isinstance(model_config.get(key), ml_collections.ConfigDict):
      schema_lib.fill_defaults(model_config[key], sub)


def build_model(model_config: Any) -> nn.Module:
  """``config.model`` -> an unbound Flax module (see docs/models.md for every key)."""
  return lookup(MODELS, model_config, "model")(model_config)


def example_inputs(model_config: Any, batch_size: int = 1) -> tuple[jax.Array, jax.Array]:
  """Zero images [B, S, S, C] and tokens [B, context_length] with the configured shapes."""
  model = resolve_keys(model_config, MODEL_KEYS, "model")
  image, text = _as_dict(model["image"]), _as_dict(model["text"])
  size, channels = image["image_size"], image.get("num_channels", 3)
  return (jnp.zeros((batch_size, size, size, channels), jnp.float32),
          jnp.zeros((batch_size, text["context_length"]), jnp.int32))


def count_params(params: Any) -> int:
  """Number of scalars in a (boxed or plain) parameter tree."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(layers.unbox(params))))


def build_tower(section: Any, *, dtype: str = "float32", param_dtype: str = "float32",
                remat: bool = False, scan_layers: bool = False,
                attention: str = "xla") -> nn.Module:
  """One image or text tower from its config section alone (its ``name`` picks the kind)."""
  model = dict(dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers,
               attention=attention)
  name = _as_dict(section).get("name")
  if name in IMAGE_TOWERS:
    return IMAGE_TOWERS[name](section, model, "tower")
  if name in TEXT_TOWERS:
    return TEXT_TOWERS[name](section, model, "tower")
  raise ValueError(f"tower.name={name!r} is not known; choose one of "
                   f"{sorted(IMAGE_TOWERS) + sorted(TEXT_TOWERS)}.")
