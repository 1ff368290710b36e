"""The text classifier: model and schema, the text_classify task, its evaluator against
scikit-learn, a tiny run through main.py on a separable set, and the classifier detector."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from mmie.configs import safety_classifier
from mmie.evaluate import text_classification
from mmie.evaluate.context import EvalContext
from mmie.evaluate.registry import check_model
from mmie.losses.classification import cross_entropy
from mmie.models import build_model
from mmie.models.builder import fill_model_defaults
from mmie.safety import detectors
from mmie.safety.evaluator import Evaluator, principles_from_config
from mmie.schema import ConfigError
from mmie.tasks import get_task
from tests.model_utils import random_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNSAFE_WORDS = ("hate", "stupid", "idiot", "vile", "ugly", "trash")
BENIGN_WORDS = ("lovely", "garden", "river", "bread", "kind", "morning")
FILLER = ("the", "a", "very", "and", "today", "was", "we", "saw")


def _tiny_model_config() -> ml_collections.ConfigDict:
  return safety_classifier.get_config("tiny").model


def test_model_gives_logits_per_class_and_starts_uniform():
  config = _tiny_model_config()
  model = build_model(config)
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, 200, size=(3, 32)), jnp.int32)
  params = random_params(model, tokens)
  logits = model.apply({"params": params}, tokens)
  assert logits.shape == (3, 2) and logits.dtype == jnp.float32
  features = model.apply({"params": params}, tokens, method=model.encode_text)
  assert features.shape == (3, config.text.width)
  initial = model.init(jax.random.key(0), tokens)["params"]  # The head starts at zero.
  np.testing.assert_array_equal(np.asarray(model.apply({"params": initial}, tokens)), 0.0)
  # Each row's logits depend on that row alone (no batch statistics).
  one = model.apply({"params": params}, tokens[1:2])
  np.testing.assert_allclose(np.asarray(one), np.asarray(logits[1:2]), rtol=1e-5, atol=1e-6)


def test_schema_fills_defaults_and_names_bad_keys():
  config = _tiny_model_config()
  fill_model_defaults(config)
  assert config.head_dropout == 0.0 and config.text.type_vocab_size == 0
  bad = _tiny_model_config()
  bad.num_classes = 1
  with pytest.raises(ConfigError, match="model.num_classes"):
    build_model(bad)
  bad = _tiny_model_config()
  bad.text.pool = "none"
  with pytest.raises(ConfigError, match="pool='none'"):
    build_model(bad)


def test_task_outputs_feed_cross_entropy_and_the_untrained_loss_is_log_2():
  config = safety_classifier.get_config("tiny")
  task = get_task("text_classify")
  batch = task.example_batch(config, 4)
  assert batch["text"].shape == (4, 32) and batch["label"].shape == (4,)
  batch["text"][:, :5] = [1, 50, 60, 70, 2]
  batch["label"][:] = [0, 1, 1, 0]
  model = build_model(config.model)
  params = model.init(jax.random.key(0), *task.init_args(batch))["params"]
  out = task.forward(model.apply, params, batch, rng=jax.random.key(1), train=True)
  assert out["logits"].shape == (4, 2) and np.array_equal(out["targets"], batch["label"])
  loss, _ = cross_entropy(out["logits"], out["targets"])
  assert float(loss) == pytest.approx(math.log(2.0), rel=1e-6)  # Zero head: uniform.


class _ParityModel:
  """Logits that favour class 1 exactly when a row's second token is odd."""

  num_classes = 2

  def apply(self, variables, tokens):
    del variables
    odd = (tokens[:, 1] % 2).astype(jnp.float32)
    return jnp.stack([jnp.zeros_like(odd), 2.0 * odd - 1.0], axis=-1)


