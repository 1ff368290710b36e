"""Config validation: one clear error naming the key, before anything is compiled.

Configs are Python files whose ``get_config(arg)`` returns an ``ml_collections.ConfigDict``.
After command-line overrides, :func:`validate` checks every top-level key and the sections the
engine owns (optimizer, eval, mesh, stages) against a schema, then freezes the config. The model,
loss and data sections are checked by their own builders, which run before any compile too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config key is unknown, has the wrong type, or an impossible value."""


@dataclasses.dataclass(frozen=True)
class Field:
  """Schema of one config key: allowed types, whether it is required, and a value check."""

  types: tuple[type, ...]
  required: bool = True
  check: Callable[[Any], bool] | None = None
  allowed: str = ""  # Human description of the allowed values, for the error message.


def _positive(x: Any) -> bool:
  return x > 0


def _non_negative(x: Any) -> bool:
  return x >= 0


_SECTION = (ml_collections.ConfigDict, dict)
_SEQUENCE = (list, tuple)

TOP_LEVEL: dict[str, Field] = {
    "task": Field((str,), allowed="a task name such as 'contrastive'"),
    "seed": Field((int,)),
    "batch_size": Field((int,), check=_positive, allowed="a positive integer"),
    "total_steps": Field((int,), check=_positive, allowed="a positive integer"),
    "log_every": Field((int,), check=_positive, allowed="a positive integer"),
    "eval_every": Field((int,), check=_non_negative, allowed="0 (never) or a positive integer"),
    "checkpoint_every": Field(
        (int,), check=_non_negative, allowed="0 (only at the end) or a positive integer"
    ),
    "keep_checkpoints": Field((int,), required=False, check=_positive, allowed=">= 1"),
    "model": Field(_SECTION),
    "loss": Field(_SECTION),
    "optimizer": Field(_SECTION),
    "data": Field(_SECTION),
    "eval": Field(_SECTION, required=False),
    "evals": Field(_SECTION + (type(None),), required=False,
                   allowed="{name: {type, every, ...}}; see docs/evaluation.md"),
    "mesh": Field(_SECTION, required=False),
    "train": Field(_SECTION, required=False),
    "stages": Field(_SECTION + (type(None),), required=False),
    "stage_order": Field(_SEQUENCE, required=False, allowed="the stage names in order"),
    "param_rules": Field(_SEQUENCE + (type(None),), required=False,
                         allowed="a list of (regex, 'frozen' | lr multiplier)"),
    "profile": Field(_SECTION + (type(None),), required=False,
                     allowed="{peak_flops: {device kind or platform: FLOP/s}}"),
    "init_from": Field(_SECTION + (type(None),), required=False,
                       allowed="{parameter subtree: pretrained source}, e.g. {'text': 'minilm'}"),
    "mesh_rules": Field(_SEQUENCE + (type(None),), required=False,
                        allowed="a list of (logical axis, mesh axis)"),
}

TRAIN: dict[str, Field] = {
    "on_nonfinite": Field((str,), required=False, check=lambda x: x in ("skip", "stop"),
                          allowed="'skip' (count and go on) or 'stop'"),
    "early_stopping": Field(_SECTION + (type(None),), required=False),
    "profile_steps": Field(_SEQUENCE + (type(None),), required=False,
                           allowed="None or (start, end) global steps"),
    "ema_decay": Field((float, type(None)), required=False,
                       check=lambda x: x is None or 0 < x < 1, allowed="None or in (0, 1)"),
    "grad_accum_steps": Field((int,), required=False, check=_positive, allowed=">= 1"),
    "accumulation": Field((str,), required=False, check=lambda x: x in ("mean", "gradcache"),
                          allowed="'mean' or 'gradcache'"),
    "balance_modalities": Field(_SECTION + (type(None),), required=False),
}

