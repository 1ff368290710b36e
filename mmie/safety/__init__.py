"""Text safety: principles as data, detectors, an evaluator that scores texts and flags spans,
and a filter (pass, redact, refuse) around any ``generate(prompts) -> texts`` function.

    detectors.py   lexicon and pattern detectors, by call-string
    evaluator.py   Principle, DEFAULT_PRINCIPLES, Evaluator -> Evaluation (spans, scores)
    filter.py      SafetyFilter(generate, evaluator, mode) -> Decision per prompt

The preference and policy heads the constitutional pipeline trains with (Bradley-Terry, DPO,
PPO's clipped surrogate, GAE) are loss heads: mmie/losses/alignment.py.
"""
