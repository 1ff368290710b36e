"""The run's config: the engine's sections' schemas assembled, defaults filled, checked, frozen.

Configs are Python files whose ``get_config(arg)`` returns an ``ml_collections.ConfigDict``.
:func:`fill_defaults` writes every default of the engine's sections (top level, optimizer,
train, mesh, data, stages) into it *before* command-line overrides apply; ``mmie/cli.py``, the
entry edge, calls it between loading and locking, together with the model's and the
evaluators' own fillers, so any documented key can be overridden even when the file does not
set it. :func:`validate` fills, checks every engine section against its owner's schema
(unknown key with the closest match, wrong type, impossible value: one :class:`ConfigError`
naming the key) and freezes. The model, loss, evaluator and data-source sections are checked
by their owners in ``mmie.train.setup.build_run``, still before any data is prepared or
anything compiled. This module imports only JAX-free schemas (and the stage resolver, which
is plain Python): nothing of models or evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from mmie import schema
from mmie.data.schema import DATA
from mmie.schema import ConfigError, Field, Section, non_negative, positive
from mmie.train.schema import MESH, OPTIMIZER, TRAIN, init_from_ok

__all__ = ["ConfigError", "Field", "TOP_LEVEL", "fill_defaults", "to_dict", "validate"]

_SEQ = (list, tuple)

TOP_LEVEL: dict[str, Field | Section] = {
    "task": Field((str,), allowed="a task name such as 'contrastive'"),
    "seed": Field((int,), 0),
    "batch_size": Field((int,), check=positive, allowed="a positive integer"),
    "total_steps": Field((int,), check=positive, allowed="a positive integer"),
    "log_every": Field((int,), 50, positive, "a positive integer"),
    "eval_every": Field((int,), 0, non_negative, "0 (only at the end) or a positive integer"),
    "checkpoint_every": Field((int,), 0, non_negative,
                              "0 (only at the end) or a positive integer"),
    "keep_checkpoints": Field((int,), 2, positive, ">= 1"),
    "plots": Field((bool,), True),  # End-of-run plots of image-text models into workdir/plots.
    "model": Section({}, required=True, open=True),   # mmie/models/builder.py checks it.
    "loss": Section({}, required=True, open=True),    # mmie/losses/registry.py checks it.
    "optimizer": Section(OPTIMIZER),
    "data": Section(DATA),
    "evals": Section({}, open=True),                  # mmie/evaluate/registry.py checks it.
    "mesh": Section(MESH),
    "train": Section(TRAIN),
    "stages": Section({}, open=True, nullable=True),  # Each entry against STAGE, below.
    "stage_order": Field(_SEQ + (type(None),), None, allowed="the stage names in order"),
    # An empty tuple, not None, so that --config.param_rules="((...),)" can override it.
    "param_rules": Field(_SEQ + (type(None),), (),
                         allowed="a list of (regex, 'frozen' | lr multiplier)"),
    "profile": Section({}, open=True, nullable=True),
    "init_from": Field((str,) + schema.SECTION_TYPES + (type(None),), None, init_from_ok,
                       "a source ('hf:PATH', 'mmie:WORKDIR[@STEP]', 'minilm', 'bert:PATH',"
                       " 'vit:PATH') for the whole model, or {subtree: source}"),
    "mesh_rules": Field(_SEQ + (type(None),), None,
                        allowed="a list of (logical axis, mesh axis or None)"),
    # Split the residual stream's length over the tensor-parallel axis (mmie/sharding.py).
    "sequence_parallel": Field((bool,), False),
}

_MOVED = {"eval": "config.eval was merged into config.evals: evaluators are"
                  " {name: {type, every, batch_size, ...}} (docs/evaluation.md); the plots"
                  " switch is config.plots."}


def _check_moved(config: Any) -> None:
  for key, message in _MOVED.items():
    if key in config:
      raise ConfigError(message)


def fill_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Writes the defaults of the engine's sections into ``config``; in place, idempotent."""
  _check_moved(config)
  schema.fill_defaults(config, TOP_LEVEL)
  stages = config.get("stages") or {}
  for stage in stages.values():
    if isinstance(stage, ml_collections.ConfigDict) and isinstance(
        stage.get("optimizer"), ml_collections.ConfigDict):
      schema.fill_defaults(stage.optimizer, OPTIMIZER)
  return config


def validate(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """Fills defaults, checks every section, and returns the config frozen."""
  if isinstance(config, ml_collections.FrozenConfigDict):
    config = ml_collections.ConfigDict(config)
  else:
    config = ml_collections.ConfigDict(config.to_dict(preserve_field_references=True))
  fill_defaults(config)
  schema.check(config, TOP_LEVEL)
  from mmie.train import stages as stages_lib  # JAX-free: checks each stage's section.
  stages_lib.resolve_stages(config)
  accum = config.train.grad_accum_steps
  if config.batch_size % accum:
    raise ConfigError(f"Config key train.grad_accum_steps={accum} must divide"
                      f" batch_size={config.batch_size}.")
  for name in ("eval_every", "checkpoint_every"):
    if config[name] > config.total_steps:
      raise ConfigError(
          f"Config key {name}={config[name]} exceeds total_steps={config.total_steps};"
          f" use a value <= total_steps (or 0 for only at the end).")
  warmup = config.optimizer.warmup_steps
  if warmup >= config.total_steps:
    raise ConfigError(f"Config key optimizer.warmup_steps={warmup} must be below"
                      f" total_steps={config.total_steps}.")
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

