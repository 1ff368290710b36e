"""The config edge of the loss library: names -> heads, transforms, weightings, schedules.

``config.loss`` is either a single head,

    name = "clip(label_smoothing=0.1)"          # head call-string
    transforms = ("memory_queue(size=4096)",)   # applied in order, may be empty

or a weighted sum of named terms (then ``name``, if given, must be ``"combine"``),

    terms = {"ntxent": {"name": "ntxent(temperature=0.2)", "weight": "linear_schedule(...)",
                        "transforms": (...), "inputs": {"z_a": "image_emb"}},  # optional keys
             "vicreg": {"name": "vicreg", "weight": 1.0}}
    weighting = "static" | "inverse_running_loss(decay=0.99)" | "uncertainty(learning_rate=0.01)"

Everything is registered here by explicit import; nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optax

from mmie.losses import (alignment, classification, contrastive, pairwise, queue, redundancy,
                         transforms, weighting)
from mmie.registry import Registry, bind_arguments, describe_signature, parse_call
from mmie.schema import suggestion
from mmie.losses.core import Loss, Transform, make_loss

HEADS: Registry[Any] = Registry("loss head")
TRANSFORMS: Registry[Transform] = Registry("loss transform")
WEIGHTINGS: Registry[weighting.Weighting] = Registry("loss weighting")
SCHEDULES: Registry[weighting.Schedule] = Registry("weight schedule")

for _fn in (contrastive.clip, contrastive.siglip, contrastive.ntxent, contrastive.dcl,
            contrastive.dclw, contrastive.supcon, redundancy.vicreg, redundancy.barlow_twins,
            redundancy.decorrelation, redundancy.feature_consistency,
            classification.cross_entropy, classification.soft_cross_entropy,
            alignment.bradley_terry, alignment.dpo, alignment.ppo_clip, alignment.ppo):
  HEADS.register(_fn.__name__, _fn)
for _fn in (queue.memory_queue, queue.momentum_keys, transforms.dynamic_temperature,
            transforms.learnable_temperature, alignment.ppo_rollout):
  TRANSFORMS.register(_fn.__name__, _fn)

# Former transforms that are now head options (one way to set each), with the new spelling.
HEAD_OPTIONS_NOT_TRANSFORMS = {
    "chunked": "block_size=1024",
    "global_negatives": "axis_name='data'",
    "hard_negatives": "hard_negatives={'mode': 'importance', 'beta': 1.0}",
}
for _fn in (weighting.static, weighting.inverse_running_loss, weighting.uncertainty):
  WEIGHTINGS.register(_fn.__name__, _fn)
for _name in ("constant_schedule", "linear_schedule", "cosine_decay_schedule",
              "warmup_cosine_decay_schedule", "warmup_constant_schedule", "exponential_decay",
              "piecewise_constant_schedule", "polynomial_schedule"):
  SCHEDULES.register(_name, getattr(optax, _name))

_SINGLE_KEYS = ("name", "transforms")
_COMBINED_KEYS = ("name", "terms", "weighting", "transforms")
_TERM_KEYS = ("name", "transforms", "weight", "inputs")


def _as_mapping(config: Any, where: str) -> Mapping[str, Any]:
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if isinstance(config, Mapping):
    return config
  raise TypeError(f"{where} must be a ConfigDict or a mapping, got {type(config).__name__}.")


def _check_keys(cfg: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
  unknown = sorted(set(cfg) - set(allowed))
  if unknown:
    raise KeyError(f"{where} has unknown key(s) {unknown}.{suggestion(unknown[0], allowed)}"
                   f" Allowed: {list(allowed)}.")


def bind_head(text: str) -> tuple[str, Callable[..., Any], dict[str, Any]]:
  """Resolves a head call-string; its arguments must be keyword arguments of the head."""
  call = parse_call(text)
  head = HEADS.get(call.name)
  if call.args:
    raise TypeError(f"loss head {call.name!r}: give arguments by keyword (e.g. "
                    f"\"{call.name}(temperature=0.1)\"), got positional {call.args!r}. "
                    f"It accepts {describe_signature(head)}.")
  kwargs = bind_arguments(head, (), call.kwargs, what=f"loss head {call.name!r}")
  return call.name, head, _check_head_options(call.name, kwargs)


def _check_head_options(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
  """The contrastive heads' static options, checked (and ``hard_negatives`` made a struct)."""
  if "hard_negatives" in kwargs:
    kwargs["hard_negatives"] = pairwise.hard_negatives_option(
        kwargs["hard_negatives"], f"loss head {name!r}: hard_negatives")
  block = kwargs.get("block_size")
  if block is not None and (not isinstance(block, int) or isinstance(block, bool) or block < 1):
    raise ValueError(f"loss head {name!r}: block_size must be a positive int, got {block!r}.")
  axis = kwargs.get("axis_name")
  if axis is not None and not (isinstance(axis, str) and axis or isinstance(axis, (tuple, list))
                               and axis and all(isinstance(a, str) for a in axis)):
    raise ValueError(f"loss head {name!r}: axis_name must name a mesh axis (or a tuple of "
                     f"them), got {axis!r}.")
  if isinstance(axis, list):
    kwargs["axis_name"] = tuple(axis)
  return kwargs


