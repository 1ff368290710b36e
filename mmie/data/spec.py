"""``data.name`` resolved without preparing anything: the up-front check of the data spec.

A run prepares its data (array_record shards, a tokenizer) on first use, which takes from
seconds to hours. Before that, every term of the mixture is parsed, looked up in the source
registries, its arguments bound to the factory's signature, and the plan of a user source
(``folder``, ``webdataset``, ``idx``, ``sword``, ``pairs``, ...) built, which checks that its
files exist. Any mistake is a ConfigError naming ``data.name``.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from mmie.data import catalog, parallel, sources, tokenizer as tokenizer_lib
from mmie.data.schema import data_value
from mmie.registry import parse_call
from mmie.schema import ConfigError

_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, NotADirectoryError)

# The data views a task may ask for (``Task.data_view``) -> the kind of source each reads.
VIEW_KINDS = {
    "image_text": "image_text",        # {"image", "text"}: one random caption per image.
    "text": "image_text",              # {"text"}: the captions alone, images dropped.
    "parallel_text": "parallel_text",  # {"source", "target"}: sentence pairs.
    "labelled_image": "image_text",    # {"image", "label"}: images and class ids.
    "two_views": "image_text",         # {"view_a", "view_b", "label"}: two augmentations.
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


def _bind_term(term: str, kind: str) -> tuple[Any, str, Any, dict[str, Any]]:
  """``(registry, name, factory, arguments)`` of one source term, nothing built."""
  registry = parallel.PAIR_SOURCES if kind == "parallel_text" else (
      sources.PLANS if parse_call(term).name in sources.PLANS else sources.SOURCES)
  extra = {"data_dir": ""} if registry is sources.SOURCES else {}
  return (registry, *registry.bind(term, **extra))


def _check_term(term: str, kind: str) -> None:
  registry, name, _, kwargs = _bind_term(term, kind)
  path = kwargs.get("path") or kwargs.get("source_dir")
  if path and not os.path.exists(os.path.expanduser(path)):
    raise FileNotFoundError(f"{name}: {path} does not exist.")
  if registry is not sources.SOURCES:
    registry.build(term)  # A plan checks its own files and options; nothing is read yet.


def whole_source(source: str) -> tuple[str, str]:
  """``source`` read whole, for evaluating a trained run on it: ``(data.name, data.eval_split)``.

  A source that splits its own files by hash (``folder``, ``webdataset``, ``pairs``:
  ``validation_fraction``) gets fraction 0, so every example lands in ``train``, the split
  then evaluated; one with a fixed held-out split (``idx``'s official test files, a catalog
  set) keeps ``validation``. A mixture is refused: its weights mean nothing to an evaluation.
  """
  try:
    terms = sources.parse_mixture(source)
    if len(terms) != 1 or terms[0][1] != 1.0:
      raise ValueError(f"give one source to evaluate on, not the mixture {source!r}.")
    term = terms[0][0]
    _, name, factory, kwargs = _bind_term(term, catalog.kind_of(source))
  except _ERRORS as e:
    raise ConfigError(f"--eval_data={source!r}: {e.args[0] if e.args else e}") from e
  if "validation_fraction" not in inspect.signature(factory).parameters:
    return term, "validation"
  kwargs["validation_fraction"] = 0.0
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  return f"{name}({args})", "train"


def is_parallel_text(data_config: Any) -> bool:
  """Whether ``data.name`` names translation pairs (mmie/data/parallel.py), not image-text."""
  return catalog.kind_of(data_value(data_config, "name")) == "parallel_text"


def resolve_view(data_config: Any, view: str | None) -> str:
  """``view`` checked against the data's kind; None: the data's own (image-text or pairs)."""
  kind = "parallel_text" if is_parallel_text(data_config) else "image_text"
  if view is None:
    return kind
  if view not in VIEW_KINDS:
    raise ValueError(f"unknown data view {view!r}; views are {sorted(VIEW_KINDS)}.")
  if VIEW_KINDS[view] != kind:
    raise ValueError(f"data view {view!r} reads {VIEW_KINDS[view].replace('_', '-')} sources, but "
                     f"data.name={data_value(data_config, 'name')!r} is "
                     f"{kind.replace('_', '-')} data.")
  return view


def tokenizer_path_for(data_config: Any) -> str:
  """``data.tokenizer`` (a tokenizer.json, HF directory or alias) if set, else the path of the
  first source's own tokenizer."""
  path = data_value(data_config, "tokenizer")
  if not path:
    if is_parallel_text(data_config):
      path = parallel.sources_for(data_config)[0][0].tokenizer_path
    else:
      path = sources.source_for(data_config).tokenizer_path
  return tokenizer_lib.resolve_alias(path)


def tokenizer_for(data_config: Any) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer (``tokenizer_path_for``), loaded."""
  return tokenizer_lib.load_tokenizer(tokenizer_path_for(data_config))
