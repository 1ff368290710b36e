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

from mmie.data import catalog, parallel, sources, text_records, tokenizer as tokenizer_lib
from mmie.data.schema import data_value
from mmie.registry import parse_call
from mmie.schema import ConfigError

_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, NotADirectoryError)

# The data views a task may ask for (``Task.data_view``) -> the kinds of source each reads.
VIEW_KINDS = {
    "image_text": ("image_text",),         # {"image", "text"}: one random caption per image.
    "text": ("image_text", "text_records"),  # {"text"}: captions (images dropped) or texts.
    "parallel_text": ("parallel_text",),   # {"source", "target"}: sentence pairs.
    "labelled_image": ("image_text",),     # {"image", "label"}: images and class ids.
    "two_views": ("image_text",),          # {"view_a", "view_b", "label"}: two augmentations.
    # Rows of text records (mmie/data/record_views.py):
    "labelled_text": ("text_records",),    # {"text", "label"}: the safety classifier's.
    "preference": ("text_records",),       # {"chosen", "rejected", masks}: reward model, DPO.
    "prompts": ("text_records",),          # {"prompt", "prompt_length"}: PPO's rollouts.
}


def check_spec(data_config: Any) -> str:
  """Checks ``data_config.name``; returns its kind (``catalog.KINDS``)."""
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
  registry = {"parallel_text": parallel.PAIR_SOURCES,
              "text_records": text_records.RECORD_SOURCES}.get(kind) or (
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


def data_kind(data_config: Any) -> str:
  """The kind of records ``data.name`` yields (``catalog.KINDS``)."""
  return catalog.kind_of(data_value(data_config, "name"))


def is_parallel_text(data_config: Any) -> bool:
  """Whether ``data.name`` names translation pairs (mmie/data/parallel.py), not image-text."""
  return data_kind(data_config) == "parallel_text"


def resolve_view(data_config: Any, view: str | None) -> str:
  """``view`` checked against the data's kind; None: the data's own (image-text or pairs)."""
  kind = data_kind(data_config)
  if view is None:
    if kind == "text_records":
      raise ValueError(f"data.name={data_value(data_config, 'name')!r} is text records, whose "
                       "batches depend on the task: name a view ("
                       + ", ".join(v for v, k in VIEW_KINDS.items() if kind in k) + ").")
    return kind
  if view not in VIEW_KINDS:
    raise ValueError(f"unknown data view {view!r}; views are {sorted(VIEW_KINDS)}.")
  if kind not in VIEW_KINDS[view]:
    wanted = " or ".join(k.replace("_", "-") for k in VIEW_KINDS[view])
    raise ValueError(f"data view {view!r} reads {wanted} sources, but "
                     f"data.name={data_value(data_config, 'name')!r} is "
                     f"{kind.replace('_', '-')} data.")
  return view


def tokenizer_path_for(data_config: Any) -> str:
  """``data.tokenizer`` (a tokenizer.json, HF directory or alias) if set, else the path of the
  first source's own tokenizer."""
  path = data_value(data_config, "tokenizer")
  if not path:
    kind = data_kind(data_config)
    if kind in ("parallel_text", "text_records"):
      module = parallel if kind == "parallel_text" else text_records
      path = module.sources_for(data_config)[0][0].tokenizer_path
    else:
      path = sources.source_for(data_config).tokenizer_path
  return tokenizer_lib.resolve_alias(path)


def tokenizer_for(data_config: Any) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer (``tokenizer_path_for``), loaded."""
  return tokenizer_lib.load_tokenizer(tokenizer_path_for(data_config))
