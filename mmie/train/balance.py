"""Modality balancing: rescale each tower's gradients towards the towers' mean gradient norm.

In a dual encoder one tower often gets much larger gradients than the other (a text tower
with a big embedding table, a vision tower early in training), so one modality learns while
the other stalls. The prototype's remedy, kept here as an optax transform: compute each
group's gradient global norm ``n_g``, the mean ``m`` over groups, and scale the group's
gradients by ``clip(m / n_g, min_scale, max_scale)``. The tower with the smaller gradients is
boosted, the larger one damped, and the clamp keeps a near-zero norm from exploding.

It sits *after* frozen parameters' gradients are zeroed and *before* global-norm clipping, so
clipping still bounds the final update. A group whose gradients are all zero (a frozen tower)
takes no part in the mean: there is nothing in it to balance. Parameters in no group are
passed through unchanged. The transform is stateless and reports nothing, so it adds nothing
to checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mmie.config import ConfigError
from mmie.sharding import path_name

BALANCE_KEYS = ("groups", "min_scale", "max_scale")


def _compile_groups(groups: Mapping[str, str]) -> dict[str, re.Pattern]:
  if not isinstance(groups, Mapping) or len(groups) < 2:
    raise ConfigError(f"balance_modalities groups={groups!r}: give at least two groups as"
                      " {name: regex}, e.g. {'image': r'image/.*|image_projection/.*',"
                      " 'text': r'text/.*|text_projection/.*'}; one group has nothing to"
                      " balance against.")
  compiled = {}
  for name, pattern in groups.items():
    if not isinstance(pattern, str):
      raise ConfigError(f"balance_modalities group {name!r}: regex {pattern!r} must be a"
                        " string.")
    try:
      compiled[name] = re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"balance_modalities group {name!r}: {pattern!r} is not a valid"
                        f" regex: {e}.") from e
  return compiled


def _labels(compiled: Mapping[str, re.Pattern], tree: Any) -> tuple[list[str],
                                                                      list[str | None]]:
  names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  labels = []
  for name in names:
    hits = [g for g, pattern in compiled.items() if pattern.fullmatch(name)]
    if len(hits) > 1:
      raise ConfigError(f"balance_modalities: parameter {name!r} matches groups {hits};"
                        " make the group regexes disjoint.")
    labels.append(hits[0] if hits else None)
  return names, labels


def assign_groups(groups: Mapping[str, str], tree: Any) -> dict[str, list[str]]:
  """Each group's parameter paths; fails on a parameter in two groups or an unused group.

  Regexes are matched in full against the parameter path (``text/encoder/layer_0/...``), as
  parameter rules are. Both failures are config typos that would silently misbalance.
  """
  compiled = _compile_groups(groups)
  names, labels = _labels(compiled, tree)
  members = {g: [n for n, label in zip(names, labels) if label == g] for g in compiled}
  unused = [g for g, m in members.items() if not m]
  if unused:
    raise ConfigError(f"balance_modalities group(s) {unused} match no parameter. Parameter"
                      f" names look like {names[:5]}.")
  return members


def balance_modalities(groups: Mapping[str, str], min_scale: float = 0.5,
                       max_scale: float = 2.0, *, check_on_init: bool = True
                       ) -> optax.GradientTransformation:
  """Scales each group's gradients by ``clip(mean_norm / group_norm, min_scale, max_scale)``.

  ``groups`` maps a group name to a regex on parameter paths, e.g.
  ``{'image': r'image/.*|image_projection/.*', 'text': r'text/.*|text_projection/.*'}``.
  ``init`` checks the groups against the parameters it is given, unless ``check_on_init`` is
  False: under parameter rules it sees only the trainable ones, and a group whose parameters
  are all frozen is valid (it is inactive), so the caller checks the whole tree instead.
  """
  compiled = _compile_groups(groups)  # Fail at construction, not inside a trace.
  for key, value in (("min_scale", min_scale), ("max_scale", max_scale)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
      raise ConfigError(f"balance_modalities {key}={value!r}: expected a positive number.")
  if not min_scale <= 1.0 <= max_scale:
    raise ConfigError(f"balance_modalities min_scale={min_scale}, max_scale={max_scale}:"
                      " expected min_scale <= 1 <= max_scale (equal norms must keep scale 1).")
  groups = dict(groups)

  def init(params: Any) -> optax.EmptyState:
    if check_on_init:
      assign_groups(groups, params)  # Checks the regexes against the real parameter names.
    return optax.EmptyState()

  def update(updates: Any, state: optax.EmptyState, params: Any = None):
    del params
    _, labels = _labels(compiled, updates)
    leaves, treedef = jax.tree.flatten(updates)
    squares = {g: jnp.zeros((), jnp.float32) for g in groups}
    for label, grad in zip(labels, leaves):
      if label is not None:
        squares[label] = squares[label] + jnp.sum(jnp.square(grad.astype(jnp.float32)))
    norms = {g: jnp.sqrt(s) for g, s in squares.items()}
    active = {g: (n > 0).astype(jnp.float32) for g, n in norms.items()}
    mean_norm = sum(norms.values()) / jnp.maximum(sum(active.values()), 1.0)
    tiny = jnp.finfo(jnp.float32).tiny
    scales = {g: jnp.clip(mean_norm / jnp.maximum(n, tiny), min_scale, max_scale)
              for g, n in norms.items()}
    scaled = [grad if label is None else (grad * scales[label]).astype(grad.dtype)
              for label, grad in zip(labels, leaves)]
    return jax.tree.unflatten(treedef, scaled), state

  return optax.GradientTransformation(init, update)


def from_config(spec: Mapping[str, Any] | None, params: Any = None
                ) -> optax.GradientTransformation | None:
  """``config.train.balance_modalities`` ({groups, min_scale, max_scale}) -> transform or None.

  With ``params`` (arrays or shapes of the whole model) the groups are checked against them
  now, not at ``init``.
  """
  if not spec:
    return None
  spec = dict(spec.items())
  unknown = sorted(set(spec) - set(BALANCE_KEYS))
  if unknown:
    raise ConfigError(f"Unknown config key train.balance_modalities.{unknown[0]}; keys are"
                      f" {BALANCE_KEYS}.")
  if "groups" not in spec:
    raise ConfigError("train.balance_modalities needs groups: {name: regex on parameter"
                      " paths}, e.g. {'image': 'image/.*|image_projection/.*', 'text':"
                      " 'text/.*|text_projection/.*'}.")
  groups = spec["groups"]
  groups = dict(groups.items()) if hasattr(groups, "items") else groups
  if params is not None:
    assign_groups(groups, params)
  return balance_modalities(groups, min_scale=spec.get("min_scale", 0.5),
                            max_scale=spec.get("max_scale", 2.0),
                            check_on_init=params is None)
