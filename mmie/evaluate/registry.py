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
``config.evals`` the run gets its task's default evaluators (``Task.default_evals``; for the
contrastive task the ``contrastive`` suite: retrieval, zero-shot and representation
diagnostics on ``data.eval_split`` every ``eval_every`` steps, as ``eval/...``). Each spec's
keys are filled with their defaults before the config is locked, so
``--config.evals.eval.batch_size=64`` works on a config that never wrote the section; keys
whose default follows the config (``every``: ``eval_every``) hold None until resolved.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import ml_collections
import numpy as np

from mmie import schema as schema_lib
from mmie.schema import ConfigError, Field
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
  """The model's padding id: ``model.pad_id`` (seq2seq, LM) or ``model.text.pad_id``."""
  model = config.get("model", {}) if hasattr(config, "get") else {}
  for section in (model, model.get("text", {}) if hasattr(model, "get") else {}):
    value = section.get("pad_id") if hasattr(section, "get") else None
    if isinstance(value, int):
      return value
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
        **_FEATURES, "l2": (Field(_NUM + _SEQ), (1e-5, 1e-4, 1e-3, 1e-2))}),
    "knn": EvaluatorType(contrastive.knn, {
        **_FEATURES, "k": (Field(_INT + _SEQ, check=lambda k: all(
            isinstance(x, int) and x > 0 for x in ([k] if isinstance(k, int) else k)),
                                 allowed="> 0, or a list of them such as (20, 200)"), 20),
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

def _contrastive_suite(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Retrieval, zero-shot (when the split has class labels) and representation diagnostics
  as one evaluator: the contrastive task's default, one embedding pass for all three."""
  kinds = [k for k in SUITE if spec[k]]
  if "zeroshot" in kinds:
    split = ctx.split(spec["split"])
    if not split.get("class_names") or (np.asarray(split["label"]) < 0).any():
      kinds.remove("zeroshot")
  sub = {k: {"type": k, "split": spec["split"], "batch_size": spec["batch_size"], "prefix": ""}
         for k in kinds}
  parts = build_from_specs(sub, ctx.config, ctx)

  def evaluate(params: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for _, _, part in parts:
      metrics.update(part(params))
    return metrics

  evaluate.chance = {k: v for _, _, part in parts  # type: ignore[attr-defined]
                     for k, v in part.chance.items()}
  return evaluate


def _matching(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  from mmie.evaluate import matching  # pylint: disable=g-import-not-at-top
  return matching.matching(spec, ctx)


EVALUATORS["matching"] = EvaluatorType(_matching, {
    "ks": (_KS, (1, 5, 10)),
    "rerank_k": (Field(_INT, check=_pos, allowed="> 0"), 16)})


def _preference(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  from mmie.evaluate import preference  # pylint: disable=g-import-not-at-top
  return preference.preference(spec, ctx)


EVALUATORS["preference"] = EvaluatorType(_preference, {})


def _text_classification(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  from mmie.evaluate import text_classification  # pylint: disable=g-import-not-at-top
  return text_classification.text_classification(spec, ctx)


EVALUATORS["text_classification"] = EvaluatorType(_text_classification, {
    "class_names": (Field(_SEQ, check=lambda names: all(isinstance(n, str) for n in names),
                          allowed="a list of names, one per class (empty: the class ids)"), ())})


def _vision(kind: str) -> Factory:
  def build(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
    from mmie.evaluate import vision  # pylint: disable=g-import-not-at-top
    return getattr(vision, kind)(spec, ctx)
  return build


EVALUATORS["classification"] = EvaluatorType(_vision("classification"), {"ks": (_KS, (1, 5))})
EVALUATORS["collapse"] = EvaluatorType(_vision("collapse"), {
    "collapse_ratio": (Field(_NUM, check=_pos, allowed="> 0"), 0.1),
    "max_samples": (Field(_INT, check=lambda x: x > 1, allowed="> 1"), 4096)})

SUITE = ("retrieval", "zeroshot", "representation")
EVALUATORS["contrastive"] = EvaluatorType(_contrastive_suite, {
    kind: (Field((bool,)), True) for kind in SUITE})

COMMON_KEYS: dict[str, tuple[Field, Any]] = {
    "type": (Field(_STR, check=lambda t: t in EVALUATORS,
                   allowed=f"one of {sorted(EVALUATORS)}"), None),
    "every": (Field(_INT, check=lambda x: x >= 0,
                    allowed="0 (only at the end) or a positive integer"),
              lambda c: int(c.get("eval_every", 0))),
    "split": (Field(_STR), lambda c: _data(c, "eval_split", "validation")),
    "batch_size": (Field(_INT, check=_pos, allowed="> 0"), 256),
    "prefix": (Field(_STR), None),  # None: "NAME/".
}


def _keys(kind: str) -> dict[str, tuple[Field, Any]]:
  return {**COMMON_KEYS, **EVALUATORS[kind].keys}


def _schema(kind: str) -> dict[str, Field]:
  """Every key optional (None: its default, which may follow the config) except ``type``."""
  return {k: (f if k == "type" else Field(f.types + (type(None),), None, f.check, f.allowed))
          for k, (f, _) in _keys(kind).items()}


def _check_type(name: str, spec: Any) -> str:
  if not hasattr(spec, "keys"):
    raise ConfigError(f"Config key evals.{name}={spec!r} must be a dict with at least 'type'.")
  kind = spec.get("type")
  if kind not in EVALUATORS:
    raise ConfigError(f"Config key evals.{name}.type={kind!r} is unknown."
                      f"{schema_lib.suggestion(kind, EVALUATORS)} Known evaluator types:"
                      f" {', '.join(sorted(EVALUATORS))}.")
  return kind


def check_evals_config(evals: Any) -> None:
  """Validates ``config.evals`` (unknown type or key, wrong type, bad value) naming the key."""
  for name, spec in (evals or {}).items():
    schema_lib.check(spec, _schema(_check_type(name, spec)), f"evals.{name}.")


def _is_dual_encoder(model: Any) -> bool:
  return hasattr(model, "encode_image") and hasattr(model, "encode_text")


def _is_class(name: str) -> Callable[[Any], bool]:
  return lambda model: type(model).__name__ == name


# Which models each evaluator type can evaluate, and how to say so.
_MODEL_NEEDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{kind: (_is_dual_encoder, "a dual encoder (model.name='two_tower')") for kind in (
        "retrieval", "zeroshot", "representation", "contrastive")},
    **{kind: (lambda model: hasattr(model, "encode_image"),
              "a model with image features (model.name='two_tower' or 'image_encoder')")
       for kind in ("linear_probe", "knn", "collapse")},
    "classification": (lambda model: getattr(model, "num_classes", 0) > 0,
                       "an image_encoder with a classifier (model.num_classes > 0)"),
    "matching": (lambda model: hasattr(model, "match"), "a fusion model (model.name='fusion')"),
    "perplexity": (_is_class("DecoderLM"), "a decoder-only LM (model.name='lm')"),
    "bleu": (_is_class("Seq2SeqTransformer"), "an encoder-decoder (model.name='seq2seq')"),
}
_MODEL_NEEDS["text_classification"] = (_is_class("TextClassifier"),
                                       "a text classifier (model.name='text_classifier')")


def check_model(evals: Any, model: Any) -> None:
  """Each evaluator of ``config.evals`` can evaluate ``model``; else a ConfigError naming it."""
  for name, spec in (evals or {}).items():
    kind = _check_type(name, spec)
    fits, needs = _MODEL_NEEDS.get(kind, (lambda _: True, ""))
    if not fits(model):
      raise ConfigError(f"Config key evals.{name}.type={kind!r} evaluates {needs}, but the"
                        f" model is a {type(model).__name__}; remove evals.{name} or choose"
                        f" an evaluator for this model.")


def default_evals(config: Any) -> dict[str, dict[str, Any]]:
  """The task's default evaluators (``Task.default_evals``), or none for an unknown task."""
  from mmie.tasks import TASKS, task_name  # pylint: disable=g-import-not-at-top
  task = TASKS.get(task_name(config.get("task")))
  return {} if task is None else {k: dict(v) for k, v in task.default_evals.items()}


def fill_evals_defaults(config: ml_collections.ConfigDict) -> None:
  """``config.evals`` from the task when absent, each spec's keys filled (before locking)."""
  if not config.get("evals"):
    config.evals = ml_collections.ConfigDict(default_evals(config))
  for spec in config.evals.values():
    if not isinstance(spec, ml_collections.ConfigDict) or spec.get("type") not in EVALUATORS:
      continue  # validate() reports it.
    for key, (field, default) in _keys(spec["type"]).items():
      if key in spec:
        continue
      plain = default is not None and not callable(default)
      spec[key] = default if plain else schema_lib.placeholder_for(field)


def resolve_spec(name: str, spec: Any, config: Any) -> dict[str, Any]:
  """The spec with every key of its type filled in (defaults may come from the config)."""
  check_evals_config({name: spec})
  resolved = {}
  for key, (_, default) in _keys(spec["type"]).items():
    value = spec[key] if spec.get(key) is not None else default
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
