"""build_evaluators: config.evals -> scheduled evaluators, on fake models with known answers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import sacrebleu

from mmie.config import ConfigError
from mmie.evaluate import EvalContext, build_contrastive_evaluator, build_evaluators
from mmie.evaluate.registry import check_evals_config

N = 8  # Images; each is the one-hot vector of its index.
WORDS = [f"w{i}" for i in range(N)]


class BagOfWords(nn.Module):
  """A two-tower model whose embeddings are exact: image i -> e_i, tokens -> sum of e_t."""

  dim: int = N

  def setup(self):
    self.w_image = self.param("w_image", nn.initializers.zeros, (self.dim, self.dim))
    self.w_text = self.param("w_text", nn.initializers.zeros, (self.dim, self.dim))

  def encode_image(self, images):
    return images.reshape(images.shape[0], -1) @ self.w_image

  def encode_text(self, tokens):  # one_hot(-1) = 0: -1 is padding.
    return jax.nn.one_hot(tokens, self.dim).sum(axis=1) @ self.w_text

  def generate(self, source, max_length):  # A "translator" that copies its input.
    return source[:, :max_length]


class Bigram(nn.Module):
  """A language model whose logits are a learned table row per previous token."""

  vocab: int = 4

  @nn.compact
  def __call__(self, tokens):
    return self.param("table", nn.initializers.zeros, (self.vocab, self.vocab))[tokens]


def _split(labelled=True):
  text = -np.ones((N, 3), np.int32)
  text[:, 0] = np.arange(N)
  return {"image": np.eye(N, dtype=np.float32).reshape(N, 1, 1, N), "text": text,
          "label": (np.arange(N) % 2 if labelled else -np.ones(N)).astype(np.int32),
          "captions": WORDS, "class_names": ["even", "odd"] if labelled else []}


def _prompts(names, templates):
  # Class c's prompt names every image of that class: a perfect zero-shot classifier.
  ids = -np.ones((len(names), len(templates), N), np.int32)
  for c in range(len(names)):
    ids[c, :, :N // 2] = np.arange(c, N, 2)
  return ids


def _context(config, model, splits=None):
  splits = splits or {"validation": _split(), "train": _split()}
  return EvalContext(config, model, load_split=lambda name: splits[name],
                     encode_prompts=_prompts, decode=lambda ids: " ".join(
                         WORDS[i] for i in ids if i >= 0))


def _config(evals=None):
  config = ml_collections.ConfigDict({
      "eval_every": 10, "data": {"eval_split": "validation", "train_split": "train",
                                 "prompt_templates": ("{}", "a {}"), "context_length": 3},
      "evals": {"eval": {"type": "contrastive", "batch_size": 3}}, "model": {"text": {"pad_id": -1}}})
  if evals is not None:
    config.evals = evals
  return ml_collections.FrozenConfigDict(config)


PARAMS = {"w_image": jnp.eye(N), "w_text": jnp.eye(N)}
# Captions land on the reversed image's dimension: every retrieval is wrong.
WRONG = {"w_image": jnp.eye(N), "w_text": jnp.eye(N)[::-1]}


def test_default_is_one_contrastive_evaluator_on_eval_every():
  config = _config()
  [(name, every, evaluate)] = build_evaluators(config, BagOfWords(), context=_context(
      config, BagOfWords()))
  assert (name, every) == ("eval", 10)
  metrics = evaluate(PARAMS)
  assert metrics["eval/i2t_recall@1"] == metrics["eval/t2i_recall@1"] == 100.0
  assert metrics["eval/i2t_median_rank"] == 1.0
  assert metrics["eval/zeroshot_top1"] == 100.0
  assert metrics["eval/alignment"] == pytest.approx(0.0)
  assert metrics["eval/image_effective_rank"] == pytest.approx(N)
  assert evaluate.chance["recall@1"] == pytest.approx(100 / N)
  assert evaluate.chance["zeroshot_top1"] == 50.0


def test_configured_evaluators_keep_their_schedules_and_prefixes():
  config = _config({
      "val": {"type": "retrieval", "every": 5, "ks": (1, 2)},
      "probe": {"type": "linear_probe", "every": 0, "l2": 1e-3},
      "knn": {"type": "knn", "k": 3, "prefix": "nn/"},
      "zs": {"type": "zeroshot"},
  })
  model = BagOfWords()
  evaluators = build_evaluators(config, model, context=_context(config, model))
  assert {n: e for n, e, _ in evaluators} == {"val": 5, "probe": 0, "knn": 10, "zs": 10}
  metrics = {}
  for _, _, evaluate in evaluators:
    metrics.update(evaluate(PARAMS))
  assert metrics["val/i2t_recall@2"] == 100.0
  assert "val/i2t_recall@10" not in metrics
  assert metrics["probe/linear_probe_top1"] == 100.0
  # Each test image's nearest training image is itself (similarity 1, weight e^(1/0.07)); the
  # other two neighbours have similarity 0 and weight e^0 each: the vote is always right.
  assert metrics["nn/knn3_top1"] == 100.0
  assert metrics["zs/zeroshot_top1"] == 100.0
  val = {n: fn for n, _, fn in evaluators}["val"]
  assert val(WRONG)["val/i2t_recall@1"] == 0.0


def test_embeddings_are_reused_across_evaluators_and_refreshed_for_new_params():
  config = _config({"a": {"type": "retrieval"}, "b": {"type": "representation"}})
  model = BagOfWords()
  ctx = _context(config, model)
  fns = {n: fn for n, _, fn in build_evaluators(config, model, context=ctx)}
  a, b = fns["a"], fns["b"]
  a(PARAMS)
  first = ctx.split_embeddings(PARAMS, "validation", "image", 3)
  b(PARAMS)
  assert ctx.split_embeddings(PARAMS, "validation", "image", 3) is first
  assert a(WRONG)["a/i2t_recall@1"] == 0.0


def test_perplexity_evaluator_against_numpy():
  table = np.log(np.array([[0.1, 0.2, 0.3, 0.4]] * 4, np.float32))
  table[2] = np.log([0.7, 0.1, 0.1, 0.1])
  tokens = np.array([[1, 2, 0, 3], [2, 3, 3, 0], [3, 2, 1, 0]], np.int32)
  config = _config({"ppl": {"type": "perplexity", "pad_id": 0, "batch_size": 2}})
  ctx = _context(config, Bigram(), {"validation": {"text": tokens}})
  [(_, _, evaluate)] = build_evaluators(config, Bigram(), context=ctx)
  got = evaluate({"table": jnp.asarray(table)})
  probs = np.exp(table)
  nll = [-np.log(probs[row[i], row[i + 1]]) for row in tokens for i in range(3)
         if row[i + 1] != 0]
  assert got["ppl/perplexity"] == pytest.approx(np.exp(np.mean(nll)), rel=1e-5)


def test_bleu_evaluator_with_a_copying_model():
  source = np.array([[0, 1, 2, 3, 4], [7, 6, 5, 4, -1], [1, 3, 5, 7, 0]], np.int32)
  references = ["w0 w1 w2 w3 w4", "w7 w6 w5 w4", "w1 w3 w5 w7 w0"]
  split = {"source": source, "references": references}
  config = _config({"bleu": {"type": "bleu", "batch_size": 2, "max_length": 5}})
  ctx = _context(config, BagOfWords(), {"validation": split})
  [(_, _, evaluate)] = build_evaluators(config, BagOfWords(), context=ctx)
  assert evaluate(PARAMS)["bleu/bleu"] == pytest.approx(100.0)
  split["references"] = ["w0 w1 w2 w3 w4", "w7 w6 w5 w4", "w0 w1 w2 w3 w4"]  # Third differs.
  ctx = _context(config, BagOfWords(), {"validation": split})
  [(_, _, evaluate)] = build_evaluators(config, BagOfWords(), context=ctx)
  expected = sacrebleu.corpus_bleu(references, [split["references"]]).score
  assert evaluate(PARAMS)["bleu/bleu"] == pytest.approx(expected) and expected < 100


@pytest.mark.parametrize("evals, message", [
    ({"x": {"type": "nope"}}, "evals.x.type='nope' is unknown"),
    ({"x": {"type": "knn", "kk": 3}}, "Unknown config key evals.x.kk"),
    ({"x": {"type": "knn", "every": -1}}, "evals.x.every=-1 is not allowed"),
    ({"x": {"type": "zeroshot", "templates": ("no slot",)}}, "evals.x.templates"),
    ({"x": 3}, "evals.x=3 must be a dict"),
    ({"x": {"type": "retrieval", "ks": (0, 5)}}, "evals.x.ks=.* positive integers"),
])
def test_bad_specs_name_the_key(evals, message):
  with pytest.raises(ConfigError, match=message):
    check_evals_config(evals)


def test_evaluator_that_cannot_run_on_the_data_says_why():
  config = _config({"zs": {"type": "zeroshot"}})
  ctx = _context(config, BagOfWords(), {"validation": _split(labelled=False)})
  with pytest.raises(ConfigError, match="evals.zs .*needs class labels"):
    build_evaluators(config, BagOfWords(), context=ctx)
  # The default evaluator quietly skips zero-shot on unlabelled data instead.
  default = build_contrastive_evaluator(_config(), BagOfWords(), context=ctx)
  assert not [k for k in default(PARAMS) if "zeroshot" in k]
