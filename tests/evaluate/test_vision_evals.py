"""The image-only evaluators on a random ImageEncoder, against direct numpy computations."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmie.evaluate import representation, vision
from mmie.evaluate.context import EvalContext
from mmie.models import build_model
from tests.model_utils import random_params

N, SIZE, CLASSES = 37, 16, 4  # 37 images in batches of 8: the last batch is padded.


@pytest.fixture(scope="module")
def setup():
  config = ml_collections.ConfigDict({
      "name": "image_encoder", "num_classes": CLASSES,
      "image": {"name": "vit", "image_size": SIZE, "patch_size": 8, "width": 16, "depth": 1,
                "num_heads": 2, "mlp_dim": 32}})
  model = build_model(config)
  params = random_params(model, jnp.zeros((1, SIZE, SIZE, 3)))
  rng = np.random.default_rng(0)
  split = {"image": rng.normal(size=(N, SIZE, SIZE, 3)).astype(np.float32),
           "label": rng.integers(CLASSES, size=N).astype(np.int32), "class_names": []}
  ctx = EvalContext(ml_collections.ConfigDict(), model, load_split=lambda name: split,
                    encode_prompts=lambda *_: None, decode=lambda ids: "")
  return model, params, split, ctx


def test_classification_top_k_of_the_models_logits(setup):
  model, params, split, ctx = setup
  evaluate = vision.classification({"split": "validation", "batch_size": 8, "ks": (1, 2)}, ctx)
  logits = np.asarray(model.apply({"params": params}, split["image"])["logits"])  # One pass.
  order = np.argsort(-logits, axis=1)
  expected = {f"top{k}": 100.0 * np.mean((order[:, :k] == split["label"][:, None]).any(1))
              for k in (1, 2)}
  got = evaluate(params)
  assert got.keys() == expected.keys()
  for key in expected:
    assert got[key] == pytest.approx(expected[key])
  assert evaluate.chance == {"top1": 25.0, "top2": 50.0}


def test_collapse_diagnostics_of_the_normalised_features(setup):
  model, params, split, ctx = setup
  evaluate = vision.collapse({"split": "validation", "batch_size": 8, "collapse_ratio": 0.1,
                              "max_samples": 4096}, ctx)
  features = np.asarray(model.apply({"params": params}, split["image"], method="encode_image"))
  unit = features / np.linalg.norm(features, axis=1, keepdims=True)
  got = evaluate(params)
  assert got["image_effective_rank"] == pytest.approx(representation.effective_rank(unit),
                                                      rel=1e-4)
  assert got["image_collapsed_fraction"] == pytest.approx(
      representation.collapse_summary(unit)["collapsed_fraction"])
  assert not any(k.startswith("text_") for k in got)
