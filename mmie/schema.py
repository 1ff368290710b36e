"""The one vocabulary of config schemas: typed fields with defaults and checks, in sections.

Each module owns the schema of its own config section (``mmie/train/schema.py`` the optimizer
and ``train``, ``mmie/data/schema.py`` the data, ``mmie/models/builder.py`` the model, the
evaluator registry each evaluator's keys); ``mmie/config.py`` assembles them. Two operations
serve every section:

* :func:`fill_defaults` writes every missing key's default into the config *before* it is
  locked, so that any documented key can be overridden from the command line even when the
  config file never set it (an optional key becomes a typed ``placeholder``, which
  ml_collections lets a flag set);
* :func:`check` rejects unknown keys (with the closest known key), wrong types and values
  outside their range, naming the full key.

Nothing here imports JAX: the command line is checked before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any, Union

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
  """A config key is unknown, has the wrong type, or an impossible value."""


class _Required:
  def __repr__(self) -> str:
    return "REQUIRED"


REQUIRED: Any = _Required()
SECTION_TYPES = (ml_collections.ConfigDict, ml_collections.FrozenConfigDict, dict, Mapping)


@dataclasses.dataclass(frozen=True)
class Field:
  """One key: allowed types, its default (``REQUIRED`` if it has none), and a value check."""

  types: tuple[type, ...]
  default: Any = REQUIRED
  check: Callable[[Any], bool] | None = None
  allowed: str = ""  # What the check accepts, in words, for the error message.

  @property
  def required(self) -> bool:
    return self.default is REQUIRED


@dataclasses.dataclass(frozen=True)
class Section:
  """A nested section. ``open`` sections take any key (their owner checks them later);
  ``default_factory`` fills a missing section, e.g. a task's default evaluators."""

  fields: Mapping[str, Union[Field, "Section"]]
  required: bool = False
  open: bool = False
  nullable: bool = False  # None is allowed in place of the section ("not used").


Schema = Mapping[str, Union[Field, Section]]


def positive(x: Any) -> bool:
  return x > 0


def non_negative(x: Any) -> bool:
  return x >= 0


def one_of(*values: Any) -> tuple[Callable[[Any], bool], str]:
  """(check, allowed) for an enumerated key."""
  return (lambda x: x in values), "one of " + ", ".join(repr(v) for v in values)


def suggestion(key: str, known: Any) -> str:
  """`` Did you mean 'x'?`` for the closest known key, or nothing."""
  close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
  return f" Did you mean {close[0]!r}?" if close else ""


def unknown_key_error(name: str, key: str, known: Any) -> ConfigError:
  return ConfigError(f"Unknown config key {name}.{suggestion(key, known)}"
                     f" Known keys here: {', '.join(sorted(map(str, known)))}.")


def _keys(section: Any) -> list[str]:
  return list(section.keys())


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
  if isinstance(value, bool) and bool not in types:
    return False  # bool is an int subclass; `batch_size=True` is a mistake.
  if isinstance(value, int) and not isinstance(value, bool) and float in types:
    return True
  return isinstance(value, types)


def check_field(name: str, value: Any, field: Field) -> None:
  """One value against its field: type first, then the range check."""
  if value is None and field.default is None:
    return  # An optional key left unset.
  if not _type_ok(value, field.types):
    allowed = " or ".join("None" if t is type(None) else t.__name__ for t in field.types)
    raise ConfigError(f"Config key {name}={value!r} has type {type(value).__name__};"
                      f" expected {allowed}.")
  if field.check is not None and value is not None and not field.check(value):
    raise ConfigError(f"Config key {name}={value!r} is not allowed; expected {field.allowed}.")


def check(section: Any, schema: Schema, prefix: str = "") -> None:
  """Checks ``section`` against ``schema``, recursively; raises ConfigError naming the key."""
  keys = _keys(section)
  for key in keys:
    if key not in schema:
      raise unknown_key_error(f"{prefix}{key}", key, schema)
  for key, spec in schema.items():
    name = f"{prefix}{key}"
    if key not in keys:
      if spec.required:
        raise ConfigError(f"Missing config key {name}.")
      continue
    value = section[key]
    if isinstance(spec, Section):
      if value is None and (spec.nullable or not spec.required):
        continue
      if not isinstance(value, SECTION_TYPES):
        raise ConfigError(f"Config key {name}={value!r} must be a section (a dict of keys).")
      if not spec.open:
        check(value, spec.fields, f"{name}.")
      continue
    check_field(name, value, spec)


def placeholder_for(field: Field) -> Any:
  """A typed empty value that a command-line flag can later set (ml_collections placeholder)."""
  scalar = [t for t in field.types if t is not type(None)]
  for t in (float, int, bool, str):  # float first: a float key also takes ints.
    if t in scalar:
      return config_dict.placeholder(t)
  return None


def fill_defaults(config: ml_collections.ConfigDict, schema: Schema) -> None:
  """Writes every missing default (and typed placeholders for unset optional keys) in place."""
  for key, spec in schema.items():
    present = key in config
    if isinstance(spec, Section):
      if not present:
        if spec.required or spec.open:
          continue
        config[key] = ml_collections.ConfigDict()
      value = config[key]
      if isinstance(value, ml_collections.ConfigDict) and not spec.open:
        fill_defaults(value, spec.fields)
      continue
    if spec.required:
      continue
    if not present:
      config[key] = placeholder_for(spec) if spec.default is None else spec.default
    elif config[key] is None and spec.default is None:
      ref = placeholder_for(spec)
      if ref is not None:
        config[key] = ref
