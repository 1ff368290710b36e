"""The vision tasks: ssl's two-view outputs and classify's mixup / CutMix and soft targets,
on a small ``ImageEncoder`` with random weights."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmie.config import ConfigError
from mmie.losses import classification
from mmie.models import build_model
from mmie.tasks import classify, get_task, ssl
from tests.model_utils import random_params

B, SIZE, CLASSES = 6, 16, 5


def _model(**heads):
  config = ml_collections.ConfigDict({
      "name": "image_encoder", "image": {"name": "vit", "image_size": SIZE, "patch_size": 8,
                                         "width": 16, "depth": 1, "num_heads": 2,
                                         "mlp_dim": 32}, **heads})
  model = build_model(config)
  return model, random_params(model, jnp.zeros((1, SIZE, SIZE, 3)))


@pytest.fixture(scope="module")
def ssl_model():
  return _model(projector=(24, 12), predictor=(8, 12), num_classes=CLASSES)


def _images(seed, n=B):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)), jnp.float32)


def test_ssl_outputs_are_each_views_projections(ssl_model):
  model, params = ssl_model
  batch = {"view_a": _images(0), "view_b": _images(1),
           "label": jnp.arange(B, dtype=jnp.int32) % CLASSES}
  out = ssl.forward(model.apply, params, batch, rng=jax.random.key(0), train=False,
                    ema_params=params)
  alone_a = model.apply({"params": params}, batch["view_a"])
  alone_b = model.apply({"params": params}, batch["view_b"])
  np.testing.assert_allclose(out["z_a"], alone_a["z"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["z_b"], alone_b["z"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["p_a"], alone_a["p"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["logits"], alone_a["logits"], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out["targets"], batch["label"])
  assert out["features"].shape == (B, 2, 12)
  np.testing.assert_allclose(np.linalg.norm(out["features"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["features"][:, 1] * np.linalg.norm(out["z_b"], axis=-1,
                                                                    keepdims=True),
                             out["z_b"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["z_a_momentum"], out["z_a"], rtol=1e-5, atol=1e-5)
  features = model.apply({"params": params}, batch["view_a"], method="encode_image")
  np.testing.assert_allclose(features, alone_a["features"], rtol=1e-6)


def test_image_encoder_checks_its_heads():
  with pytest.raises(ConfigError, match="model.predictor is set without model.projector"):
    _model(predictor=(8,))
  with pytest.raises(ConfigError, match="must end at the projection width 12"):
    _model(projector=(24, 12), predictor=(8, 10))
  with pytest.raises(ConfigError, match="Config key model.projector"):
    _model(projector=(24, -1))


def test_mixup_blends_images_and_targets_with_one_ratio():
  images = _images(2)
  one_hot = jax.nn.one_hot(jnp.arange(B), B)  # Row i is class i: no mirror shares a class.
  mixed, soft = classify.mix(images, one_hot, jax.random.key(3), mixup=0.8, cutmix=0.0,
                             mix_prob=1.0)
  lam = float(soft[0, 0])  # Row 0 is class 0 mixed with row B-1's class.
  np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(soft, lam * one_hot + (1 - lam) * one_hot[::-1], atol=1e-6)
  np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_cutmix_ratio_is_the_area_kept(seed):
  images = _images(seed)
  one_hot = jax.nn.one_hot(jnp.arange(B), B)
  mixed, soft = classify.mix(images, one_hot, jax.random.key(seed), mixup=0.0, cutmix=1.0,
                             mix_prob=1.0)
  pasted = np.all(np.asarray(mixed[0]) == np.asarray(images[-1]), axis=-1)
  kept = 1.0 - pasted.mean()  # Random normal pixels never coincide: pasted = from the mirror.
  np.testing.assert_allclose(float(soft[0, 0]), kept, atol=1e-6)


def test_no_mixing_when_off_or_not_training():
  images = _images(7)
  one_hot = jax.nn.one_hot(jnp.arange(B) % CLASSES, CLASSES)
  for kwargs in ({"mixup": 0.0, "cutmix": 0.0, "mix_prob": 1.0},
                 {"mixup": 0.8, "cutmix": 1.0, "mix_prob": 0.0}):
    mixed, soft = classify.mix(images, one_hot, jax.random.key(8), **kwargs)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_allclose(soft, one_hot)
  model, params = _model(num_classes=CLASSES)
  task = get_task("classify(mixup=0.8, cutmix=1.0)")
  batch = {"image": images, "label": jnp.arange(B, dtype=jnp.int32) % CLASSES}
  out = task.forward(model.apply, params, batch, rng=jax.random.key(0), train=False)
  np.testing.assert_allclose(out["soft_targets"], one_hot)
  with pytest.raises(ValueError, match="no classifier"):
    task.forward(model.apply, _model()[1], batch, rng=jax.random.key(0), train=False)


def test_soft_cross_entropy_matches_the_formula_and_hard_cross_entropy():
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(B, CLASSES)).astype(np.float32)
  q = rng.dirichlet(np.ones(CLASSES), size=B).astype(np.float32)
  eps = 0.1
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = np.mean(-np.sum(((1 - eps) * q + eps / CLASSES) * log_p, -1))
  loss, metrics = classification.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(q),
                                                     label_smoothing=eps)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["nll"], np.mean(-np.sum(q * log_p, -1)), rtol=1e-5)
  labels = rng.integers(CLASSES, size=B)
  hard, _ = classification.cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                         label_smoothing=eps)
  soft, _ = classification.soft_cross_entropy(
      jnp.asarray(logits), jax.nn.one_hot(labels, CLASSES), label_smoothing=eps)
  np.testing.assert_allclose(soft, hard, rtol=1e-5)
