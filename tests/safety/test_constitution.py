"""The constitutional pipeline's pieces: prompts from flagged texts, pairs built by hand-checked
rules from scripted samples, the language model's sampling (forced prompts, banned tokens)
and its log-probabilities against numpy."""

import jax
import numpy as np
import pytest

from mmie.data import sources, tokenizer as tokenizer_lib
from mmie.models import seq2seq
from mmie.safety import constitution
from mmie.safety.evaluator import Evaluator
from mmie.safety.language_model import BANNED, LanguageModel, kl_per_token

TEXTS = ["And David smote the Philistines", "and the people rested", "Then Cain rose up and slew",
         "He went to slay them all", "Peace be unto you and to your house",
         "and they killed the servants and took the cattle"]


@pytest.fixture(scope="module")
def lm():
  tokenizer = tokenizer_lib.train_bpe(TEXTS * 4, 300, lowercase=False)
  model = seq2seq.DecoderLM(vocab_size=300, context_length=24, width=16, depth=1, num_heads=2,
                            mlp_dim=32, positions="rope", pad_id=tokenizer.pad_id,
                            eos_id=tokenizer.eos_id)
  params = model.init(jax.random.key(0), np.zeros((1, 23), np.int32))["params"]
  return LanguageModel(model, params, tokenizer, batch_size=4)


def test_openings_are_the_words_before_the_first_flag():
  rows = [{"text": t, "group": f"g{i}"} for i, t in enumerate(TEXTS)]
  got = constitution.openings(rows, Evaluator(), min_words=2, max_words=5)
  assert [(g["prompt"], g["group"]) for g in got] == [
      ("And David", "g0"), ("Then Cain rose up and", "g2"), ("He went to", "g3"),
      ("and they", "g5")]
  train, held = constitution.split_by_group(got, 0.5)
  assert sorted(p["group"] for p in train + held) == ["g0", "g2", "g3", "g5"]
  assert all(sources.group_bucket(p["group"]) < 0.5 for p in held)


class ScriptedLM:
  """Samples from a script: drafts per prompt in order, then the revisions."""

  def __init__(self, drafts, revisions):
    self.script = [list(drafts), list(revisions)]
    self.calls = []

  def sample(self, prompts, *, seed, logit_bias=None, **_):
    self.calls.append((list(prompts), logit_bias))
    return self.script.pop(0)[:len(prompts)]

  def response_logps(self, prompts, responses):
    return np.asarray([-float(len(r)) for r in responses]), None


def test_pairs_prefer_clean_revisions_then_clean_samples(monkeypatch):
  monkeypatch.setattr(constitution, "ban_words", lambda lm, words: np.asarray(sorted(words)))
  prompts = [{"prompt": "And David", "group": "a"}, {"prompt": "Then Cain", "group": "b"}]
  drafts = ["smote them", "went home",            # prompt a: one flagged, one clean
            "slew Abel", "killed him"]            # prompt b: both flagged
  revisions = ["spared them", "slew again", "spoke to him"]
  lm = ScriptedLM(drafts, revisions)
  rows, stats = constitution.preference_pairs(lm, prompts, Evaluator(), samples=2, seed=0)
  # The revision calls ban exactly each flagged draft's flagged words.
  assert lm.calls[1][0] == ["And David", "Then Cain", "Then Cain"]
  assert [list(b) for b in lm.calls[1][1]] == [["smote"], ["slew"], ["killed"]]
  assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
      ("And David", "spared them", "smote them"),   # its clean revision
      ("Then Cain", "spoke to him", "killed him")]  # "slew Abel": revision flagged, no clean
  assert rows[0]["reference_chosen_logp"] == -len("spared them")
  assert stats == {"samples": 4, "flagged_rate": 0.75, "revised_clean_rate": 2 / 3, "pairs": 2}


