"""Schema of ``config.data`` and ``config.data.augment`` (JAX-, tfds- and grain-free).

``data.name`` is a source call-string or a weighted mixture (mmie/data/sources.py,
mmie/data/parallel.py); it is parsed and checked against the source registries before
anything is prepared (:func:`mmie.data.sources.check_spec`).
"""

from __future__ import annotations

from typing import Any

from mmie.schema import ConfigError, Field, Section, non_negative, positive

_NUM = (int, float)
_SEQ = (list, tuple)
_OPT_INT = (int, type(None))


def _views_ok(text: str) -> bool:
  """The ``views`` check: raises with the specific reason, which a bool could not carry."""
  from mmie.data import ssl_augment  # numpy + PIL; deferred so the schema imports light.
  try:
    ssl_augment.resolve_views(text)
  except ValueError as e:  # The specific reason (unknown field, value out of range).
    raise ConfigError(f"Config key {e}") from None
  return True


AUGMENT = {
    "random_flip": Field((bool,), False),
    "random_resized_crop": Field((bool,), False),
    "crop_scale": Field(_SEQ, (0.5, 1.0), lambda s: len(s) == 2 and 0 < s[0] <= s[1] <= 1,
                        "(min, max) area fractions with 0 < min <= max <= 1"),
    "color_jitter": Field(_NUM, 0.0, lambda x: 0 <= x <= 1, "in [0, 1]"),
    # Pad-and-crop: shift by up to this many pixels per axis, after the other steps.
    "random_translate": Field((int,), 0, lambda x: 0 <= x <= 64, "0 (off) to 64 pixels"),
    # The two_views data view's preset, with optional field overrides (a call-string, see
    # mmie/data/ssl_augment.py resolve_views).
    "views": Field((str,), "simclr", _views_ok,
                   "a preset 'simclr', 'byol' or 'vicreg', optionally with view fields, e.g. "
                   "\"simclr(crop_scale=(0.5, 1.0))\" (fields: mmie/data/ssl_augment.py ViewSpec)"),
}

_THREE = lambda s: len(s) == 3 and all(isinstance(x, (int, float)) for x in s)

DATA = {
    "name": Field((str,), "emoji", lambda s: bool(s.strip()),
                  "a data source call-string such as 'emoji' or \"folder(path='~/pets')\""),
    "data_dir": Field((str,), "", allowed="a directory ('' = $MMIE_DATA_DIR or ~/.cache)"),
    "image_size": Field(_OPT_INT, None, positive, "a positive number of pixels"),
    "context_length": Field(_OPT_INT, None, lambda x: x >= 2, ">= 2 tokens"),
    "prompt_length": Field(_OPT_INT, None, lambda x: x >= 2,
                           ">= 2 tokens (BOS and the prompt): the 'prompts' view's width"),
    "tokenizer": Field((str,), "", allowed="'' (the source's own), a tokenizer.json, an HF"
                       " tokenizer directory, or an alias: 'bert_uncased' (shipped), 'minilm'"),
    "cache_mb": Field(_NUM, 1024, non_negative, ">= 0 MiB"),
    "worker_count": Field((int,), 0, non_negative, ">= 0 grain worker processes"),
    "train_split": Field((str,), "train"),
    "eval_split": Field((str,), "validation"),
    "prompt_templates": Field(_SEQ, ("{}",), lambda t: len(t) > 0 and all(
        isinstance(x, str) and "{}" in x for x in t),
                              "a non-empty list of strings each containing '{}'"),
    "mean": Field(_SEQ + (type(None),), None, _THREE, "None (CLIP's RGB mean) or 3 numbers"),
    "std": Field(_SEQ + (type(None),), None, _THREE, "None (CLIP's RGB std) or 3 numbers"),
    "augment": Section(AUGMENT),
}


def data_value(data_config: Any, key: str, section: str = "") -> Any:
  """``data.KEY`` (or ``data.augment.KEY`` with ``section='augment'``) of a ConfigDict or a
  plain dict, else the schema's default: the one place a data key's default is written."""
  schema = AUGMENT if section == "augment" else DATA
  if key not in schema:
    raise KeyError(f"data{'.' + section if section else ''}.{key} is not a data config key.")
  node = data_config
  if section:
    try:
      node = data_config[section]
    except (KeyError, AttributeError, TypeError):
      node = {}
  try:
    value = node[key]
  except (KeyError, AttributeError, TypeError):
    value = None
  return schema[key].default if value is None else value
