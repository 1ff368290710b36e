"""Jittable autoregressive decoding: greedy, sampling and beam search with static shapes.

Model-agnostic: a model enters only through ``step_fn(tokens [N], state) -> (logits [N, V],
state)``, which consumes one token per sequence and advances its KV cache held in ``state``
(see ``mmie.models.seq2seq.decoder_step_fn``). Every leaf of ``state`` with a leading axis is
per-sequence ([N, ...]) and is repeated / reordered with the beams; scalar leaves (cache
indices) are shared. ``prefix`` [B, P] holds the tokens already known (BOS for translation,
the prompt for a language model); ``state`` must already have consumed ``prefix[:, :-1]``.

Output buffers have the fixed ``max_length`` (prefix included), so every function compiles
once per shape; loops are ``lax.while_loop`` and stop early once every sequence has ended.
After EOS a sequence is padded with ``pad_id``.

Logit processors follow Hugging Face's order: repetition penalty (Keskar et al. 2019, CTRL),
no-repeat n-gram, then (sampling only) temperature, top-k and top-p (Holtzman et al. 2020).
Beam search ranks finished hypotheses by log p / lp(length) with the GNMT length penalty
lp = ((5 + length) / 6) ** alpha (Wu et al. 2016), as T5 and flax's WMT example do; the
length counts generated tokens including EOS, and a hypothesis filling ``max_length`` counts
as finished.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Any], tuple[Array, Any]]

NEG_INF = -1.0e9  # Finite, so fully banned rows stay NaN-free through log_softmax.


def _check_lengths(prefix: Array, max_length: int) -> tuple[int, int]:
  if prefix.ndim != 2 or prefix.shape[1] < 1:
    raise ValueError(f"decoding: prefix must be int [batch, length >= 1] (BOS or a prompt); "
                     f"got shape {prefix.shape}.")
  if max_length <= prefix.shape[1]:
    raise ValueError(f"decoding: max_length={max_length} leaves no room after the prefix of "
                     f"length {prefix.shape[1]}; use max_length > prefix length.")
  return prefix.shape[0], prefix.shape[1]


def repetition_penalty_logits(logits: Array, history: Array, length: Array,
                              penalty: float) -> Array:
  """CTRL's penalty on tokens already in ``history[:, :length]``: positive logits / penalty,
  negative logits * penalty (penalty > 1 discourages repeats)."""
  rows = jnp.arange(logits.shape[0])[:, None]
  seen = jnp.arange(history.shape[1])[None, :] < length
  present = jnp.zeros(logits.shape, bool).at[rows, history].max(seen)
  penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
  return jnp.where(present, penalised, logits)


def no_repeat_ngram_logits(logits: Array, history: Array, length: Array, n: int) -> Array:
  """Bans every token that would complete an n-gram already present in ``history[:, :length]``.

  For each start j <= length - n whose first n - 1 tokens equal the last n - 1 tokens of the
  history, token history[j + n - 1] is banned: O(N * max_length * n), static shapes.
  """
  num, max_len = history.shape
  starts = jnp.arange(max_len)
  match = starts[None, :] <= length - n  # [1, L]: windows lying inside the history.
  for k in range(n - 1):
    window_k = jnp.roll(history, -k, axis=1)  # window_k[:, j] = history[:, j + k].
    tail_k = jax.lax.dynamic_index_in_dim(history, length - (n - 1) + k, axis=1)  # [N, 1].
    match = match & (window_k == tail_k)
  completion = jnp.roll(history, -(n - 1), axis=1)
  rows = jnp.arange(num)[:, None]
  banned = jnp.zeros(logits.shape, bool).at[rows, completion].max(
      jnp.broadcast_to(match, completion.shape))
  return jnp.where(banned, NEG_INF, logits)


def top_k_logits(logits: Array, k: int) -> Array:
  """Keeps the k largest logits per row (ties at the k-th value kept), the rest to NEG_INF."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_logits(logits: Array, p: float) -> Array:
  """Nucleus filter: keeps the smallest set of most likely tokens whose probability >= p."""
  if p >= 1.0:
    return logits
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # Mass of strictly more likely tokens.
  kept = jnp.where(before < p, sorted_logits, jnp.inf)
  cutoff = jnp.min(kept, axis=-1, keepdims=True)  # The first token is always kept.
  return jnp.where(logits < cutoff, NEG_INF, logits)


