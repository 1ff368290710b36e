"""``config.evals`` -> evaluators, each on its own schedule, through one explicit registry.

A run's evaluators are a dict of name -> spec in the config::

    config.evals = {
        "val": {"type": "retrieval", "every": 250},
        "zeroshot": {"type": "zeroshot", "every": 250, "templates": ("a {}", "{} symbol")},
        "probe": {"type": "linear_probe", "every": 1000, "l2": (1e-3, 1e-2, 1e-1)},
        "knn": {"type": "knn", "every": 1000, "k": 20},
        "health": {"type": "representation", "every": 250},
    }

Every evaluator writes ``{prefix}{metric}`` (prefix defaults to ``"NAME/"``). Without
``config.evals`` the run keeps its default: retrieval, zero-shot and representation
diagnostics on ``data.eval_split`` every ``eval_every`` steps, as ``eval/...``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from mmie.config import ConfigError, Field, check_section
from mmie.evaluate import contrastive, language
from mmie.evaluate.context import EvalContext

Evaluator = Callable[[Any], dict[str, float]]
Factory = Callable[[dict[str, Any], EvalContext], Evaluator]

_INT, _NUM, _STR = (int,), (int, float), (str,)
_SEQ = (list, tuple)
_pos = lambda x: x > 0
_KS = Field(_SEQ, check=lambda ks: len(ks) > 0 and all(
    isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks),
            allowed="a non-empty list of positive integers")


class EvaluatorType(NamedTuple):
  """A registered evaluator: its factory and the schema (and defaults) of its own keys."""

  factory: Factory
  keys: dict[str, tuple[Field, Any]]  # key -> (schema, default); default may read the config.


def _data(config: Any, key: str, default: Any) -> Any:
  data = config.get("data", {}) if hasattr(config, "get") else {}
  return data.get(key, default) if hasattr(data, "get") else default


def _pad_id(config: Any) -> int:
  try:
    return int(config.model.text.get("pad_id", 0))
  except (AttributeError, KeyError, TypeError):
    return 0


def _context_length(config: Any) -> int:
  return int(_data(config, "context_length", 32))


_FEATURES = {
    "train_split": (Field(_STR), lambda c: _data(c, "train_split", "train")),
    "max_train": (Field(_INT, check=_pos, allowed="> 0"), 20_000),
    "modality": (Field(_STR, check=lambda m: m in ("image", "text"),
                       allowed="'image' or 'text'"), "image"),
}

EVALUATORS: dict[str, EvaluatorType] = {
    "retrieval": EvaluatorType(contrastive.retrieval, {
        "ks": (_KS, (1, 5, 10)),
        "block": (Field(_INT, check=_pos, allowed="> 0"), 1024)}),
    "zeroshot": EvaluatorType(contrastive.zeroshot, {
        "templates": (Field(_SEQ, check=lambda t: len(t) > 0 and all("{}" in x for x in t),
                            allowed="a non-empty list of strings each containing '{}'"),
                      lambda c: tuple(_data(c, "prompt_templates", ("{}",)))),
        "ks": (_KS, (1, 5))}),
    "linear_probe": EvaluatorType(contrastive.linear_probe, {
        **_FEATURES, "l2": (Field(_NUM + _SEQ), (1e-3, 1e-2, 1e-1, 1.0))}),
    "knn": EvaluatorType(contrastive.knn, {
        **_FEATURES, "k": (Field(_INT, check=_pos, allowed="> 0"), 20),
        "temperature": (Field(_NUM, check=_pos, allowed="> 0"), 0.07)}),
    "representation": EvaluatorType(contrastive.representation_diagnostics, {
        "collapse_ratio": (Field(_NUM, check=_pos, allowed="> 0"), 0.1),
        "max_samples": (Field(_INT, check=lambda x: x > 1, allowed="> 1"), 4096)}),
    "perplexity": EvaluatorType(language.perplexity, {
        "pad_id": (Field(_INT), _pad_id)}),
    "bleu": EvaluatorType(language.bleu, {
        "pad_id": (Field(_INT), _pad_id),
        "max_length": (Field(_INT, check=_pos, allowed="> 0"), _context_length)}),
}

COMMON_KEYS: dict[str, tuple[Field, Any]] = {
    "type": (Field(_STR, check=lambda t: t in EVALUATORS,
                   allowed=f"one of {sorted(EVALUATORS)}"), None),
    "every": (Field(_INT, required=False, check=lambda x: x >= 0,
                    allowed="0 (only at the end) or a positive integer"),
              lambda c: int(c.get("eval_every", 0))),
    "split": (Field(_STR, required=False), lambda c: _data(c, "eval_split", "validation")),
    "batch_size": (Field(_INT, required=False, check=_pos, allowed="> 0"),
                   lambda c: int(c.get("eval", {}).get("batch_size", 256))),
    "prefix": (Field(_STR, required=False), None),  # None: "NAME/".
}


def _schema(kind: str) -> dict[str, Field]:
  keys = {**COMMON_KEYS, **EVALUATORS[kind].keys}
  fields = {k: f for k, (f, _) in keys.items()}
  return {k: (f if k == "type" else Field(f.types, False, f.check, f.allowed))
          for k, f in fields.items()}


def check_evals_config(evals: Any) -> None:
  """Validates ``config.evals`` (unknown type or key, wrong type, bad value) naming the key."""
  for name, spec in evals.items():
    if not hasattr(spec, "keys"):
      raise ConfigError(f"Config key evals.{name}={spec!r} must be a dict with at least 'type'.")
    kind = spec.get("type")
    if kind not in EVALUATORS:
      raise ConfigError(f"Config key evals.{name}.type={kind!r} is unknown; known evaluator"
                        f" types: {sorted(EVALUATORS)}.")
    check_section(spec, _schema(kind), f"evals.{name}.")


def resolve_spec(name: str, spec: Any, config: Any) -> dict[str, Any]:
  """The spec with every key of its type filled in (defaults may come from the config)."""
  check_evals_config({name: spec})
  resolved = {}
  for key, (_, default) in {**COMMON_KEYS, **EVALUATORS[spec["type"]].keys}.items():
    value = spec[key] if key in spec else default
    resolved[key] = value(config) if callable(value) else value
  if resolved["prefix"] is None:
    resolved["prefix"] = f"{name}/"
  return resolved


def prefixed(evaluate: Evaluator, prefix: str) -> Evaluator:
  """``evaluate`` with ``prefix`` on every metric name; ``chance`` is carried over."""

  def wrapped(params: Any) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in evaluate(params).items()}

  wrapped.chance = dict(getattr(evaluate, "chance", {}))  # type: ignore[attr-defined]
  return wrapped


def build_from_specs(specs: Any, config: Any, ctx: EvalContext) -> list[tuple[str, int, Evaluator]]:
  """``[(name, every, evaluate)]`` for a dict of specs, all sharing ``ctx``."""
  out = []
  for name, spec in specs.items():
    resolved = resolve_spec(name, spec, config)
    try:
      evaluate = EVALUATORS[resolved["type"]].factory(resolved, ctx)
    except (ValueError, KeyError) as e:
      raise ConfigError(f"evals.{name} ({resolved['type']}): {e}") from e
    out.append((name, int(resolved["every"]), prefixed(evaluate, resolved["prefix"])))
  return out
