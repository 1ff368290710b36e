"""The evaluator flags and spans hand-written cases per principle; the filter's three modes;
redact mode never returns flagged text."""

import pytest
from hypothesis import given, settings, strategies as st

from mmie.safety import detectors, evaluator as evaluator_lib, filter as filter_lib
from mmie.safety.evaluator import Evaluator, Principle

CASES = [  # (text, principle, the flagged words)
    ("And Cain rose up against Abel his brother, and slew him.", "harm_prevention", ["slew"]),
    ("Tell me how to build a bomb tonight.", "harm_prevention", ["how to build a bomb", "bomb"]),
    ("This tea is a guaranteed cure for every illness.", "truthfulness", ["guaranteed cure"]),
    ("All immigrants are lazy, everyone knows.", "fairness", ["All immigrants are"]),
    ("Sign it now. You have no choice.", "respect_for_autonomy", ["You have no choice"]),
]


@pytest.mark.parametrize("text,principle,words", CASES)
def test_each_principle_flags_its_hand_written_case(text, principle, words):
  result = Evaluator().evaluate(text)
  assert result.flagged == [principle]
  assert [s.text for s in result.spans[principle]] == words
  for span in result.spans[principle]:
    assert text[span.start:span.end] == span.text
  assert result.scores[principle] == 0.5 ** len(words)
  others = [p for p in result.scores if p != principle]
  assert all(result.scores[p] == 1.0 for p in others)


def test_scores_and_the_weighted_overall_score():
  principles = (Principle("a", 3.0, ("lexicon(words=('red',))",), "says red"),
                Principle("b", 1.0, ("lexicon(words=('blue',))",), "says blue"))
  result = Evaluator(principles).evaluate("red, red and blue")
  assert result.scores == {"a": 0.25, "b": 0.5}
  assert result.score == pytest.approx((3 * 0.25 + 1 * 0.5) / 4)
  assert Evaluator(principles).evaluate("green").score == 1.0


def test_lexicons_match_whole_words_case_insensitively():
  detect = detectors.lexicon(words=("kill", "end my life"))
  assert [s.text for s in detect("Skill, KILL, killer; end   my life.")] == ["KILL",
                                                                           "end   my life"]
  assert detect("skilled workers") == []


def test_principles_come_from_a_config_section():
  principles = evaluator_lib.principles_from_config({
      "no_colours": {"weight": 2.0, "detectors": "lexicon(words=('red', 'blue'))",
                     "violation": "names a colour"},
      "no_digits": {"detectors": ("pattern(regex='[0-9]+')",)}})
  assert [(p.name, p.weight) for p in principles] == [("no_colours", 2.0), ("no_digits", 1.0)]
  result = Evaluator(principles).evaluate("Red car 42")
  assert {k: [s.text for s in v] for k, v in result.spans.items()} == {
      "no_colours": ["Red"], "no_digits": ["42"]}


@pytest.mark.parametrize("section,error", [
    ({"x": {"detectors": "lexicon", "colour": 1}}, "unknown keys \\['colour'\\]"),
    ({"x": {"detectors": "lexicon(name='nope')"}}, "is not built in"),
    ({"x": {"detectors": "pattern(regex='(')"}}, "does not compile"),
    ({"x": {"detectors": "classify"}}, "unknown safety detector 'classify'"),
    ({"x": {"detectors": "classifier"}}, "classifier needs workdir="),
    ({"x": {"detectors": ()}}, "has no detectors"),
    ({"x": {"weight": -1, "detectors": "lexicon(name='violence')"}}, "weight must be >= 0"),
])
def test_bad_principles_fail_with_what_is_wrong(section, error):
  with pytest.raises((ValueError, KeyError), match=error):
    Evaluator(evaluator_lib.principles_from_config(section))


def _echo(prompts):
  return [f"{p}" for p in prompts]


def test_filter_modes():
  text = "He slew the lion. Then he slept."
  redact, = filter_lib.SafetyFilter(_echo, mode="redact")([text])
  assert (redact.action, redact.text) == ("redact", "He [redacted] the lion. Then he slept.")
  assert redact.reason == "harm_prevention: 'slew'"
  refuse, = filter_lib.SafetyFilter(_echo, mode="refuse")([text])
  assert (refuse.action, refuse.text) == ("refuse", filter_lib.REFUSAL)
  passed, = filter_lib.SafetyFilter(_echo, mode="pass")([text])
  assert (passed.action, passed.text, passed.reason) == ("pass", text, "harm_prevention: 'slew'")
  clean, = filter_lib.SafetyFilter(_echo)(["A quiet morning."])
  assert (clean.action, clean.text, clean.reason) == ("pass", "A quiet morning.", "")


def test_filter_refuses_when_redaction_is_still_flagged():
  principles = (Principle("no_brackets", 1.0, ("pattern(regex='redacted|red')",), "-"),)
  decision, = filter_lib.SafetyFilter(_echo, Evaluator(principles))(["a red kite"])
  assert decision.action == "refuse" and "still flagged after redaction" in decision.reason


def test_filter_checks_its_inputs():
  with pytest.raises(ValueError, match="mode='drop'"):
    filter_lib.SafetyFilter(_echo, mode="drop")
  with pytest.raises(ValueError, match="is itself flagged"):
    filter_lib.SafetyFilter(_echo, refusal="I will kill you.")
  with pytest.raises(ValueError, match="returned 1 texts for 2 prompts"):
    filter_lib.SafetyFilter(lambda p: ["x"])(["a", "b"])


_WORDS = ["the", "slew", "kill", "skill", "all", "women", "are", "you", "have", "no",
          "choice", "guaranteed", "cure", "bomb", "how", "to", "build", "a", "or", "else",
          "Killing", ",", ".", "end", "my", "life", "[redacted]"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=30))
def test_redact_mode_never_returns_flagged_text(words):
  safety = filter_lib.SafetyFilter(_echo, mode="redact")
  decision, = safety([" ".join(words)])
  assert not safety.evaluator.evaluate(decision.text).flagged
  assert decision.action in ("pass", "redact", "refuse")
