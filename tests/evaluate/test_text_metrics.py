"""Perplexity by hand and BLEU against sacrebleu's own documented example."""

import numpy as np
import pytest

from mmie.evaluate import text_metrics

# sacrebleu 2.x README, "Using SacreBLEU from Python".
REFS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]


def test_bleu_matches_sacrebleu_readme():
  result = text_metrics.bleu(SYS, REFS)
  assert round(result["bleu"], 2) == 48.53  # README: "BLEU = 48.53 ... (BP = 0.943 ...)"
  assert round(result["bleu_brevity_penalty"], 3) == 0.943


def test_bleu_variable_references_matches_readme():
  refs = [["", REFS[0][1], REFS[0][2]], REFS[1]]
  assert round(text_metrics.bleu(SYS, refs)["bleu"], 2) == 29.44  # README's second example.


def test_bleu_single_reference_list_and_errors():
  assert text_metrics.bleu(["a cat sat on the mat"], ["a cat sat on the mat"])["bleu"] == (
      pytest.approx(100.0))
  with pytest.raises(ValueError, match="reference stream 0 has 2 sentences for 3"):
    text_metrics.bleu(SYS, [REFS[0][:2]])


def test_perplexity_of_uniform_logits_is_vocabulary_size():
  logits = np.zeros((2, 5, 7), np.float32)
  targets = np.random.default_rng(0).integers(0, 7, size=(2, 5))
  assert text_metrics.perplexity(logits, targets) == pytest.approx(7.0, rel=1e-5)


def test_perplexity_hand_computed_with_mask():
  # Token 1: p(target)=1/2 -> NLL ln 2; token 2: p=1/4 -> ln 4; token 3 is masked out.
  probs = np.array([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.01, 0.01, 0.98]]])
  logits = np.log(probs).astype(np.float32)
  targets = np.array([[0, 1, 0]])
  mask = np.array([[1, 1, 0]])
  # exp((ln 2 + ln 4) / 2) = 2 ** 1.5
  assert text_metrics.perplexity(logits, targets, mask) == pytest.approx(2 ** 1.5, rel=1e-5)
  total, count = text_metrics.token_nll_sum(logits, targets, mask)
  assert float(count) == 2.0
  assert float(total) == pytest.approx(3 * np.log(2), rel=1e-5)


def test_perplexity_errors():
  with pytest.raises(ValueError, match=r"logits \[B, L, V\]"):
    text_metrics.perplexity(np.zeros((2, 3)), np.zeros((2, 3), int))
  with pytest.raises(ValueError, match="selects no tokens"):
    text_metrics.perplexity(np.zeros((1, 2, 3)), np.zeros((1, 2), int), np.zeros((1, 2)))
