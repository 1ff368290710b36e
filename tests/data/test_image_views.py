"""Image-only data views: two augmented views per image (SSL) and labelled images.

The ops are checked against their definitions (identity settings, solarize and greyscale
formulas, a blur of a constant image), and the views against the pipeline's guarantees: a
function of (seed, stream position) alone, different from each other, and resumed exactly.
"""

import dataclasses
import json
import re

import numpy as np
import pytest

from mmie.data import augment, pipeline, ssl_augment

SIZE = 32


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


IDENTITY = ssl_augment.ViewSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0,
                                jitter_p=0.0, grayscale=0.0, blur=0.0, solarize=0.0)


def test_identity_spec_returns_the_image():
  images = _images(3)
  rngs = [np.random.default_rng(i) for i in range(3)]
  a, b = ssl_augment.two_views(images, SIZE, (IDENTITY, IDENTITY), rngs)
  expected = np.stack(images).astype(np.float32) / 255.0
  # Bilinear sampling at the pixel centres of a full crop reads each pixel exactly.
  np.testing.assert_allclose(a, expected, atol=1e-6)
  np.testing.assert_allclose(b, expected, atol=1e-6)


def test_grayscale_solarize_and_flip_follow_their_formulas():
  images = _images(2, seed=1)
  x = np.stack(images).astype(np.float32) / 255.0
  rngs = lambda: [np.random.default_rng(i) for i in range(2)]
  gray = ssl_augment.dataclasses.replace(IDENTITY, grayscale=1.0)
  a, _ = ssl_augment.two_views(images, SIZE, (gray, IDENTITY), rngs())
  luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(a, np.repeat(luma[..., None], 3, -1), atol=1e-6)
  solar = ssl_augment.dataclasses.replace(IDENTITY, solarize=1.0)
  a, _ = ssl_augment.two_views(images, SIZE, (solar, IDENTITY), rngs())
  np.testing.assert_allclose(a, np.where(x >= 0.5, 1.0 - x, x), atol=1e-6)
  flip = ssl_augment.dataclasses.replace(IDENTITY, flip=1.0)
  a, _ = ssl_augment.two_views(images, SIZE, (flip, IDENTITY), rngs())
  np.testing.assert_allclose(a, x[:, :, ::-1], atol=1e-6)


def test_neutral_jitter_is_the_identity_and_brightness_scales():
  x = np.stack(_images(2, seed=2)).astype(np.float32) / 255.0
  params = [ssl_augment._Params(False, True, (1.0, 1.0, 1.0, 0.0), False, 0.0, False)] * 2
  np.testing.assert_allclose(ssl_augment._jitter(x, params), x, atol=2e-6)  # YIQ round trip.
  params = [ssl_augment._Params(False, True, (0.5, 1.0, 1.0, 0.0), False, 0.0, False)] * 2
  np.testing.assert_allclose(ssl_augment._jitter(x, params), 0.5 * x, atol=2e-6)


def test_blur_keeps_constants_and_matches_a_direct_convolution():
  constant = np.full((1, 8, 8, 3), 0.3, np.float32)
  out = ssl_augment.gaussian_blur(constant, np.array([1.0], np.float32), radius=3)
  np.testing.assert_allclose(out, constant, atol=1e-6)
  x = np.random.default_rng(3).random((2, 9, 9, 1)).astype(np.float32)
  sigma, radius = 0.8, 2
  out = ssl_augment.gaussian_blur(x, np.array([sigma, 0.0], np.float32), radius)
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  k /= k.sum()
  padded = np.pad(x[0, :, :, 0], radius, mode="reflect")
  expected = np.array([[np.sum(np.outer(k, k) * padded[i:i + 2 * radius + 1, j:j + 2 * radius + 1])
                        for j in range(9)] for i in range(9)])
  np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-6)
  np.testing.assert_array_equal(out[1], x[1])  # sigma 0: untouched.


