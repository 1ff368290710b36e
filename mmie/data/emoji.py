"""TFDS builder for the embedded emoji image-caption set (array_record, no TensorFlow).

The raw set lives in the repository's ``data/emoji/`` (built by
``scripts/build_emoji_data.py``); this builder turns it into TFDS array_record shards so
that every source, embedded or user-provided, is read the same way: a random-access
``as_data_source`` that grain shuffles and shards.

Preparing is idempotent: an existing preparation is reused unless the files in
``data/emoji/`` changed (their fingerprint is kept in the dataset metadata), in which case
it is regenerated. It takes about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

# The package's mmie/assets/emoji/ (data/emoji/ in a checkout links to it; this file is
# mmie/data/emoji.py), installed with the package.
DEFAULT_SOURCE_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "emoji"))
SOURCE_FILES = ("images.npz", "metadata.jsonl", "tokenizer.json")
# Category names as in emoji-datasource, in its sort order; the ClassLabel ids follow it.
CATEGORIES = (
    "Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
    "Travel & Places", "Activities", "Objects", "Symbols", "Flags",
)
IMAGE_SHAPE = (32, 32, 3)


def source_fingerprint(source_dir: str) -> str:
  """sha256 over the source files, so a rebuilt data/emoji/ invalidates old preparations."""
  digest = hashlib.sha256()
  for name in SOURCE_FILES:
    with open(os.path.join(source_dir, name), "rb") as f:
      digest.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
  return digest.hexdigest()


def read_source(source_dir: str) -> tuple[np.ndarray, list[dict]]:
  """Images ``uint8 [N, 32, 32, 3]`` and their metadata rows, checked against each other."""
  missing = [n for n in SOURCE_FILES if not os.path.exists(os.path.join(source_dir, n))]
  if missing:
    raise FileNotFoundError(
        f"Emoji source {source_dir} lacks {missing}; rebuild it with "
        "`python scripts/build_emoji_data.py`.")
  with np.load(os.path.join(source_dir, "images.npz")) as npz:
    images = npz["images"]
  with open(os.path.join(source_dir, "metadata.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  if images.shape != (len(rows), *IMAGE_SHAPE) or images.dtype != np.uint8:
    raise ValueError(f"{source_dir}/images.npz holds {images.dtype} {images.shape}; expected "
                     f"uint8 {(len(rows), *IMAGE_SHAPE)} to match metadata.jsonl.")
  return images, rows


class MmieEmoji(tfds.core.GeneratorBasedBuilder):
  """Emoji images (Twemoji, CC-BY 4.0) captioned by their Unicode names."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "1,906 base emoji at 32x32, split by caption (~10% validation)."}

  def __init__(self, *, source_dir: str = DEFAULT_SOURCE_DIR, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="png"),
            "caption": tfds.features.Text(),
            "name": tfds.features.Text(),
            "key": tfds.features.Text(),
            "short_names": tfds.features.Sequence(tfds.features.Text()),
            "category": tfds.features.ClassLabel(names=CATEGORIES),
            "subcategory": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(fingerprint=source_fingerprint(self._source_dir)),
        homepage="https://github.com/iamcal/emoji-data",
        license="Images: CC-BY 4.0 (Twemoji, Twitter). Metadata: MIT (emoji-datasource).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    return {"train": self._generate_examples("train"),
            "validation": self._generate_examples("validation")}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    images, rows = read_source(self._source_dir)
    for image, row in zip(images, rows):
      if row["split"] != split:
        continue
      yield row["key"], {
          # A PIL image is PNG-encoded by pillow; a numpy array would need TensorFlow.
          "image": Image.fromarray(image),
          "caption": row["caption"],
          "name": row["name"],
          "key": row["key"],
          "short_names": row["short_names"],
          "category": row["category"],
          "subcategory": row["subcategory"],
      }


def prepare(data_dir: str, source_dir: str = DEFAULT_SOURCE_DIR) -> MmieEmoji:
  """Returns the emoji builder prepared in ``data_dir``, (re)generating only when needed."""
  builder = MmieEmoji(data_dir=data_dir, source_dir=source_dir, file_format="array_record")
  if builder.is_prepared():
    if builder.info.metadata.get("fingerprint") == source_fingerprint(source_dir):
      return builder
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # Source changed: regenerate.
  else:
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  tfds.disable_progress_bar()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
  # A fresh builder reads the info just written (splits, counts, fingerprint).
  return MmieEmoji(data_dir=data_dir, source_dir=source_dir, file_format="array_record")


def to_example(record: dict) -> dict:
  """A stored emoji record -> the pipeline's common example (caption list, category label)."""
  caption = record["caption"]
  return {"image": np.asarray(record["image"]),
          "captions": [caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)],
          "label": int(record["category"])}
