"""Encoder-decoder and decoder-only LM: KV cache == full recompute, causality, padding,
decoding with real models (beam scores re-derived by teacher forcing), config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmie.models import decoding
from mmie.models import seq2seq
from tests.model_utils import random_params

VOCAB, LENGTH, BOS, EOS, PAD = 13, 10, 1, 2, 0
_random_params = random_params


def _tokens(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).integers(3, VOCAB, shape), jnp.int32)


@pytest.fixture(scope="module")
def lm():
  """Learned positions (the cache's position counter), grouped-query attention and scanned
  layers (the [layers, batch, ...] cache that beams must reorder on its batch axis)."""
  model = seq2seq.DecoderLM(vocab_size=VOCAB, width=16, num_heads=2, mlp_dim=32,
                            context_length=LENGTH, depth=2, positions="learned", num_kv_heads=1,
                            scan_layers=True)
  params = _random_params(model, _tokens((1, LENGTH), 0))
  return model, params, jax.jit(model.apply)


@pytest.fixture(scope="module")
def translator():
  """Rotary positions (offset from the attention cache), unrolled layers, untied logits."""
  model = seq2seq.Seq2SeqTransformer(vocab_size=VOCAB, width=16, num_heads=2, mlp_dim=32,
                                     context_length=LENGTH, encoder_depth=1, decoder_depth=2,
                                     positions="rope", tie_embeddings=False)
  source, target = _tokens((3, 7), 1), _tokens((3, LENGTH), 2)
  params = _random_params(model, source, target, seed=1)
  return model, params, jax.jit(model.apply)


def _lm_cached_logits(model, params, tokens, prompt_length):
  """Prefill ``prompt_length - 1`` tokens, then feed the rest one at a time."""
  step_fn, state = seq2seq.lm_decoder(model, params, tokens[:, :prompt_length],
                                      max_length=tokens.shape[1])
  def body(state, token):
    logits, state = step_fn(token, state)
    return state, logits
  _, logits = jax.lax.scan(body, state, tokens[:, prompt_length - 1:].T)
  return jnp.swapaxes(logits, 0, 1)


def test_lm_kv_cache_equals_full_recompute(lm):
  model, params, apply = lm
  tokens = _tokens((2, LENGTH), 3)
  full = apply({"params": params}, tokens)
  cached = jax.jit(_lm_cached_logits, static_argnums=(0, 3))(model, params, tokens, 4)
  np.testing.assert_allclose(cached, full[:, 3:], atol=1e-5)


def test_lm_never_sees_the_future(lm):
  _, params, apply = lm
  tokens = _tokens((2, LENGTH), 4)
  base = apply({"params": params}, tokens)
  changed = apply({"params": params}, tokens.at[:, 6].set((tokens[:, 6] + 1) % VOCAB))
  np.testing.assert_allclose(changed[:, :6], base[:, :6], atol=1e-6)
  assert np.abs(changed[:, 6:] - base[:, 6:]).max() > 1e-4  # Control: the change is seen.


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _lm_greedy_and_beam1(model, params, prompt, max_length, _):
  greedy = model.apply({"params": params}, prompt, max_length=max_length,
                       method=model.generate)  # strategy='greedy' by default.
  beams, _ = decoding.beam_search(
      *seq2seq.lm_decoder(model, params, prompt, max_length=max_length), prompt, beam_size=1,
      max_length=max_length, eos_id=EOS, alpha=0.0)
  return greedy, beams[:, 0]


def test_lm_greedy_equals_beam_of_width_one(lm):
  model, params, _ = lm
  greedy, beam = _lm_greedy_and_beam1(model, params, _tokens((3, 3), 5), LENGTH, None)
  np.testing.assert_array_equal(greedy, beam)


def test_translation_kv_cache_equals_full_recompute(translator):
  model, params, apply = translator
  source = _tokens((2, 7), 6).at[0, 5:].set(PAD)
  target = _tokens((2, LENGTH), 7).at[:, 0].set(BOS)
  full = apply({"params": params}, source, target)

  @jax.jit
  def cached(params, source, target):
    step_fn, state = seq2seq.translation_decoder(model, params, source, max_length=LENGTH)
    def body(state, token):
      logits, state = step_fn(token, state)
      return state, logits
    return jnp.swapaxes(jax.lax.scan(body, state, target.T)[1], 0, 1)

  np.testing.assert_allclose(cached(params, source, target), full, atol=1e-5)


def test_translation_decoder_is_causal_and_ignores_source_padding(translator):
  _, params, apply = translator
  source = _tokens((2, 7), 8).at[:, 5:].set(PAD)
  target = _tokens((2, LENGTH), 9)
  base = apply({"params": params}, source, target)
  future = apply({"params": params}, source, target.at[:, 4].set(3))
  np.testing.assert_allclose(future[:, :4], base[:, :4], atol=1e-6)
  padded = apply({"params": params}, source.at[:, 5:].set(7), target,
                 (source != PAD).astype(jnp.int32))
  np.testing.assert_allclose(padded, base, atol=1e-6)
  visible = apply({"params": params}, source.at[:, 2].set(7), target)
  assert np.abs(visible - base).max() > 1e-4  # Control: a real source token matters.


def test_translation_beam_scores_equal_teacher_forced_log_probs(translator):
  model, params, apply = translator
  source, alpha, beam_size = _tokens((2, 6), 10), 0.6, 3
  prefix = jnp.full((2, 1), BOS, jnp.int32)

  @jax.jit
  def search(params, source):
    step_fn, state = seq2seq.translation_decoder(model, params, source, max_length=LENGTH)
    best = model.apply({"params": params}, source, max_length=LENGTH, method=model.generate,
                       strategy="beam", beam_size=beam_size, alpha=alpha)
    return decoding.beam_search(step_fn, state, prefix, beam_size=beam_size,
                                max_length=LENGTH, eos_id=EOS, alpha=alpha), best

  (seqs, scores), best = search(params, source)
  np.testing.assert_array_equal(best, seqs[:, 0])
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)  # Best first.
  log_probs = jax.nn.log_softmax(apply({"params": params}, jnp.repeat(source, beam_size, 0),
                                       seqs.reshape(-1, LENGTH)), -1)
  for row, seq in enumerate(np.asarray(seqs).reshape(-1, LENGTH)):
    generated = seq[1:]
    length = int(np.argmax(generated == EOS)) + 1 if EOS in generated else LENGTH - 1
    lp = sum(float(log_probs[row, t, generated[t]]) for t in range(length))
    expected = lp / ((5.0 + length) / 6.0) ** alpha
    np.testing.assert_allclose(scores.reshape(-1)[row], expected, rtol=1e-4)


def test_decoding_length_beyond_context_fails_clearly(translator):
  model, params, _ = translator
  with pytest.raises(ValueError, match="max_length=11 exceeds the model's context_length=10"):
    seq2seq.translation_decoder(model, params, _tokens((1, 4), 0), max_length=11)


def test_builders_check_keys():
  base = dict(name="lm", vocab_size=VOCAB, width=16, num_heads=2, mlp_dim=32,
              context_length=LENGTH, depth=1)
  assert isinstance(seq2seq.build_lm(base), seq2seq.DecoderLM)
  with pytest.raises(ValueError, match="Unknown config key"):
    seq2seq.build_lm({**base, "encoder_depth": 1})
  with pytest.raises(ValueError, match="positions='alibi' is not known"):
    seq2seq.build_lm({**base, "positions": "alibi"})
  with pytest.raises(ValueError, match="Missing config key model.encoder_depth"):
    seq2seq.build_seq2seq({**{k: v for k, v in base.items() if k != "depth"},
                           "name": "seq2seq", "decoder_depth": 1})