@pytest.mark.parametrize("preset", sorted(ssl_augment.PRESETS))
def test_views_depend_on_seed_and_position_alone(preset):
  images = _images(4, seed=4)
  specs = ssl_augment.PRESETS[preset]
  batch = ssl_augment.two_views(images, SIZE, specs,
                                [np.random.default_rng([7, 100 + j]) for j in range(4)])
  again = ssl_augment.two_views(images, SIZE, specs,
                                [np.random.default_rng([7, 100 + j]) for j in range(4)])
  np.testing.assert_array_equal(again[0], batch[0])  # Bit-exact from (seed, position).
  np.testing.assert_array_equal(again[1], batch[1])
  for j in (0, 3):  # Alone, in a batch of one, an example gets the same two views: the
    # batched float32 matmuls (luma, YIQ) may round differently, a few ulps of values <= 1.
    alone = ssl_augment.two_views([images[j]], SIZE, specs, [np.random.default_rng([7, 100 + j])])
    np.testing.assert_allclose(alone[0][0], batch[0][j], rtol=0, atol=1e-6)
    np.testing.assert_allclose(alone[1][0], batch[1][j], rtol=0, atol=1e-6)
  assert all(np.abs(batch[0][j] - batch[1][j]).mean() > 1e-3 for j in range(4))
  other = ssl_augment.two_views(images, SIZE, specs,
                                [np.random.default_rng([8, 100 + j]) for j in range(4)])
  assert not np.array_equal(other[0], batch[0])
  assert batch[0].dtype == np.float32 and 0.0 <= batch[0].min() and batch[0].max() <= 1.0


def test_two_views_pipeline_batches_and_exact_resume(make_data_config):
  config = make_data_config(augment={"views": "byol"})
  straight = pipeline.build_train_iterator(config, batch_size=4, seed=3, view="two_views")
  first = next(straight)
  assert set(first) == {"view_a", "view_b", "label"}
  assert first["view_a"].shape == (4, 32, 32, 3) and first["label"].dtype == np.int32
  assert not np.array_equal(first["view_a"], first["view_b"])
  for _ in range(3):
    next(straight)
  state = json.loads(json.dumps(straight.get_state()))
  expected = [next(straight) for _ in range(2)]
  resumed = pipeline.build_train_iterator(config, batch_size=4, seed=3, view="two_views")
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_labelled_image_view_and_image_only_eval_split(make_data_config):
  config = make_data_config(augment={"random_flip": True})
  batch = next(pipeline.build_train_iterator(config, batch_size=8, seed=0,
                                             view="labelled_image"))
  assert set(batch) == {"image", "label"} and batch["image"].shape == (8, 32, 32, 3)
  split = pipeline.load_eval_split(config, "validation", view="labelled_image")
  assert set(split) == {"image", "label", "class_names"}
  reference = pipeline.load_eval_split(config, "validation")  # The image-text view's images.
  np.testing.assert_array_equal(split["image"], reference["image"])
  np.testing.assert_array_equal(split["label"], reference["label"])
  assert len(split["class_names"]) == 9 and split["label"].min() >= 0
  unit = augment.normalize(np.zeros((1, 1, 3), np.uint8))
  assert np.allclose(split["image"].min(), unit.min(), atol=0.5)  # Normalised like training.


def test_views_call_string_overrides_fields_of_both_views():
  a, b = ssl_augment.resolve_views("byol(crop_scale=[0.6, 1.0], solarize=0.0)")
  want_a, want_b = ssl_augment.PRESETS["byol"]
  assert a == dataclasses.replace(want_a, crop_scale=(0.6, 1.0), solarize=0.0)
  assert b == dataclasses.replace(want_b, crop_scale=(0.6, 1.0), solarize=0.0)
  assert ssl_augment.resolve_views("simclr") == ssl_augment.PRESETS["simclr"]
  # A full-image crop with every random op off is the identity, through the call-string too.
  off = ("simclr(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0, jitter_p=0, "
         "grayscale=0)")
  images = _images(2)
  views = ssl_augment.two_views(images, SIZE, ssl_augment.resolve_views(off),
                                [np.random.default_rng(i) for i in range(2)])
  np.testing.assert_allclose(views[1], np.stack(images) / np.float32(255), atol=1e-6)


@pytest.mark.parametrize("text, words", [
    ("simclar", "unknown preset 'simclar'"),
    ("simclr(cropscale=(0.5, 1.0))", "unknown view field(s) ['cropscale']"),
    ("simclr(flip=1.5)", "flip=1.5 must be a number in [0, 1]"),
    ("simclr(crop_scale=(0.9, 0.5))", "crop_scale=(0.9, 0.5) must be (min, max)"),
    ("simclr(0.5)", "give overrides by name"),
    ("simclr(flip=x)", "is not a python literal"),
])
def test_views_call_string_errors_name_the_problem(text, words):
  with pytest.raises(ValueError, match=re.escape(words)):
    ssl_augment.resolve_views(text)


def test_config_check_reports_a_bad_views_field():
  from mmie.data.schema import AUGMENT
  from mmie.schema import ConfigError, check
  check({"views": "vicreg(blur=0.5)"}, AUGMENT, "data.augment.")
  with pytest.raises(ConfigError, match=re.escape("unknown view field(s) ['blurr']")):
    check({"views": "vicreg(blurr=0.5)"}, AUGMENT, "data.augment.")