OPTIMIZER: dict[str, Field] = {
    "name": Field((str,), check=lambda n: n in ("adamw", "sgd", "adafactor", "lion"),
                  allowed="'adamw', 'sgd', 'adafactor' or 'lion'"),
    "learning_rate": Field((float, int), check=_positive, allowed="a positive number"),
    "warmup_steps": Field((int,), required=False, check=_non_negative, allowed=">= 0"),
    "schedule": Field((str,), required=False,
                      check=lambda s: s in ("cosine", "linear", "constant"),
                      allowed="'cosine', 'linear' or 'constant'"),
    "end_learning_rate_ratio": Field((float, int), required=False,
                                     check=lambda x: 0 <= x <= 1, allowed="in [0, 1]"),
    "weight_decay": Field((float, int), required=False, check=_non_negative, allowed=">= 0"),
    "b1": Field((float,), required=False, check=lambda x: 0 <= x < 1, allowed="in [0, 1)"),
    "b2": Field((float,), required=False, check=lambda x: 0 <= x < 1, allowed="in [0, 1)"),
    "eps": Field((float,), required=False, check=_positive, allowed="> 0"),
    "momentum": Field((float,), required=False, check=lambda x: 0 <= x < 1, allowed="in [0, 1)"),
    "grad_clip_norm": Field((float, int, type(None)), required=False,
                            check=lambda x: x is None or x > 0, allowed="None or > 0"),
}

EVAL: dict[str, Field] = {
    "batch_size": Field((int,), required=False, check=_positive, allowed="a positive integer"),
    "retrieval": Field((bool,), required=False),
    "zeroshot": Field((bool,), required=False),
    "representation": Field((bool,), required=False),
    "plots": Field((bool,), required=False),
}


def check_section(
    section: Mapping[str, Any], schema: Mapping[str, Field], prefix: str
) -> None:
  """Checks one config section against ``schema``; raises ConfigError naming the key."""
  keys = set(section.keys())
  unknown = sorted(keys - set(schema))
  if unknown:
    raise ConfigError(
        f"Unknown config key {prefix}{unknown[0]}"
        f" (known keys in this section: {', '.join(sorted(schema))})."
    )
  for key, field in schema.items():
    name = f"{prefix}{key}"
    if key not in keys:
      if field.required:
        raise ConfigError(f"Missing config key {name}.")
      continue
    value = section[key]
    if isinstance(value, bool) and bool not in field.types:
      ok_type = False  # bool is an int subclass; `batch_size=True` is a mistake.
    else:
      ok_type = isinstance(value, field.types)
    if not ok_type:
      allowed = " or ".join(t.__name__ for t in field.types)
      raise ConfigError(f"Config key {name}={value!r} has type {type(value).__name__};"
                        f" expected {allowed}.")
    if field.check is not None and not field.check(value):
      raise ConfigError(f"Config key {name}={value!r} is not allowed; expected {field.allowed}.")


def validate(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """Validates the engine-owned parts of ``config`` and returns it frozen."""
  check_section(config, TOP_LEVEL, "")
  check_section(config.optimizer, OPTIMIZER, "optimizer.")
  if "eval" in config:
    check_section(config.eval, EVAL, "eval.")
  if "train" in config:
    check_section(config.train, TRAIN, "train.")
    accum = config.train.get("grad_accum_steps", 1)
    if config.batch_size % accum:
      raise ConfigError(f"Config key train.grad_accum_steps={accum} must divide"
                        f" batch_size={config.batch_size}.")
  for name, stage in (config.get("stages", None) or {}).items():
    if "optimizer" in stage:
      check_section(stage["optimizer"], OPTIMIZER, f"stages.{name}.optimizer.")
  if config.get("evals", None):
    # Deferred: the evaluator schemas live beside their implementations (and import JAX).
    from mmie.evaluate.registry import check_evals_config  # pylint: disable=g-import-not-at-top
    check_evals_config(config.evals)
  for name in ("log_every", "eval_every", "checkpoint_every"):
    if config[name] > config.total_steps:
      raise ConfigError(
          f"Config key {name}={config[name]} exceeds total_steps={config.total_steps};"
          f" use a value <= total_steps (or 0 where allowed)."
      )
  warmup = config.optimizer.get("warmup_steps", 0)
  if warmup >= config.total_steps:
    raise ConfigError(
        f"Config key optimizer.warmup_steps={warmup} must be below"
        f" total_steps={config.total_steps}."
    )
  return ml_collections.FrozenConfigDict(config)


def to_dict(config: ml_collections.ConfigDict | ml_collections.FrozenConfigDict) -> dict:
  """A plain nested dict (tuples as lists) suitable for JSON."""
  if isinstance(config, ml_collections.FrozenConfigDict):
    config = ml_collections.ConfigDict(config)
  return _plain(config.to_dict())


def _plain(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, Sequence) and not isinstance(value, str):
    return [_plain(v) for v in value]
  return value