def process_logits(logits: Array, history: Array, length: Array, *,
                   repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> Array:
  """The history-dependent processors shared by every search, in float32."""
  logits = logits.astype(jnp.float32)
  if repetition_penalty != 1.0:
    logits = repetition_penalty_logits(logits, history, length, repetition_penalty)
  if no_repeat_ngram_size > 0:
    logits = no_repeat_ngram_logits(logits, history, length, no_repeat_ngram_size)
  return logits


def _check_processors(repetition_penalty: float, no_repeat_ngram_size: int) -> None:
  if repetition_penalty <= 0:
    raise ValueError(f"decoding: repetition_penalty={repetition_penalty} must be > 0 "
                     "(1.0 = off, > 1 discourages repeats).")
  if no_repeat_ngram_size < 0:
    raise ValueError(f"decoding: no_repeat_ngram_size={no_repeat_ngram_size} must be >= 0 "
                     "(0 = off).")


def _autoregress(step_fn: StepFn, state: Any, prefix: Array, choose: Callable[..., Array], *,
                 max_length: int, eos_id: int, pad_id: int,
                 processors: dict[str, Any]) -> Array:
  """Shared greedy/sampling loop: ``choose(logits, i) -> tokens`` picks each next token."""
  batch, start = _check_lengths(prefix, max_length)
  tokens = jnp.full((batch, max_length), pad_id, jnp.int32).at[:, :start].set(prefix)

  def cond(carry):
    i, _, done, _ = carry
    return (i < max_length) & ~jnp.all(done)

  def body(carry):
    i, tokens, done, state = carry
    logits, state = step_fn(tokens[:, i - 1], state)
    logits = process_logits(logits, tokens, i, **processors)
    chosen = jnp.where(done, pad_id, choose(logits, i).astype(jnp.int32))
    return i + 1, tokens.at[:, i].set(chosen), done | (chosen == eos_id), state

  carry = (jnp.asarray(start, jnp.int32), tokens, jnp.zeros((batch,), bool), state)
  return jax.lax.while_loop(cond, body, carry)[1]


def greedy(step_fn: StepFn, state: Any, prefix: Array, *, max_length: int, eos_id: int,
           pad_id: int = 0, repetition_penalty: float = 1.0,
           no_repeat_ngram_size: int = 0) -> Array:
  """Most likely next token at each step -> tokens [B, max_length] (prefix included)."""
  _check_processors(repetition_penalty, no_repeat_ngram_size)
  return _autoregress(step_fn, state, prefix, lambda logits, i: jnp.argmax(logits, -1),
                      max_length=max_length, eos_id=eos_id, pad_id=pad_id,
                      processors=dict(repetition_penalty=repetition_penalty,
                                      no_repeat_ngram_size=no_repeat_ngram_size))


def sample(step_fn: StepFn, state: Any, prefix: Array, rng: Array, *, max_length: int,
           eos_id: int, pad_id: int = 0, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, repetition_penalty: float = 1.0,
           no_repeat_ngram_size: int = 0) -> Array:
  """Ancestral sampling from softmax(processed logits / temperature), filtered by top-k
  (0 = off) then top-p (1.0 = off) -> tokens [B, max_length]; step i uses fold_in(rng, i)."""
  _check_processors(repetition_penalty, no_repeat_ngram_size)
  if temperature <= 0:
    raise ValueError(f"sample: temperature={temperature} must be > 0; use greedy() for the "
                     "temperature -> 0 limit.")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"sample: top_p={top_p} must be in (0, 1] (1.0 = off).")
  if top_k < 0:
    raise ValueError(f"sample: top_k={top_k} must be >= 0 (0 = off).")

  def choose(logits: Array, i: Array) -> Array:
    logits = top_p_logits(top_k_logits(logits / temperature, top_k), top_p)
    return jax.random.categorical(jax.random.fold_in(rng, i), logits, axis=-1)

  return _autoregress(step_fn, state, prefix, choose, max_length=max_length, eos_id=eos_id,
                      pad_id=pad_id, processors=dict(repetition_penalty=repetition_penalty,
                                                     no_repeat_ngram_size=no_repeat_ngram_size))


