"""Image-only views of image-text (labelled) sources: what the vision tasks train on.

  labelled_image  ``{"image": float32 [b, H, W, 3], "label": int32 [b]}``, augmented by
                  ``data.augment`` (flip, random resized crop, colour jitter) as the
                  image-text view is; for classification.
  two_views       ``{"view_a", "view_b": float32 [b, H, W, 3], "label": int32 [b]}``: two
                  independent augmentations of each image by the ``data.augment.views``
                  preset (mmie/data/ssl_augment.py); for self-supervised learning.

Both share the image-text view's sharding, shuffling, mixing and resume guarantees: they are
built on the same index stream, and example ``j`` of batch ``n`` draws its randomness from
``default_rng([seed, n * batch + j])`` alone, so its views are a function of (seed, stream
position) and a resumed run makes the same views. Labels are the source's class ids (-1 for
unlabelled sources, which only ``two_views`` without ``supcon`` can use).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmie.data import augment, ssl_augment
from mmie.data.records import Records, read_batch
from mmie.data.schema import data_value



@dataclasses.dataclass(frozen=True)
class _ImageLoader:
  """What both loaders share: the records, the seed, the output size and normalisation."""

  records: tuple[Records, ...]
  seed: int
  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def read(self, batch_index: int, batch: tuple[np.ndarray, np.ndarray]
           ) -> tuple[list[dict[str, Any]], list[np.random.Generator]]:
    """The batch's working examples and each one's generator, seeded by its stream position."""
    examples = read_batch(self.records, batch)
    first = batch_index * len(examples)
    return examples, [np.random.default_rng([self.seed, first + j])
                      for j in range(len(examples))]

  def labels(self, examples: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray([e["label"] for e in examples], np.int32)


@dataclasses.dataclass(frozen=True)
class LoadLabelled(_ImageLoader):
  """(source, record) batch -> ``{"image", "label"}`` with ``data.augment``'s augmentation."""

  chain: augment.Chain = augment.Chain()

  def __call__(self, batch_index: int, batch: tuple[np.ndarray, np.ndarray]
               ) -> dict[str, np.ndarray]:
    examples, rngs = self.read(batch_index, batch)
    images = [self.chain(e["image"], self.image_size, rng) for e, rng in zip(examples, rngs)]
    return {"image": augment.normalize(np.stack(images), self.mean, self.std),
            "label": self.labels(examples)}


@dataclasses.dataclass(frozen=True)
class LoadTwoViews(_ImageLoader):
  """(source, record) batch -> ``{"view_a", "view_b", "label"}`` by a two-view preset."""

  views: tuple[ssl_augment.ViewSpec, ssl_augment.ViewSpec] = ssl_augment.PRESETS["simclr"]

  def __call__(self, batch_index: int, batch: tuple[np.ndarray, np.ndarray]
               ) -> dict[str, np.ndarray]:
    examples, rngs = self.read(batch_index, batch)
    view_a, view_b = ssl_augment.two_views([e["image"] for e in examples], self.image_size,
                                           self.views, rngs)
    return {"view_a": ssl_augment.normalize_unit(view_a, self.mean, self.std),
            "view_b": ssl_augment.normalize_unit(view_b, self.mean, self.std),
            "label": self.labels(examples)}


def loader(view: str, data_config: Any, records: tuple[Records, ...], seed: int) -> Any:
  """The batch loader of an image-only ``view`` over the training ``records``."""
  size = int(data_config["image_size"])
  mean, std = augment.normalisation(data_config)
  if view == "two_views":
    return LoadTwoViews(records, seed, size, mean, std, views=ssl_augment.resolve_views(
        str(data_value(data_config, "views", "augment"))))
  return LoadLabelled(records, seed, size, mean, std, chain=augment.Chain.from_config(data_config))


def needs_crop_source(view: str, data_config: Any) -> bool:
  """Whether working images keep their full extent for random crops (else: final size)."""
  return view == "two_views" or bool(data_value(data_config, "random_resized_crop", "augment"))


IMAGE_VIEWS = ("labelled_image", "two_views")
