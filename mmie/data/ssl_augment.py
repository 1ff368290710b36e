"""Two-view augmentation for self-supervised learning: the SimCLR / BYOL / VICReg recipes.

Each view of an image is: an Inception-style random resized crop, a horizontal flip, colour
jitter (brightness, contrast, saturation, hue, applied with probability ``jitter_p``),
conversion to greyscale, Gaussian blur and solarisation, each with its own probability. The
presets follow the papers, adapted to small (28-32 px, often greyscale) images:

  simclr  Chen et al. 2020, the CIFAR-10 recipe: crop scale (0.2, 1), jitter strength 0.5
          (0.4, 0.4, 0.4, 0.1) with p 0.8, greyscale p 0.2, no blur (SimCLR drops it on CIFAR).
  byol    Grill et al. 2020, Table 6: asymmetric views; blur p 1.0 / 0.1, solarize p 0 / 0.2,
          jitter (0.4, 0.4, 0.2, 0.1) p 0.8, greyscale p 0.2, crop scale (0.2, 1) for small
          images (the paper's 0.08 keeps a few pixels of a 28 px image).
  vicreg  Bardes et al. 2022, appendix C: BYOL's views.

Blur sigma is the papers' [0.1, 2.0] px of a 224 px image, scaled to the image size.

Parameters are drawn per example from its own ``np.random.Generator`` (seeded by the
pipeline from the seed and the example's stream position, so views are reproducible and
resume-exact); the pixel work then runs vectorised over the batch in numpy float32.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mmie import registry
from mmie.data import augment

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# RGB -> YIQ and back: hue is a rotation of the (I, Q) chroma plane (cheap, and exact for
# greyscale input, where every jitter but brightness and contrast is the identity).
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                np.float32)
_RGB = np.linalg.inv(_YIQ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """One view's augmentation (probabilities in [0, 1], ranges as (low, high))."""

  crop_scale: tuple[float, float] = (0.2, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: float = 0.5
  jitter_p: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  grayscale: float = 0.2
  blur: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)  # In pixels of a 224 px image.
  solarize: float = 0.0


_BYOL = dict(saturation=0.2)
PRESETS: dict[str, tuple[ViewSpec, ViewSpec]] = {
    "simclr": (ViewSpec(), ViewSpec()),
    "byol": (ViewSpec(**_BYOL, blur=1.0), ViewSpec(**_BYOL, blur=0.1, solarize=0.2)),
    "vicreg": (ViewSpec(**_BYOL, blur=1.0), ViewSpec(**_BYOL, blur=0.1, solarize=0.2)),
}


def _check_spec(spec: ViewSpec, where: str) -> None:
  """Raises ValueError naming the first field of ``spec`` out of its range."""
  def pair(name: str, low: float, high: float) -> None:
    value = getattr(spec, name)
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(x, (int, float)) for x in value)
            and low <= value[0] <= value[1] <= high):
      raise ValueError(f"{where}: {name}={value!r} must be (min, max) with "
                       f"{low} <= min <= max <= {high}.")
  pair("crop_scale", 1e-3, 1.0)
  pair("crop_ratio", 1e-2, 1e2)
  pair("blur_sigma", 0.0, 1e3)
  for name in ("flip", "jitter_p", "grayscale", "blur", "solarize", "brightness", "contrast",
               "saturation"):
    value = getattr(spec, name)
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
      raise ValueError(f"{where}: {name}={value!r} must be a number in [0, 1].")
  if not (isinstance(spec.hue, (int, float)) and 0.0 <= spec.hue <= 0.5):
    raise ValueError(f"{where}: hue={spec.hue!r} must be a number in [0, 0.5].")


def resolve_views(text: str) -> tuple[ViewSpec, ViewSpec]:
  """A ``data.augment.views`` call-string -> the two views' specs.

  ``"simclr"`` is the preset; ``"simclr(crop_scale=(0.5, 1.0), jitter_p=0.4)"`` the preset with
  those `ViewSpec` fields replaced in both views, so a recipe can weaken or strengthen its
  augmentation without a new preset (short budgets want milder crops than the papers' hundreds
  of epochs). Raises ValueError naming the unknown preset, field or out-of-range value.
  """
  call = registry.parse_call(text)
  if call.name not in PRESETS:
    raise ValueError(f"data.augment.views={text!r}: unknown preset {call.name!r}; choose one "
                     f"of {', '.join(sorted(PRESETS))}.")
  if call.args:
    raise ValueError(f"data.augment.views={text!r}: give overrides by name, e.g. "
                     f"\"{call.name}(crop_scale=(0.5, 1.0))\".")
  fields = {f.name for f in dataclasses.fields(ViewSpec)}
  unknown = sorted(set(call.kwargs) - fields)
  if unknown:
    raise ValueError(f"data.augment.views={text!r}: unknown view field(s) {unknown}; the "
                     f"fields are {', '.join(sorted(fields))}.")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in call.kwargs.items()}
  specs = tuple(dataclasses.replace(spec, **kwargs) for spec in PRESETS[call.name])
  for spec in specs:
    _check_spec(spec, f"data.augment.views={text!r}")
  return specs  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class _Params:
  """One view's random draws for one example."""

  flip: bool
  jitter: bool
  factors: tuple[float, float, float, float]  # brightness, contrast, saturation, hue shift.
  gray: bool
  sigma: float  # 0: no blur.
  solarize: bool