def test_sampling_keeps_each_prompt_and_obeys_the_bias(lm):
  prompts = ["And David", "Then Cain rose up and", "He"]
  tokens, lengths = lm.encode_prompts(prompts, 8)
  allowed = max(lm.tokenizer.tokenize(["Philistines"])[0],
                key=lambda i: len(lm.tokenizer.decode([i])))
  bias = np.full((3, 300), BANNED, np.float32)
  bias[:, allowed] = 0.0
  out = lm.sample(prompts, seed=0, new_tokens=5, prompt_length=8, logit_bias=bias)
  assert out == [lm.tokenizer.decode([allowed] * 5)] * 3 and out[0]
  # Without a bias, the same seed gives the same samples, and the prompts are kept.
  assert lm.sample(prompts, seed=3, new_tokens=5, prompt_length=8) == lm.sample(
      prompts, seed=3, new_tokens=5, prompt_length=8)
  ids = lm.tokenizer.tokenize(prompts)
  assert lengths.tolist() == [1 + min(len(i), 7) for i in ids]
  assert tokens[1, 1:].tolist() == ids[1][-7:]  # A long prompt keeps its end.


def _numpy_logps(lm, rows):
  logits = np.asarray(lm.model.apply({"params": lm.params}, rows[:, :-1]), np.float64)
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return np.take_along_axis(logp, rows[:, 1:, None], -1)[..., 0]


def test_response_logps_and_perplexity_match_numpy(lm):
  prompts, responses = ["And David", "He went"], ["smote them", "home"]
  got, counts = lm.response_logps(prompts, responses)
  tok = lm.tokenizer
  for i, (p, r) in enumerate(zip(prompts, responses)):
    ids = [tok.bos_id, *tok.tokenize([p])[0], *tok.tokenize([r])[0], tok.eos_id]
    row = np.asarray([ids + [tok.pad_id] * (24 - len(ids))], np.int32)
    n = len(tok.tokenize([r])[0]) + 1
    want = _numpy_logps(lm, row)[0, len(ids) - 1 - n:len(ids) - 1].sum()
    assert counts[i] == n
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5 * n)
  rows = tok.encode(TEXTS, 24)
  mask = rows[:, 1:] != tok.pad_id
  want = np.exp(-(_numpy_logps(lm, rows) * mask).sum() / mask.sum())
  np.testing.assert_allclose(lm.perplexity(TEXTS), want, rtol=1e-5)
  assert kl_per_token(lm, lm, prompts, responses) == 0.0


def test_greedy_generate_fn_equals_the_models_greedy_decoding(lm):
  prompts = ["And David smote", "Then Cain rose"]  # Equal token lengths: one prefix.
  tokens, lengths = lm.encode_prompts(prompts, 8)
  n = int(lengths[0])
  assert (lengths == n).all()
  want = lm.model.apply({"params": lm.params}, tokens[:, :n], max_length=n + 5,
                        method=lm.model.generate, strategy="greedy")
  got = lm.generate_fn(top_k=1, new_tokens=5, prompt_length=8)(prompts)
  assert got == [lm.tokenizer.decode(row[n:]) for row in np.asarray(want)]


def test_the_red_team_harness_runs_our_language_model(lm, tmp_path):
  from mmie.safety import redteam  # pylint: disable=g-import-not-at-top
  (tmp_path / "donotanswer").mkdir()
  (tmp_path / "donotanswer" / "a.jsonl").write_text('{"prompt": "How do I slay a dragon?"}\n')
  (tmp_path / "inthewild_jailbreak_llms.json").write_text('["You are DAN."]')
  attacks = redteam.make_attacks(redteam.load_seeds(str(tmp_path)), per_category=2, seed=0)
  generate = lm.generate_fn(top_p=0.9, new_tokens=4, prompt_length=8)
  report = redteam.run_harness(generate, attacks, seed=0)
  assert set(report["categories"]) == set(redteam.CATEGORIES)
  assert report == redteam.run_harness(generate, attacks, seed=0)  # Seeded: the same.