def sample_after_prompts(step_fn: StepFn, state: Any, prompt: Array, prompt_length: Array,
                         rng: Array, *, max_length: int, eos_id: int, pad_id: int = 0,
                         temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                         logit_bias: Array | None = None,
                         new_tokens: int | None = None, min_new_tokens: int = 0) -> Array:
  """Samples continuations of prompts of different lengths in one batch -> [B, max_length].

  Row b's first ``prompt_length[b]`` tokens of ``prompt`` [B, P] (BOS first) are forced and
  the rest sampled as ``sample`` does, so one compiled loop serves every prompt length; the
  decoder ``state`` must have consumed nothing (build it from ``prompt[:, :1]``).
  ``logit_bias`` [V] or [B, V] is added to the logits before sampling (a large negative value
  bans a token: the constitutional revision's masked words). ``new_tokens``: each row samples
  at most that many tokens after its own prompt, PAD after them (so every row's response has
  the same budget whatever its prompt's length); ``min_new_tokens``: EOS is banned until a
  row has sampled that many (Hugging Face's ``min_new_tokens``; PPO's guard against a reward
  model that prefers short answers).
  """
  if temperature <= 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
    raise ValueError(f"sample_after_prompts: temperature={temperature} must be > 0, top_p="
                     f"{top_p} in (0, 1] and top_k={top_k} >= 0.")
  prompt_length = jnp.asarray(prompt_length, jnp.int32)
  padded = jnp.pad(prompt, ((0, 0), (0, max(max_length - prompt.shape[1], 0))),
                   constant_values=pad_id)

  def choose(logits: Array, i: Array) -> Array:
    if logit_bias is not None:
      logits = logits + logit_bias
    if min_new_tokens > 0:
      too_early = (i < prompt_length + min_new_tokens)[:, None]
      logits = jnp.where(too_early & (jnp.arange(logits.shape[-1]) == eos_id), -jnp.inf,
                         logits)
    logits = top_p_logits(top_k_logits(logits / temperature, top_k), top_p)
    sampled = jax.random.categorical(jax.random.fold_in(rng, i), logits, axis=-1)
    if new_tokens is not None:
      sampled = jnp.where(i < prompt_length + new_tokens, sampled, pad_id)
    return jnp.where(i < prompt_length, padded[:, i], sampled)

  return _autoregress(step_fn, state, prompt[:, :1], choose, max_length=max_length,
                      eos_id=eos_id, pad_id=pad_id, processors={})


def length_penalty(length: Array, alpha: float) -> Array:
  """GNMT length normalisation ((5 + length) / 6) ** alpha (alpha = 0: plain log-probability)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def gather_beams(tree: Any, flat_indices: Array) -> Any:
  """Selects rows ``flat_indices`` [N'] of every non-scalar leaf (the per-sequence axis 0)."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.take(x, flat_indices, axis=0),
                      tree)


def _take_beams(x: Array, beam_indices: Array) -> Array:
  """x [B, K, ...], beam_indices [B, K'] -> [B, K', ...]."""
  return jnp.take_along_axis(x, beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2)),
                             axis=1)