def _draw(spec: ViewSpec, size: int, rng: np.random.Generator) -> _Params:
  def factor(strength: float) -> float:
    return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))
  jitter = rng.random() < spec.jitter_p
  factors = (factor(spec.brightness), factor(spec.contrast), factor(spec.saturation),
             float(rng.uniform(-spec.hue, spec.hue)))
  blur = rng.random() < spec.blur
  sigma = float(rng.uniform(*spec.blur_sigma)) * size / 224.0
  return _Params(flip=bool(rng.random() < spec.flip), jitter=bool(jitter), factors=factors,
                 gray=bool(rng.random() < spec.grayscale), sigma=sigma if blur else 0.0,
                 solarize=bool(rng.random() < spec.solarize))


def _crop(image: np.ndarray, size: int, spec: ViewSpec, rng: np.random.Generator) -> np.ndarray:
  """Random resized crop to ``size`` (bilinear, numpy), float32 in [0, 1]."""
  top, left, h, w = augment.sample_crop_box(image.shape[0], image.shape[1], rng,
                                            scale=spec.crop_scale, ratio=spec.crop_ratio)
  x = image.astype(np.float32) / 255.0
  ys = np.clip(top + (np.arange(size) + 0.5) * h / size - 0.5, 0, image.shape[0] - 1)
  xs = np.clip(left + (np.arange(size) + 0.5) * w / size - 0.5, 0, image.shape[1] - 1)
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y1, x1 = np.minimum(y0 + 1, image.shape[0] - 1), np.minimum(x0 + 1, image.shape[1] - 1)
  wy, wx = (ys - y0).astype(np.float32)[:, None, None], (xs - x0).astype(np.float32)[None, :, None]
  top_row = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
  bottom_row = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
  return top_row * (1 - wy) + bottom_row * wy


def _blend(x: np.ndarray, other: np.ndarray, factor: np.ndarray, where: np.ndarray) -> np.ndarray:
  mixed = np.clip(other + factor[:, None, None, None] * (x - other), 0.0, 1.0)
  return np.where(where[:, None, None, None], mixed, x)


def _jitter(x: np.ndarray, params: list[_Params]) -> np.ndarray:
  """Brightness, contrast, saturation, hue (this fixed order) for the examples drawn to jitter."""
  on = np.array([p.jitter for p in params])
  if not on.any():
    return x
  f = np.array([p.factors for p in params], np.float32)
  x = _blend(x, np.zeros_like(x), f[:, 0], on)
  grey = x @ _LUMA
  x = _blend(x, np.broadcast_to(grey.mean(axis=(1, 2))[:, None, None, None], x.shape), f[:, 1], on)
  x = _blend(x, np.repeat((x @ _LUMA)[..., None], 3, axis=-1), f[:, 2], on)
  yiq = x @ _YIQ.T
  angle = np.where(on, f[:, 3], 0.0) * 2 * math.pi
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  i, q = yiq[..., 1], yiq[..., 2]
  yiq = np.stack([yiq[..., 0], cos * i - sin * q, sin * i + cos * q], axis=-1)
  return np.clip(yiq @ _RGB.T, 0.0, 1.0)


def blur_radius(spec: ViewSpec, size: int) -> int:
  """Kernel half-width: 3 sigma of the largest sigma the spec can draw (fixed per spec, so an
  example's blur never depends on the other examples of its batch)."""
  return max(1, int(math.ceil(3 * spec.blur_sigma[1] * size / 224.0)))


def gaussian_blur(x: np.ndarray, sigmas: np.ndarray, radius: int) -> np.ndarray:
  """Separable Gaussian blur of [B, H, W, C], one sigma per example (0 = unchanged), with a
  kernel of ``2 radius + 1`` taps normalised to sum 1 and reflect padding."""
  on = sigmas > 0
  if not on.any():
    return x
  offsets = np.arange(-radius, radius + 1, dtype=np.float32)
  safe = np.where(on, sigmas, 1.0).astype(np.float32)
  kernel = np.exp(-0.5 * (offsets[None, :] / safe[:, None]) ** 2)
  kernel /= kernel.sum(axis=1, keepdims=True)  # [B, K]
  out = x
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
    size = out.shape[axis]
    acc = np.zeros_like(out)
    for k in range(len(offsets)):
      window = np.take(padded, np.arange(k, k + size), axis=axis)
      acc += kernel[:, k, None, None, None] * window
    out = acc
  return np.where(on[:, None, None, None], out, x)


def two_views(images: list[np.ndarray], size: int, specs: tuple[ViewSpec, ViewSpec],
              rngs: list[np.random.Generator]) -> tuple[np.ndarray, np.ndarray]:
  """Two independently augmented views of each uint8 image: float32 [B, size, size, 3] in [0, 1].

  ``rngs[i]`` is example i's generator; view a's draws come first, then view b's.
  """
  views = []
  crops: list[list[np.ndarray]] = [[], []]
  params: list[list[_Params]] = [[], []]
  for image, rng in zip(images, rngs):
    for v, spec in enumerate(specs):
      crops[v].append(_crop(augment.to_rgb_uint8(image), size, spec, rng))
      params[v].append(_draw(spec, size, rng))
  for v in range(2):
    x = np.stack(crops[v])
    p = params[v]
    flip = np.array([q.flip for q in p])
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    x = _jitter(x, p)
    gray = np.array([q.gray for q in p])
    x = np.where(gray[:, None, None, None], np.repeat((x @ _LUMA)[..., None], 3, -1), x)
    x = gaussian_blur(x, np.array([q.sigma for q in p], np.float32),
                      blur_radius(specs[v], size))
    solarize = np.array([q.solarize for q in p])
    x = np.where(solarize[:, None, None, None] & (x >= 0.5), 1.0 - x, x)
    views.append(x.astype(np.float32))
  return views[0], views[1]


def normalize_unit(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """float [..., 3] in [0, 1] -> ``(x - mean) / std``, as ``augment.normalize`` for uint8."""
  return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
