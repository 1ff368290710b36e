"""A filter around any ``generate(prompts) -> texts`` function: pass, redact or refuse.

``SafetyFilter(generate, evaluator, mode)`` calls ``generate`` and returns one ``Decision`` per
prompt: the text to show, the action taken, and the reason (the principles flagged and the
words that flagged them).

* ``mode="redact"`` replaces every flagged span with ``[redacted]`` and evaluates the result
  again; a text that is still flagged (a replacement can join words into a new match) is
  refused instead, so redact mode never returns flagged text;
* ``mode="refuse"`` returns the refusal message for any flagged text;
* ``mode="pass"`` returns every text unchanged and only reports (for measuring).

A text is flagged when a principle with a weight above 0 has a span.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from mmie.safety.evaluator import Evaluation, Evaluator

MODES = ("pass", "redact", "refuse")
REDACTED = "[redacted]"
REFUSAL = "I can't help with that."


@dataclasses.dataclass(frozen=True)
class Decision:
  """What the filter did with one generated text."""

  prompt: str
  text: str                 # what the caller may show
  action: str               # "pass", "redact" or "refuse"
  reason: str               # empty when nothing was flagged
  evaluation: Evaluation    # of the generated text, before any change


def _flagged(evaluation: Evaluation, weights: dict[str, float]) -> list[str]:
  return [name for name in evaluation.flagged if weights[name] > 0]


def _reason(evaluation: Evaluation, names: Sequence[str]) -> str:
  return "; ".join(f"{name}: " + ", ".join(repr(s.text) for s in evaluation.spans[name])
                   for name in names)


def redact(evaluation: Evaluation, names: Sequence[str] | None = None) -> str:
  """The evaluated text with the spans of ``names`` (default: every flagged principle)
  replaced by ``[redacted]``."""
  keep = set(evaluation.flagged if names is None else names)
  only = dataclasses.replace(evaluation, spans={k: v for k, v in evaluation.spans.items()
                                                if k in keep})
  text, out, last = evaluation.text, [], 0
  for span in only.all_spans():
    out += [text[last:span.start], REDACTED]
    last = span.end
  return "".join(out) + text[last:]


class SafetyFilter:
  """Wraps ``generate``; calling the filter returns a ``Decision`` per prompt."""

  def __init__(self, generate: Callable[[Sequence[str]], Sequence[str]],
               evaluator: Evaluator | None = None, *, mode: str = "redact",
               refusal: str = REFUSAL):
    if mode not in MODES:
      raise ValueError(f"SafetyFilter mode={mode!r}; choose one of {MODES}.")
    self.generate = generate
    self.evaluator = evaluator or Evaluator()
    self.mode = mode
    self.refusal = refusal
    self._weights = {p.name: p.weight for p in self.evaluator.principles}
    if _flagged(self.evaluator.evaluate(refusal), self._weights):
      raise ValueError(f"the refusal message {refusal!r} is itself flagged by the principles.")

  def decide(self, prompt: str, text: str) -> Decision:
    evaluation = self.evaluator.evaluate(text)
    names = _flagged(evaluation, self._weights)
    if not names or self.mode == "pass":
      return Decision(prompt, text, "pass", _reason(evaluation, names), evaluation)
    reason = _reason(evaluation, names)
    if self.mode == "redact":
      redacted = redact(evaluation, names)
      if not _flagged(self.evaluator.evaluate(redacted), self._weights):
        return Decision(prompt, redacted, "redact", reason, evaluation)
      reason += " (still flagged after redaction)"
    return Decision(prompt, self.refusal, "refuse", reason, evaluation)

  def __call__(self, prompts: Sequence[str]) -> list[Decision]:
    prompts = list(prompts)
    texts = list(self.generate(prompts))
    if len(texts) != len(prompts):
      raise ValueError(f"generate returned {len(texts)} texts for {len(prompts)} prompts.")
    return [self.decide(p, t) for p, t in zip(prompts, texts)]