def beam_search(step_fn: StepFn, state: Any, prefix: Array, *, beam_size: int,
                max_length: int, eos_id: int, pad_id: int = 0, alpha: float = 0.6,
                repetition_penalty: float = 1.0,
                no_repeat_ngram_size: int = 0) -> tuple[Array, Array]:
  """Beam search -> (sequences [B, beam_size, max_length], scores [B, beam_size]), best first.

  ``state`` is for B sequences; it is repeated for the beams here. Scores are
  log p(sequence | prefix) / length_penalty(generated length, alpha).
  """
  _check_processors(repetition_penalty, no_repeat_ngram_size)
  if beam_size < 1:
    raise ValueError(f"beam_search: beam_size={beam_size} must be >= 1.")
  batch, start = _check_lengths(prefix, max_length)
  k = beam_size
  state = gather_beams(state, jnp.repeat(jnp.arange(batch), k))
  seqs = jnp.full((batch, k, max_length), pad_id, jnp.int32).at[:, :, :start].set(
      prefix[:, None, :])
  alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  finished = (seqs, jnp.full((batch, k), NEG_INF, jnp.float32))
  best_possible = length_penalty(max_length - start, alpha)

  def cond(carry):
    i, _, alive_lp, (_, fin_scores), _ = carry
    # No alive hypothesis can still beat the worst kept finished one (all log-probs <= 0).
    hopeless = jnp.all(jnp.min(fin_scores, -1) > alive_lp[:, 0] / best_possible)
    return (i < max_length) & ~hopeless

  def body(carry):
    i, seqs, alive_lp, finished, state = carry
    logits, state = step_fn(seqs[:, :, i - 1].reshape(batch * k), state)
    logits = process_logits(logits, seqs.reshape(batch * k, max_length), i,
                            repetition_penalty=repetition_penalty,
                            no_repeat_ngram_size=no_repeat_ngram_size)
    log_probs = jax.nn.log_softmax(logits, -1).reshape(batch, k, -1)
    vocab = log_probs.shape[-1]
    cand_lp, flat = jax.lax.top_k((alive_lp[..., None] + log_probs).reshape(batch, -1), 2 * k)
    origin, token = flat // vocab, flat % vocab
    cand_seqs = _take_beams(seqs, origin).at[:, :, i].set(token)
    # Among the k best candidates, finish those ending in EOS, and all at the last position
    # (as Hugging Face does: an EOS ranked below k is not a hypothesis the beam would keep,
    # which also makes beam_size=1 exactly greedy).
    ends = (jnp.arange(2 * k) < k) & ((token == eos_id) | (i == max_length - 1))
    cand_scores = jnp.where(ends, cand_lp / length_penalty(i - start + 1, alpha), NEG_INF)
    all_seqs = jnp.concatenate([finished[0], cand_seqs], 1)
    fin_scores, keep = jax.lax.top_k(jnp.concatenate([finished[1], cand_scores], 1), k)
    finished = (_take_beams(all_seqs, keep), fin_scores)
    # Continue the best k hypotheses that did not end (at most k of the 2k ended in EOS).
    alive_lp, keep = jax.lax.top_k(jnp.where(token == eos_id, NEG_INF, cand_lp), k)
    seqs = _take_beams(cand_seqs, keep)
    beam_rows = jnp.arange(batch)[:, None] * k + _take_beams(origin, keep)
    return i + 1, seqs, alive_lp, finished, gather_beams(state, beam_rows.reshape(-1))

  carry = (jnp.asarray(start, jnp.int32), seqs, alive_lp, finished, state)
  _, _, _, (fin_seqs, fin_scores), _ = jax.lax.while_loop(cond, body, carry)
  return fin_seqs, fin_scores


# Flax adapters: any module whose ``decode=True`` clone keeps its KV cache in 'cache'.

_SCAN_KEY = "layers"  # Name of nn.scan'ed stacks in mmie.models (leading 'layers' axis).


def _path_keys(path: tuple[Any, ...]) -> list[str]:
  return [str(getattr(p, "key", getattr(p, "name", p))) for p in path]


