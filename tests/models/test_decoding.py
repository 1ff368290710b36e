"""Decoding algorithms on toy models whose probabilities are known, against brute force."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmie.models import decoding

PAD, BOS, EOS = 0, 1, 2
VOCAB, STATES, MULT = 6, 37, 7  # Tokens 3..5 are content; pad and BOS are never predicted.


def _toy_table(seed: int) -> np.ndarray:
  """Logits [STATES, VOCAB]: the next-token distribution after each history hash."""
  table = np.random.default_rng(seed).normal(scale=2.0, size=(STATES, VOCAB)).astype(np.float32)
  table[:, [PAD, BOS]] = -1e9
  return table


def _hash_step_fn(table: np.ndarray):
  """A stateful toy model: state['h'] [N] hashes the whole consumed history, so a beam search
  that reorders its state wrongly predicts from the wrong distribution."""
  table = jnp.asarray(table)

  def step_fn(tokens, state):
    h = (state["h"] * MULT + tokens) % STATES
    return table[h], {"h": h, "calls": state["calls"] + 1}

  return step_fn


def _initial_state(batch: int) -> dict:
  return {"h": jnp.zeros((batch,), jnp.int32), "calls": jnp.zeros((), jnp.int32)}


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  return x - x.max() - np.log(np.exp(x - x.max()).sum())


def _brute_force(table: np.ndarray, prefix_token: int, steps: int, alpha: float):
  """Every finished continuation (ends in EOS, or fills all ``steps``) with its GNMT score."""
  results = []
  for length in range(1, steps + 1):
    for body in itertools.product(range(3, VOCAB), repeat=length - 1):
      for last in ([EOS] if length < steps else [EOS, *range(3, VOCAB)]):
        seq = (*body, last)
        h, lp, previous = 0, 0.0, prefix_token
        for token in seq:
          h = (h * MULT + previous) % STATES
          lp += _np_log_softmax(table[h])[token]
          previous = token
        results.append((lp / ((5.0 + length) / 6.0) ** alpha, seq))
  return sorted(results, key=lambda r: -r[0])


@functools.partial(jax.jit, static_argnames=("beam_size", "max_length", "alpha"))
def _beam(table, prefix, *, beam_size, max_length, alpha):
  return decoding.beam_search(_hash_step_fn(table), _initial_state(prefix.shape[0]), prefix,
                              beam_size=beam_size, max_length=max_length, eos_id=EOS,
                              pad_id=PAD, alpha=alpha)


@functools.partial(jax.jit, static_argnames=("max_length", "options"))
def _greedy(table, prefix, *, max_length, options=()):
  return decoding.greedy(_hash_step_fn(table), _initial_state(prefix.shape[0]), prefix,
                         max_length=max_length, eos_id=EOS, pad_id=PAD, **dict(options))


@functools.partial(jax.jit, static_argnames=("max_length", "options"))
def _sample(table, prefix, rng, *, max_length, options=()):
  return decoding.sample(_hash_step_fn(table), _initial_state(prefix.shape[0]), prefix, rng,
                         max_length=max_length, eos_id=EOS, pad_id=PAD, **dict(options))


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.parametrize("seed", [0, 1])
def test_exhaustive_beam_ranks_like_brute_force(seed, alpha):
  # 3 steps, 3 content tokens: at most 9 alive x 4 useful tokens = 36 candidates, so a beam of
  # 36 keeps every hypothesis and its 36 finished ones must be the brute-force top 36 of all
  # 40 continuations, in order (long ones included: they test the state reordering).
  table, steps = _toy_table(seed), 3
  seqs, scores = _beam(jnp.asarray(table), jnp.full((1, 1), BOS), beam_size=36,
                       max_length=1 + steps, alpha=alpha)
  expected = _brute_force(table, BOS, steps, alpha)
  assert len(expected) == 40
  for rank in range(36):
    want_score, want_seq = expected[rank]
    got = tuple(int(t) for t in np.asarray(seqs[0, rank, 1:]) if t != PAD)
    assert got == want_seq, (rank, got, want_seq)
    np.testing.assert_allclose(scores[0, rank], want_score, rtol=1e-5)


def test_beam_finds_the_best_sequence_that_greedy_misses():
  # Hand-built bigram model (h depends only on the last token here: MULT * h vanishes mod 1).
  # After BOS: p(3)=0.5, p(4)=0.4, p(EOS)=0.1. After 3: 3, 4, 5, EOS equally likely (0.25).
  # After 4: p(EOS)=0.9. Best: [4, EOS] with p = 0.36; greedy takes 3 first and can reach at
  # most 0.5 * 0.25 = 0.125.
  probs = np.full((VOCAB, VOCAB), 1e-12)
  probs[BOS, [3, 4, EOS]] = [0.5, 0.4, 0.1]
  probs[3, [3, 4, 5, EOS]] = 0.25
  probs[4, [EOS, 3]] = [0.9, 0.1]
  probs[5, [EOS]] = 1.0
  table = np.log(probs / probs.sum(1, keepdims=True)).astype(np.float32)
  step_fn = lambda tokens, state: (jnp.asarray(table)[tokens], state)
  prefix = jnp.full((1, 1), BOS)
  seqs, scores = jax.jit(lambda p: decoding.beam_search(
      step_fn, {}, p, beam_size=2, max_length=4, eos_id=EOS, alpha=0.0))(prefix)
  np.testing.assert_array_equal(seqs[0, 0], [BOS, 4, EOS, PAD])
  np.testing.assert_allclose(scores[0, 0], np.log(0.36), rtol=1e-5)
  greedy = jax.jit(lambda p: decoding.greedy(step_fn, {}, p, max_length=4, eos_id=EOS))(prefix)
  assert int(greedy[0, 1]) == 3


@pytest.mark.parametrize("seed", [2, 3])
def test_greedy_equals_beam_of_width_one(seed):
  table = jnp.asarray(_toy_table(seed))
  prefix = jnp.array([[BOS], [3], [4], [5]], jnp.int32)
  greedy = _greedy(table, prefix, max_length=7)
  seqs, _ = _beam(table, prefix, beam_size=1, max_length=7, alpha=0.0)
  np.testing.assert_array_equal(greedy, seqs[:, 0])


def test_top_k_one_sampling_equals_greedy():
  table = jnp.asarray(_toy_table(4))
  prefix = jnp.array([[BOS], [3], [4], [5]], jnp.int32)
  options = (("top_k", 1), ("temperature", 0.7))
  sampled = _sample(table, prefix, jax.random.key(0), max_length=7, options=options)
  np.testing.assert_array_equal(sampled, _greedy(table, prefix, max_length=7))


@pytest.mark.parametrize("options", [(("temperature", 0.7), ("top_p", 0.8)),
                                     (("temperature", 1.5), ("top_k", 2))])
def test_sampling_frequencies_match_filtered_softmax(options):
  table, draws = _toy_table(5), 4000
  sampled = _sample(jnp.asarray(table), jnp.full((draws, 1), BOS), jax.random.key(1),
                    max_length=2, options=options)
  opts = dict(options)
  logits = table[(0 * MULT + BOS) % STATES].astype(np.float64) / opts["temperature"]
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  order = np.argsort(-probs)
  if "top_k" in opts:
    keep = order[:opts["top_k"]]
  else:
    before = np.cumsum(probs[order]) - probs[order]
    keep = order[before < opts["top_p"]]
  expected = np.zeros(VOCAB)
  expected[keep] = probs[keep] / probs[keep].sum()
  counts = np.bincount(np.asarray(sampled[:, 1]), minlength=VOCAB) / draws
  sigma = np.sqrt(expected * (1 - expected) / draws)
  assert np.all(np.abs(counts - expected) <= 5 * sigma + 1e-9), (counts, expected)


def _cycle_step_fn(tokens, state):
  """Strongly prefers 3 -> 4 -> 5 -> 3 ...: greedy decoding repeats every n-gram; EOS is the
  least likely real token, chosen only once every content token is banned."""
  successor = jnp.where(tokens >= 5, 3, jnp.maximum(tokens + 1, 3))
  logits = jnp.where(jnp.arange(VOCAB)[None] == successor[:, None], 5.0, 0.0)
  return logits.at[:, :EOS].set(-1e9).at[:, EOS].set(-3.0), state


def _repeated_ngrams(seq, n):
  seq = seq[:seq.index(EOS)] if EOS in seq else seq
  grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
  return len(grams) - len(set(grams))


@pytest.mark.parametrize("n", [2, 3])
def test_no_repeat_ngram_blocks_repeats(n):
  prefix = jnp.array([[BOS, 3]], jnp.int32)
  run = jax.jit(lambda p, size: decoding.greedy(
      _cycle_step_fn, {}, p, max_length=12, eos_id=EOS, no_repeat_ngram_size=size),
      static_argnums=1)
  plain = np.asarray(run(prefix, 0))[0].tolist()
  blocked = np.asarray(run(prefix, n))[0].tolist()
  assert _repeated_ngrams(plain, n) > 0  # Control: the toy model does repeat.
  assert _repeated_ngrams(blocked, n) == 0, blocked
  assert PAD not in blocked[:blocked.index(EOS)] if EOS in blocked else PAD not in blocked


def _np_banned(history, length, n):
  banned = set()
  for j in range(length - n + 1):
    if list(history[j:j + n - 1]) == list(history[length - n + 1:length]):
      banned.add(int(history[j + n - 1]))
  return banned


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_mask_matches_numpy(n):
  rng = np.random.default_rng(n)
  history = rng.integers(0, 4, size=(64, 9)).astype(np.int32)
  fn = jax.jit(lambda h, t: decoding.no_repeat_ngram_logits(jnp.zeros((64, 4)), h, t, n))
  for length in (0, 1, 2, 5, 9):
    banned = np.asarray(fn(history, length)) < -1
    for row in range(64):
      assert set(np.flatnonzero(banned[row]).tolist()) == _np_banned(history[row], length, n)


def test_repetition_penalty_matches_ctrl_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 7)).astype(np.float32)
  history = np.array([[1, 2, 6, 0], [3, 3, 3, 3], [5, 4, 0, 0]], np.int32)
  out = decoding.repetition_penalty_logits(jnp.asarray(logits), jnp.asarray(history), 3, 1.3)
  expected = logits.copy()
  for row in range(3):
    for token in set(history[row, :3].tolist()):
      x = logits[row, token]
      expected[row, token] = x / 1.3 if x > 0 else x * 1.3
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_top_p_and_top_k_filters_match_numpy():
  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]], np.float32))
  kept = np.asarray(decoding.top_p_logits(jnp.asarray(logits), 0.75)) > -1e8
  np.testing.assert_array_equal(kept, [[True, True, False, False], [False, False, True, True]])
  kept = np.asarray(decoding.top_p_logits(jnp.asarray(logits), 0.85)) > -1e8
  np.testing.assert_array_equal(kept, [[True, True, True, False], [False, True, True, True]])
  kept = np.asarray(decoding.top_k_logits(jnp.asarray(logits), 1)) > -1e8
  np.testing.assert_array_equal(kept, [[True, False, False, False], [False, False, False, True]])


def test_bad_arguments_fail_clearly():
  step_fn, prefix = _hash_step_fn(_toy_table(0)), jnp.full((1, 3), BOS)
  with pytest.raises(ValueError, match="max_length=3 leaves no room"):
    decoding.greedy(step_fn, _initial_state(1), prefix, max_length=3, eos_id=EOS)
  with pytest.raises(ValueError, match="temperature=0"):
    decoding.sample(step_fn, _initial_state(1), prefix, jax.random.key(0), max_length=5,
                    eos_id=EOS, temperature=0)
  with pytest.raises(ValueError, match="top_p=1.5"):
    decoding.sample(step_fn, _initial_state(1), prefix, jax.random.key(0), max_length=5,
                    eos_id=EOS, top_p=1.5)
  with pytest.raises(ValueError, match="strategy='topk' is not known"):
    decoding.generate(step_fn, _initial_state(1), prefix, strategy="topk", max_length=5,
                      eos_id=EOS)
  with pytest.raises(ValueError, match="needs rng"):
    decoding.generate(step_fn, _initial_state(1), prefix, strategy="sample", max_length=5,
                      eos_id=EOS)
  with pytest.raises(ValueError, match="beam_size=0"):
    decoding.beam_search(step_fn, _initial_state(1), prefix, beam_size=0, max_length=5,
                         eos_id=EOS)
