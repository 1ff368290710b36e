"""Parameter rules: which parameters train, and at what learning-rate multiplier.

A rule is ``(regex, setting)``: the regex is matched in full against a parameter's path
(``image/blocks_0/attention/query/kernel``) and the setting is ``"frozen"`` or a positive
learning-rate multiplier (``1.0`` trains normally). Every parameter must match exactly one
rule and every rule must match some parameter, so a typo can never silently freeze (or train)
the wrong thing. Freezing is exact: a frozen parameter's update is zero, so it stays
bit-identical.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

from mmie.config import ConfigError
from mmie.sharding import path_name

FROZEN = "frozen"
TRAINABLE = "trainable"
Rule = tuple[str, str | float]


def parse_rules(rules: Sequence[Any] | None) -> list[Rule]:
  """Normalises config rules to ``[(regex, 'frozen' | float)]``; None means 'train all'."""
  if not rules:
    return [(".*", 1.0)]
  parsed = []
  for i, rule in enumerate(rules):
    if not isinstance(rule, Sequence) or isinstance(rule, str) or len(rule) != 2:
      raise ConfigError(f"param_rules[{i}]={rule!r}: each rule is (regex, setting), e.g."
                        " ('image/.*', 'frozen') or ('.*', 1.0).")
    pattern, setting = rule
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"param_rules[{i}]: {pattern!r} is not a valid regex: {e}.") from e
    if setting != FROZEN:
      if isinstance(setting, bool) or not isinstance(setting, (int, float)) or setting <= 0:
        raise ConfigError(f"param_rules[{i}]: setting {setting!r} must be 'frozen' or a"
                          " positive learning-rate multiplier.")
      setting = float(setting)
    parsed.append((pattern, setting))
  return parsed


def _label(setting: str | float) -> str:
  return FROZEN if setting == FROZEN else f"lr_x{setting:g}"


def assign(rules: Sequence[Rule], params: Any) -> Any:
  """A pytree of labels (``'frozen'``, ``'lr_x0.01'``...) shaped like ``params``."""
  names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  matches = {name: [i for i, (pat, _) in enumerate(rules) if re.fullmatch(pat, name)]
             for name in names}
  uncovered = [n for n, m in matches.items() if not m]
  if uncovered:
    raise ConfigError(f"{len(uncovered)} parameter(s) match no param_rules entry:"
                      f" {uncovered[:10]}{' ...' if len(uncovered) > 10 else ''}."
                      f" Rules: {[r[0] for r in rules]}. Add a rule such as ('.*', 1.0).")
  ambiguous = {n: [rules[i][0] for i in m] for n, m in matches.items() if len(m) > 1}
  if ambiguous:
    name, pats = next(iter(ambiguous.items()))
    raise ConfigError(f"{len(ambiguous)} parameter(s) match more than one param_rules entry,"
                      f" e.g. {name!r} matches {pats}. Make the regexes disjoint.")
  unused = [pat for i, (pat, _) in enumerate(rules)
            if not any(i in m for m in matches.values())]
  if unused:
    raise ConfigError(f"param_rules regex(es) {unused} match no parameter. Parameter names"
                      f" look like {names[:5]}.")
  labels = [_label(rules[matches[n][0]][1]) for n in names]
  return jax.tree.unflatten(jax.tree.structure(params), labels)


def apply_rules(tx: optax.GradientTransformation, rules: Sequence[Rule], params: Any,
                across: Sequence[optax.GradientTransformation] = ()
                ) -> optax.GradientTransformation:
  """``tx`` under the rules: frozen parameters get zero updates, others their LR multiplier.

  The optimizer freezes in one place: the parameters are split into a frozen partition (its
  update is zero, and it carries no optimizer state, so no moments and no weight decay) and
  a trainable one. ``across`` (global-norm clipping, modality balancing) runs on the
  trainable partition as a whole, so frozen gradients count in no norm; then ``tx`` runs,
  scaled per LR label. (The train step also feeds frozen parameters through
  ``stop_gradient``: that is not a second freeze but the saved backward pass.)
  """
  labels = assign(rules, params)
  settings = {_label(s): s for _, s in rules}
  scaled = {label: tx if setting == 1.0 else optax.chain(tx, optax.scale(setting))
            for label, setting in settings.items() if setting != FROZEN}
  if set(scaled) == {"lr_x1"}:
    per_label = tx
  else:  # Labels by parameter path: the trainable partition's tree has the frozen masked out.
    by_name = {path_name(path): label
               for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
    per_label = optax.multi_transform(scaled, lambda tree: jax.tree_util.tree_map_with_path(
        lambda path, _: by_name[path_name(path)], tree))
  trainable = optax.chain(*across, per_label)
  if FROZEN not in settings:
    return trainable
  partition = jax.tree.map(lambda label: FROZEN if label == FROZEN else TRAINABLE, labels)
  return optax.multi_transform({FROZEN: optax.set_to_zero(), TRAINABLE: trainable}, partition)


def trainable_mask(rules: Sequence[Rule], params: Any) -> Any:
  """True for every parameter that is not frozen."""
  return jax.tree.map(lambda l: l != FROZEN, assign(rules, params))