def _to_decoding_layout(cache: Any, num: int) -> Any:
  """Per-sequence axis first: scanned leaves [layers, N, ...] -> [N, layers, ...], and scanned
  indices [layers] -> [N, layers] (identical rows), so beams gather every leaf on axis 0."""

  def convert(path, x):
    if _SCAN_KEY not in _path_keys(path):
      return x
    return jnp.broadcast_to(x, (num,) + x.shape) if x.ndim == 1 else jnp.moveaxis(x, 0, 1)

  return jax.tree_util.tree_map_with_path(convert, cache)


def _to_model_layout(cache: Any) -> Any:
  """Inverse of ``_to_decoding_layout``."""

  def convert(path, x):
    if _SCAN_KEY not in _path_keys(path):
      return x
    return x[0] if x.ndim == 2 and _path_keys(path)[-1] == "cache_index" else jnp.moveaxis(x, 1, 0)

  return jax.tree_util.tree_map_with_path(convert, cache)


def init_cache(model: Any, params: Any, *args: Any, method: str | None = None) -> Any:
  """An empty KV cache (decoding layout) sized by ``args``, e.g. tokens [N, max_length].

  ``model`` must be the ``decode=True`` clone; only shapes are traced (``jax.eval_shape``),
  and every cache entry (keys, values, indices, position counters) starts at zero.
  """
  shapes = jax.eval_shape(lambda: model.apply({"params": params}, *args, method=method,
                                              mutable=["cache"])[1]["cache"])
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return _to_decoding_layout(cache, args[0].shape[0])


def make_step_fn(model: Any, params: Any, *, method: str | None = None,
                 context: tuple[str, ...] = ()) -> StepFn:
  """``step_fn(tokens [N], state)`` for a decode=True module: ``state['cache']`` is the KV
  cache and ``state[name]`` for each name in ``context`` is passed after the tokens (e.g. the
  encoder states of a translation model); returns the last position's logits [N, V]."""

  def step_fn(tokens: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    logits, cache = feed(model, params, state, tokens[:, None], method=method, context=context)
    return logits[:, -1], cache

  return step_fn


def feed(model: Any, params: Any, state: dict[str, Any], tokens: Array, *,
         method: str | None = None, context: tuple[str, ...] = ()) -> tuple[Array, Any]:
  """Runs tokens [N, T] through the cache (a prompt prefill when T > 1) -> (logits, state)."""
  variables = {"params": params, "cache": _to_model_layout(state["cache"])}
  logits, mutated = model.apply(variables, tokens, *(state[name] for name in context),
                                method=method, mutable=["cache"])
  return logits, {**state, "cache": _to_decoding_layout(mutated["cache"], tokens.shape[0])}


STRATEGIES = ("greedy", "sample", "beam")


def generate(step_fn: StepFn, state: Any, prefix: Array, *, strategy: str = "greedy",
             max_length: int, eos_id: int, pad_id: int = 0, rng: Array | None = None,
             beam_size: int = 4, alpha: float = 0.6, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, repetition_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0) -> Array:
  """One entry point for configs: tokens [B, max_length] by ``strategy`` (beam: the best)."""
  processors = dict(repetition_penalty=repetition_penalty,
                    no_repeat_ngram_size=no_repeat_ngram_size)
  common = dict(max_length=max_length, eos_id=eos_id, pad_id=pad_id, **processors)
  if strategy == "greedy":
    return greedy(step_fn, state, prefix, **common)
  if strategy == "sample":
    if rng is None:
      raise ValueError("generate: strategy='sample' needs rng (a PRNG key).")
    return sample(step_fn, state, prefix, rng, temperature=temperature, top_k=top_k,
                  top_p=top_p, **common)
  if strategy == "beam":
    return beam_search(step_fn, state, prefix, beam_size=beam_size, alpha=alpha, **common)[0][:, 0]
  raise ValueError(f"generate: strategy={strategy!r} is not known; choose one of {STRATEGIES}.")
