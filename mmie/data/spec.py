"""``data.name`` resolved without preparing anything: the up-front check of the data spec.

A run prepares its data (array_record shards, a tokenizer) on first use, which takes from
seconds to hours. Before that, every term of the mixture is parsed, looked up in the source
registries, its arguments bound to the factory's signature, and the plan of a user source
(``folder``, ``webdataset``, ``idx``, ``sword``, ``pairs``, ...) built, which checks that its
files exist. Any mistake is a ConfigError naming ``data.name``.
"""

from __future__ import annotations

import os
from typing import Any

from mmie.data import catalog, parallel, sources
from mmie.data.schema import data_value
from mmie.registry import parse_call
from mmie.schema import ConfigError

_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, NotADirectoryError)

# The data views a task may ask for (``Task.data_view``) -> the kind of source each reads.
VIEW_KINDS = {
    "image_text": "image_text",        # {"image", "text"}: one random caption per image.
    "text": "image_text",              # {"text"}: the captions alone, images dropped.
    "parallel_text": "parallel_text",  # {"source", "target"}: sentence pairs.
}


def check_spec(data_config: Any) -> str:
  """Checks ``data_config.name``; returns its kind, ``'image_text'`` or ``'parallel_text'``."""
  spec = data_value(data_config, "name")
  try:
    kind = catalog.kind_of(spec)  # Every name looked up in the one catalog of sources.
    for term, _ in sources.parse_mixture(spec):
      _check_term(term, kind)
  except ConfigError:
    raise
  except _ERRORS as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise ConfigError(f"Config key data.name={spec!r}: {message}") from e
  return kind


def _check_term(term: str, kind: str) -> None:
  registry = parallel.PAIR_SOURCES if kind == "parallel_text" else (
      sources.PLANS if parse_call(term).name in sources.PLANS else sources.SOURCES)
  extra = {"data_dir": ""} if registry is sources.SOURCES else {}
  name, _, kwargs = registry.bind(term, **extra)
  path = kwargs.get("path") or kwargs.get("source_dir")
  if path and not os.path.exists(os.path.expanduser(path)):
    raise FileNotFoundError(f"{name}: {path} does not exist.")
  if registry is not sources.SOURCES:
    registry.build(term)  # A plan checks its own files and options; nothing is read yet.
