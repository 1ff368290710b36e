"""Per-example image preprocessing on the host: resize, augment, normalise (numpy + pillow).

Every random choice takes an explicit ``np.random.Generator`` that grain seeds from the
pipeline seed and the example's position in the (infinite) stream, so a run is
reproducible and resumable, and each epoch augments differently.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
from PIL import Image

from mmie.data.schema import data_value

# OpenAI CLIP's RGB statistics (ImageNet-like photos). They are the usual default so that
# towers and checkpoints stay interchangeable; the emoji set (mostly white) is brighter,
# which a learned patch embedding absorbs at once.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalisation(data_config: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The run's image ``(mean, std)``: ``data.mean`` / ``data.std``, else CLIP's."""
  return (tuple(data_value(data_config, "mean") or CLIP_MEAN),
          tuple(data_value(data_config, "std") or CLIP_STD))


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """Greyscale [H, W] / [H, W, 1] or RGBA [H, W, 4] -> RGB uint8 [H, W, 3]."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an image [H, W], [H, W, 1|3|4], got shape {image.shape}.")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:  # Composite on white, as the emoji set was built.
    alpha = image[..., 3:].astype(np.float32) / 255.0
    image = image[..., :3] * alpha + 255.0 * (1.0 - alpha)
  if image.dtype != np.uint8:
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return image


def decode(image: bytes | np.ndarray, min_side: int) -> np.ndarray:
  """Encoded bytes (or pixels) -> RGB uint8; JPEGs decode at the smallest DCT scale (1/2, 1/4,
  1/8) that keeps the shorter side >= ``min_side``, which is 4-10x faster for big photos."""
  if not isinstance(image, (bytes, bytearray)):
    return to_rgb_uint8(image)
  with Image.open(io.BytesIO(image)) as im:
    if im.format == "JPEG":
      w, h = im.size
      scale = min_side / min(w, h)
      im.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    return to_rgb_uint8(np.asarray(im.convert("RGBA") if "A" in im.mode or "transparency" in im.info
                                   else im.convert("RGB")))


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
  """Downscales (never upscales) so the shorter side is at most ``max_side``, keeping aspect."""
  h, w = image.shape[:2]
  if min(h, w) <= max_side:
    return image
  scale = max_side / min(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes to ``size x size`` (bicubic, pillow); a no-op when already that size."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Largest centred square, resized: evaluation's deterministic view of any aspect ratio."""
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return resize(image[top:top + side, left:left + side], size)


def sample_crop_box(height: int, width: int, rng: np.random.Generator, *,
                    scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """(top, left, h, w) of an Inception-style crop: area fraction in ``scale``, log-uniform ratio.

  Ten tries as in torchvision; if none fits, falls back to the centred full-ratio crop.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side, side


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator, *,
                        scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """A random crop (area fraction in ``scale``) resized to ``size x size``.

  The default lower scale is 0.5, not ImageNet's 0.08: a 32x32 icon cropped to 8% keeps a
  few pixels of it, which no caption describes.
  """
  top, left, h, w = sample_crop_box(image.shape[0], image.shape[1], rng, scale=scale, ratio=ratio)
  crop = Image.fromarray(image[top:top + h, left:left + w])
  return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Left-right flip with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """Brightness, contrast and saturation each scaled by a factor in [1-s, 1+s], random order."""
  x = image.astype(np.float32)
  for op in rng.permutation(3):
    factor = float(rng.uniform(1.0 - strength, 1.0 + strength))
    if op == 0:
      x = x * factor
    elif op == 1:
      x = (x - x.mean()) * factor + x.mean()
    else:
      grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
      x = (x - grey[..., None]) * factor + grey[..., None]
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def random_translate(image: np.ndarray, rng: np.random.Generator, pixels: int) -> np.ndarray:
  """Shift by whole pixels, each axis uniform in [-pixels, pixels], borders edge-replicated.

  The pad-and-crop of CIFAR-style training (zero-padding there; edge replication here, which
  is the same on a black background and keeps a white one white).
  """
  dy, dx = (int(v) for v in rng.integers(-pixels, pixels + 1, size=2))
  padded = np.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)), mode="edge")
  h, w = image.shape[:2]
  return padded[pixels + dy:pixels + dy + h, pixels + dx:pixels + dx + w]


@dataclasses.dataclass(frozen=True)
class Chain:
  """The ``data.augment`` chain of one uint8 image: crop, flip, colour jitter, translation.

  The random draws come in that order, each only when its step is on, so turning a step on
  leaves the draws of the steps before it unchanged.
  """

  crop: bool = False
  crop_scale: tuple[float, float] = (0.5, 1.0)
  flip: bool = False
  jitter: float = 0.0
  translate: int = 0

  @classmethod
  def from_config(cls, data_config: Any) -> "Chain":
    """The chain ``data.augment`` configures (schema defaults for missing keys)."""
    return cls(crop=bool(data_value(data_config, "random_resized_crop", "augment")),
               crop_scale=tuple(data_value(data_config, "crop_scale", "augment")),
               flip=bool(data_value(data_config, "random_flip", "augment")),
               jitter=float(data_value(data_config, "color_jitter", "augment")),
               translate=int(data_value(data_config, "random_translate", "augment")))

  def __call__(self, image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if self.crop:
      image = random_resized_crop(image, size, rng, scale=self.crop_scale)
    if self.flip:
      image = random_flip(image, rng)
    if self.jitter > 0:
      image = color_jitter(image, rng, self.jitter)
    if self.translate > 0:
      image = random_translate(image, rng, self.translate)
    return image


def normalize(image: np.ndarray, mean: tuple[float, ...] = CLIP_MEAN,
              std: tuple[float, ...] = CLIP_STD) -> np.ndarray:
  """uint8 [..., 3] -> float32 ``(x / 255 - mean) / std``."""
  x = image.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
