"""Host-side image ops: crop boxes stay inside and within the area range; ops keep dtype/shape."""

from __future__ import annotations

import io

import hypothesis
import hypothesis.strategies as st
import numpy as np
from PIL import Image

from mmie.data import augment


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(height=st.integers(1, 300), width=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_crop_box_is_inside_and_respects_the_area_range(height, width, seed):
  top, left, h, w = augment.sample_crop_box(height, width, np.random.default_rng(seed),
                                            scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
  assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
  side = min(height, width)
  fallback = (h, w) == (side, side)
  area = h * w / (height * width)
  # Rounding to whole pixels moves the area by at most one row and one column.
  slack = (h + w + 1) / (height * width)
  assert fallback or 0.5 - slack <= area <= 1.0 + slack


def test_normalize_matches_the_formula():
  image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
  expected = (image / 255.0 - np.array(augment.CLIP_MEAN)) / np.array(augment.CLIP_STD)
  np.testing.assert_allclose(augment.normalize(image), expected, rtol=1e-6)


def test_to_rgb_composites_transparency_on_white_and_widens_grey():
  rgba = np.zeros((1, 2, 4), np.uint8)
  rgba[0, 1] = (10, 20, 30, 255)
  np.testing.assert_array_equal(augment.to_rgb_uint8(rgba), [[[255, 255, 255], [10, 20, 30]]])
  np.testing.assert_array_equal(augment.to_rgb_uint8(np.full((2, 2), 7, np.uint8)),
                                np.full((2, 2, 3), 7, np.uint8))


def test_jpeg_draft_decode_keeps_at_least_the_requested_side():
  buffer = io.BytesIO()
  Image.fromarray(np.full((400, 300, 3), 128, np.uint8)).save(buffer, format="JPEG")
  image = augment.decode(buffer.getvalue(), 64)
  assert min(image.shape[:2]) >= 64 and image.shape[:2] != (400, 300)  # Reduced DCT scale.
  assert abs(image.shape[0] / image.shape[1] - 4 / 3) < 0.05


def test_color_jitter_zero_strength_is_identity_and_output_stays_uint8():
  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(augment.color_jitter(image, np.random.default_rng(1), 0.0), image)
  out = augment.color_jitter(image, np.random.default_rng(1), 0.8)
  assert out.dtype == np.uint8 and out.shape == image.shape and not np.array_equal(out, image)


def test_random_translate_is_a_whole_pixel_shift_with_edge_borders():
  image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
  for seed in range(20):
    shifted = augment.random_translate(image, np.random.default_rng(seed), 2)
    dy, dx = (int(v) for v in np.random.default_rng(seed).integers(-2, 3, size=2))
    rows = np.clip(np.arange(5) + dy, 0, 4)  # Output row r reads input row r + dy, clamped.
    cols = np.clip(np.arange(6) + dx, 0, 5)
    np.testing.assert_array_equal(shifted, image[rows][:, cols])


def test_chain_draws_the_earlier_steps_the_same_when_translation_is_added():
  image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
  base = augment.Chain(flip=True, jitter=0.3)
  moved = augment.Chain(flip=True, jitter=0.3, translate=3)
  for seed in range(10):
    without = base(image, 32, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    with_shift = moved(image, 32, rng)
    # Replaying the same generator: the first steps' draws, then the shift's.
    replay = np.random.default_rng(seed)
    expected = augment.random_translate(base(image, 32, replay), replay, 3)
    np.testing.assert_array_equal(with_shift, expected)
    assert without.shape == with_shift.shape == (32, 32, 3)
  config = {"augment": {"random_translate": 2, "random_flip": True}}
  assert augment.Chain.from_config(config) == augment.Chain(flip=True, translate=2)