def build_transforms(texts: Sequence[str]) -> list[tuple[str, Transform]]:
  """Builds ``[(name, Transform)]`` from call-strings, in order."""
  if isinstance(texts, str):
    raise TypeError(f"loss transforms must be a sequence of call-strings, got the string "
                    f"{texts!r}; write [{texts!r}].")
  out = []
  for text in texts:
    moved = parse_call(text).name
    if moved in HEAD_OPTIONS_NOT_TRANSFORMS:
      raise ValueError(f"{moved} is no longer a transform but an option of the head: write it"
                       f" in the head's call-string, e.g. \"clip("
                       f"{HEAD_OPTIONS_NOT_TRANSFORMS[moved]})\".")
    name, factory, kwargs = TRANSFORMS.bind(text)
    out.append((name, factory(**kwargs)))
  return out


def build_weight(weight: Any) -> float | weighting.Schedule:
  """A number, or a schedule call-string such as ``"linear_schedule(init_value=0.0, ...)"``."""
  if isinstance(weight, (int, float)) and not isinstance(weight, bool):
    return float(weight)
  if isinstance(weight, str):
    return SCHEDULES.build(weight)
  raise TypeError(f"loss term weight must be a number or a schedule call-string (one of "
                  f"{', '.join(SCHEDULES)}), got {weight!r}.")


def _build_single(cfg: Mapping[str, Any]) -> Loss:
  _, head, head_kwargs = bind_head(cfg["name"])
  return make_loss(head, build_transforms(cfg.get("transforms", ()) or ()), head_kwargs)


def _build_combined(cfg: Mapping[str, Any]) -> Loss:
  if cfg.get("name", "combine") != "combine":
    raise KeyError(f"config.loss has both name={cfg['name']!r} and terms; with terms, leave "
                   f"name unset or set it to 'combine'.")
  if cfg.get("transforms"):
    raise KeyError("config.loss.transforms cannot be combined with terms; give each term its own "
                   "'transforms'.")
  terms = {}
  for term_name, term_cfg in _as_mapping(cfg["terms"], "config.loss.terms").items():
    where = f"config.loss.terms.{term_name}"
    term_cfg = _as_mapping(term_cfg, where)
    _check_keys(term_cfg, _TERM_KEYS, where)
    if "name" not in term_cfg:
      raise KeyError(f"{where} needs 'name' (a head call-string); known heads: {', '.join(HEADS)}.")
    terms[term_name] = weighting.Term(_build_single(term_cfg),
                                      build_weight(term_cfg.get("weight", 1.0)),
                                      dict(term_cfg.get("inputs", {}) or {}))
  return weighting.combine(terms, WEIGHTINGS.build(cfg.get("weighting", "static") or "static"))


def build_loss(loss_config: Any) -> Loss:
  """Builds the `Loss` named by ``config.loss`` (a ConfigDict or a plain mapping)."""
  cfg = _as_mapping(loss_config, "config.loss")
  if cfg.get("terms"):
    _check_keys(cfg, _COMBINED_KEYS, "config.loss")
    return _build_combined(cfg)
  _check_keys(cfg, _SINGLE_KEYS, "config.loss")
  if "name" not in cfg:
    raise KeyError(f"config.loss needs 'name' (a head call-string) or 'terms'; known heads: "
                   f"{', '.join(HEADS)}.")
  return _build_single(cfg)
