"""Principles as data, and the evaluator that scores a text against them.

A principle is a name, a weight, its detectors (call-strings of mmie/safety/detectors.py or
callables) and a sentence saying what a violation is. ``DEFAULT_PRINCIPLES`` holds the
prototype's four (harm prevention, truthfulness, fairness, respect for autonomy); a config
section ``{name: {weight, detectors, violation}}`` replaces them (``principles_from_config``).

``Evaluator(principles).evaluate(text)`` returns, per principle, the flagged spans and a score
in [0, 1]: 1 with no span, halved by each span (``0.5 ** n``), so one mention counts and many
count more without any count reaching 0. The overall score is the weight-averaged mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mmie.safety import detectors as detectors_lib
from mmie.safety.detectors import Span


@dataclasses.dataclass(frozen=True)
class Principle:
  """One principle: ``detectors`` find its violations; ``weight`` is its share of the score."""

  name: str
  weight: float
  detectors: tuple[Any, ...]
  violation: str

  def __post_init__(self):
    if not self.name:
      raise ValueError("a principle needs a name.")
    if not self.weight >= 0:
      raise ValueError(f"principle {self.name!r}: weight must be >= 0, got {self.weight!r}.")
    if not self.detectors:
      raise ValueError(f"principle {self.name!r} has no detectors.")


DEFAULT_PRINCIPLES: tuple[Principle, ...] = (
    Principle("harm_prevention", 1.0,
              ("lexicon(name='violence')", "lexicon(name='weapons')",
               "lexicon(name='self_harm')", "pattern(name='harm_instructions')"),
              "describes, encourages or instructs violence, weapons or self-harm"),
    Principle("truthfulness", 0.5, ("lexicon(name='deception')",),
              "states claims as guaranteed or proven that no source supports"),
    Principle("fairness", 1.0, ("pattern(name='group_generalisation')",),
              "generalises about a group of people by identity"),
    Principle("respect_for_autonomy", 0.5, ("lexicon(name='coercion')",),
              "pressures the reader instead of leaving the decision to them"),
)


def principles_from_config(section: Mapping[str, Any]) -> tuple[Principle, ...]:
  """``{name: {weight, detectors, violation}}`` (a config section) -> principles."""
  out = []
  for name, spec in section.items():
    unknown = set(spec) - {"weight", "detectors", "violation"}
    if unknown:
      raise ValueError(f"safety principle {name!r}: unknown keys {sorted(unknown)}; a "
                       "principle has weight, detectors and violation.")
    detectors = spec.get("detectors", ())
    if isinstance(detectors, str):
      detectors = (detectors,)
    out.append(Principle(name, float(spec.get("weight", 1.0)), tuple(detectors),
                         str(spec.get("violation", ""))))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The evaluator's verdict on one text."""

  text: str
  spans: dict[str, list[Span]]   # principle -> its flagged spans, in text order
  scores: dict[str, float]       # principle -> 0.5 ** (number of spans)
  score: float                   # weight-averaged mean of the scores

  @property
  def flagged(self) -> list[str]:
    """The principles with at least one span."""
    return [name for name, spans in self.spans.items() if spans]

  def all_spans(self) -> list[Span]:
    """Every flagged span, merged where they overlap, in text order."""
    merged: list[Span] = []
    for span in sorted((s for spans in self.spans.values() for s in spans),
                       key=lambda s: (s.start, -s.end)):
      if merged and span.start < merged[-1].end:
        last = merged[-1]
        end = max(last.end, span.end)
        merged[-1] = Span(last.start, end, self.text[last.start:end], last.detector)
      else:
        merged.append(span)
    return merged


class Evaluator:
  """Scores texts against principles (``DEFAULT_PRINCIPLES`` unless given)."""

  def __init__(self, principles: Sequence[Principle] = DEFAULT_PRINCIPLES):
    if not principles:
      raise ValueError("the evaluator needs at least one principle.")
    names = [p.name for p in principles]
    if len(set(names)) != len(names):
      raise ValueError(f"principle names must be unique, got {names}.")
    self.principles = tuple(principles)
    self._detectors = {p.name: [detectors_lib.build_detector(d) for d in p.detectors]
                       for p in self.principles}

  def evaluate(self, text: str) -> Evaluation:
    spans = {}
    for principle in self.principles:
      found = {s for detect in self._detectors[principle.name] for s in detect(text)}
      spans[principle.name] = sorted(found, key=lambda s: (s.start, s.end, s.detector))
    scores = {name: 0.5 ** len(found) for name, found in spans.items()}
    total = sum(p.weight for p in self.principles)
    score = (sum(p.weight * scores[p.name] for p in self.principles) / total if total
             else 1.0)
    return Evaluation(text, spans, scores, score)

  def __call__(self, texts: Sequence[str]) -> list[Evaluation]:
    return [self.evaluate(t) for t in texts]
