"""Seq2seq and LM tasks: target shifting and masks by hand, the configs' tiny presets build and
validate, and a few optimizer steps through task.forward + cross_entropy learn a copy task."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmie.configs import lm as lm_config
from mmie.configs import translate as translate_config
from mmie import config as config_lib
from mmie import losses
from mmie.models import seq2seq
from mmie.tasks import lm as lm_task
from mmie.tasks import seq2seq as seq2seq_task
from tests.model_utils import random_params


_random_params = random_params


def test_shift_targets_by_hand():
  tokens = jnp.array([[1, 7, 8, 2, 0], [1, 9, 2, 0, 0]])
  inputs, targets, mask = seq2seq_task.shift_targets(tokens)
  np.testing.assert_array_equal(inputs, [[1, 7, 8, 2], [1, 9, 2, 0]])
  np.testing.assert_array_equal(targets, [[7, 8, 2, 0], [9, 2, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 0, 0]])
  explicit = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # A pipeline whose pad id is not 0.
  np.testing.assert_array_equal(seq2seq_task.shift_targets(tokens, explicit)[2],
                                [[1, 1, 1, 1], [1, 1, 0, 0]])
  with pytest.raises(ValueError, match="length >= 2"):
    seq2seq_task.shift_targets(jnp.array([[1], [1]]))


def test_forward_masks_padding_out_of_the_loss():
  model = seq2seq.DecoderLM(vocab_size=11, width=8, num_heads=2, mlp_dim=16, context_length=6,
                            depth=1)
  text = jnp.array([[1, 4, 5, 2, 0, 0], [1, 6, 2, 0, 0, 0]], jnp.int32)
  params = _random_params(model, text[:, :-1])
  outputs = jax.jit(lambda p, b: lm_task.forward(model.apply, p, b, rng=jax.random.key(0),
                                                 train=False))(params, {"text": text})
  loss, metrics = losses.cross_entropy(**outputs)
  log_p = jax.nn.log_softmax(outputs["logits"], -1)
  picked = jnp.take_along_axis(log_p, outputs["targets"][..., None], -1)[..., 0]
  expected = -(picked[0, :3].sum() + picked[1, :2].sum()) / 5.0  # 5 real target tokens.
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics["num_targets"]) == 5.0


@pytest.mark.parametrize("module", [translate_config, lm_config])
@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_config_presets_validate_and_build(module, preset):
  config = config_lib.validate(module.get_config(preset))
  build = seq2seq.build_seq2seq if config.task == "seq2seq" else seq2seq.build_lm
  model = build(config.model)
  assert model.context_length >= config.data.context_length - 1
  losses.build_loss(config.loss)
  with pytest.raises(ValueError, match="unknown preset"):
    module.get_config("huge")


def _copy_batch(rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
  """Translate a random sequence into itself: BOS w... EOS PAD, lengths 2..length-2 words."""
  source = np.zeros((batch, length), np.int32)
  for row in range(batch):
    words = rng.integers(3, 12, size=rng.integers(2, length - 1))
    source[row, :len(words) + 2] = [1, *words, 2]
  return {"source": source, "target": source.copy()}


@pytest.mark.slow  # One compile of 60 scanned train steps: ~8 s CPU.
def test_a_few_steps_learn_the_copy_task():
  config = translate_config.get_config("tiny")
  config.model.vocab_size = 12
  model = seq2seq.build_seq2seq(config.model)
  loss = losses.build_loss(config.loss)
  batch = {k: jnp.asarray(v) for k, v in _copy_batch(np.random.default_rng(0), 16, 8).items()}
  params = _random_params(model, batch["source"], batch["target"][:, :-1])
  tx = optax.adam(3e-3)

  @jax.jit
  def train(params, batch):
    def objective(params):
      inputs = seq2seq_task.forward(model.apply, params, batch, rng=jax.random.key(0),
                                    train=True)
      value, metrics, _ = loss.apply(inputs, {}, step=jnp.zeros((), jnp.int32),
                                     rng=jax.random.key(0))
      return value, metrics["nll"]

    def step(carry, _):
      params, opt_state = carry
      (_, nll), grads = jax.value_and_grad(objective, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), nll

    return jax.lax.scan(step, (params, tx.init(params)), None, length=60)[1]

  nll = np.asarray(train(params, batch))
  assert np.isfinite(nll).all()
  assert nll[-1] < 0.5 * nll[0], nll[[0, 20, 40, -1]]


def test_translation_trains_and_scores_bleu_end_to_end(tmp_path):
  """configs/translate.py:tiny through the real loop on a pairs file: BLEU is evaluated on the
  held-out pairs and the metrics land in metrics.jsonl."""
  from mmie.train import loop  # pylint: disable=g-import-not-at-top

  corpus = tmp_path / "corpus.tsv"
  corpus.write_text("".join(f"number {i}\tnúmero {i}\n" for i in range(200)), encoding="utf-8")
  config = translate_config.get_config("tiny")
  config.data.name = f"pairs(path='{corpus}', validation_fraction=0.1, vocab_size=300)"
  config.data.data_dir = str(tmp_path / "data")
  config.model.vocab_size = 300
  final = loop.train_and_evaluate(config_lib.validate(config), str(tmp_path / "run"))
  assert 0.0 <= final["eval/bleu"] <= 100.0 and "eval/bleu_brevity_penalty" in final
  logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  assert any("eval/bleu" in row for row in logged)
  assert any(row.get("step") == config.total_steps and "loss" in row for row in logged)
  # scripts/translate.py restores the run (config.json, tokenizer.json, checkpoint) and decodes.
  spec = importlib.util.spec_from_file_location("translate_script", os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "scripts", "translate.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  outputs = script.translate(str(tmp_path / "run"), ["number 3", "number 4", "number 5"],
                             batch_size=2, strategy="beam", beam_size=2)
  assert len(outputs) == 3 and all(isinstance(o, str) for o in outputs)