def test_evaluator_matches_scikit_learn_on_a_padded_last_batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 100, size=(37, 6)).astype(np.int32)  # 37 rows in batches of 8.
  labels = rng.integers(2, size=37).astype(np.int32)
  split = {"text": tokens, "label": labels, "texts": [""] * 37, "class_names": []}
  ctx = EvalContext(ml_collections.ConfigDict(), _ParityModel(), load_split=lambda _: split,
                    encode_prompts=lambda *_: None, decode=lambda ids: "")
  spec = {"split": "validation", "batch_size": 8, "class_names": ("benign", "unsafe")}
  evaluate = text_classification.text_classification(spec, ctx)
  got = evaluate({})
  predicted = tokens[:, 1] % 2
  p, r, f1, _ = precision_recall_fscore_support(labels, predicted, labels=[0, 1],
                                                zero_division=0)
  for index, name in enumerate(("benign", "unsafe")):
    assert got[f"{name}/precision"] == pytest.approx(p[index], abs=1e-12)
    assert got[f"{name}/recall"] == pytest.approx(r[index], abs=1e-12)
    assert got[f"{name}/f1"] == pytest.approx(f1[index], abs=1e-12)
  assert got["accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1e-12)
  assert got["macro_f1"] == pytest.approx(np.mean(f1), abs=1e-12)
  assert evaluate.chance == {"accuracy": np.bincount(labels).max() / 37}
  with pytest.raises(ValueError, match="names 1 classes"):
    text_classification.text_classification(dict(spec, class_names=("only",)), ctx)
  unlabelled = dict(split, label=np.full(37, -1, np.int32))
  ctx = EvalContext(ml_collections.ConfigDict(), _ParityModel(),
                    load_split=lambda _: unlabelled, encode_prompts=lambda *_: None,
                    decode=lambda ids: "")
  with pytest.raises(ValueError, match="needs class labels"):
    text_classification.text_classification(spec, ctx)
  with pytest.raises(ConfigError, match="text classifier"):
    check_model({"eval": {"type": "text_classification"}}, _ParityModel())


def _separable_set(path: str) -> list[dict]:
  """300 rows: 2 words of one class's list among 6 fillers; every 5th group held out."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(300):
    label = i % 2
    words = [str(w) for w in rng.choice(FILLER, 6)] + [
        str(rng.choice(UNSAFE_WORDS if label else BENIGN_WORDS)) for _ in range(2)]
    rng.shuffle(words)
    rows.append({"text": " ".join(words), "label": label, "group": f"g{i // 3}",
                 "split": "validation" if (i // 3) % 5 == 0 else "train"})
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny classifier trained through main.py on the separable set: (workdir, rows)."""
  tmp = tmp_path_factory.mktemp("text_classifier")
  rows = _separable_set(str(tmp / "set.jsonl"))
  workdir = tmp / "run"
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
         "MMIE_DATA_DIR": str(tmp / "data")}
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/safety_classifier.py:tiny",
       f"--workdir={workdir}", f"--config.data.name=jsonl(path='{tmp / 'set.jsonl'}')"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return str(workdir), rows


def test_a_tiny_run_through_main_beats_chance(trained):
  workdir, rows = trained
  held_out = [r["label"] for r in rows if r["split"] == "validation"]
  chance = max(held_out.count(0), held_out.count(1)) / len(held_out)  # 30 / 60 by hand.
  assert chance == 0.5
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    evals = [m for m in map(json.loads, f) if "eval/accuracy" in m]
  assert evals and evals[-1]["eval/accuracy"] >= chance + 0.3, evals[-1]
  assert {"eval/unsafe/f1", "eval/benign/precision", "eval/macro_f1"} <= set(evals[-1])


def test_the_classifier_detector_flags_whole_texts_in_batches(trained):
  workdir, rows = trained
  texts = [r["text"] for r in rows[:70]]
  detect = detectors.build_detector(f"classifier(workdir={workdir!r}, threshold=0.5)")
  one_by_one = np.asarray([detectors.classifier(workdir).probabilities([t])[0] for t in texts])
  probs = detect.probabilities(texts)  # 70 texts: a full batch of 64, then 6 padded to 8.
  np.testing.assert_allclose(probs, one_by_one, rtol=1e-5, atol=1e-6)
  assert np.all((probs >= 0) & (probs <= 1))
  spans = detect.detect_many(texts)
  for text, p, found in zip(texts, probs, spans):
    assert found == ([detectors.Span(0, len(text), text, "classifier")] if p >= 0.5 else [])
  labels = np.asarray([r["label"] for r in rows[:70]])
  assert np.mean((probs >= 0.5) == labels) >= 0.8  # It learned the set.
  assert detect("   ") == []
  assert detectors.classifier(workdir, threshold=0.0)(texts[0]) != []  # Every text flags.
  evaluator = Evaluator(principles_from_config({"abuse": {
      "weight": 1.0, "violation": "abuses the reader",
      "detectors": ("lexicon(words=('hate',))", f"classifier(workdir={workdir!r})")}}))
  unsafe = next(t for t, p in zip(texts, probs) if p >= 0.5 and "hate" not in t.split())
  assert [s.detector for s in evaluator.evaluate(unsafe).spans["abuse"]] == ["classifier"]
  with pytest.raises(ValueError, match="threshold"):
    detectors.classifier(workdir, threshold=1.5)
  with pytest.raises(ValueError, match="unsafe_class=2"):
    detectors.classifier(workdir, unsafe_class=2).probabilities(["x"])
