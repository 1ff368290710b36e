"""Any TFDS dataset by name as an image-text source: ``tfds(name=..., image_key=..., text_key=...)``.

Examples:
  tfds(name='coco_captions', text_key='captions/text')          # several captions per image
  tfds(name='fashion_mnist', label_key='label')                 # captions from templates
  tfds(name='my_set', text_key='caption', manual_dir='~/dl')    # manually downloaded files

The dataset is prepared by TFDS itself (its download when the network is there, or files in
``manual_dir``) as array_record into the data_dir, then read like every other source.
Splits: ours are 'train' and 'validation', mapped to the dataset's ``train_split`` and
``eval_split``. Without TensorFlow, datasets whose generation code needs it cannot be
prepared here; prepare them where TensorFlow is installed (array_record format) and point
``data_dir`` at the result.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mmie.data import sources, tokenizer as tokenizer_lib

TOKENIZER_SAMPLE = 50_000  # Captions read to train a tokenizer for a TFDS dataset.


def _path_get(record: Any, key_path: str) -> Any:
  """``record['a']['b']`` for ``key_path='a/b'``; names the missing key and what exists."""
  value = record
  for part in key_path.split("/"):
    if not isinstance(value, dict) or part not in value:
      options = sorted(value) if isinstance(value, dict) else type(value).__name__
      raise KeyError(f"TFDS record has no {part!r} in {key_path!r}; available: {options}.")
    value = value[part]
  return value


def _texts(value: Any) -> list[str]:
  items = value.tolist() if isinstance(value, np.ndarray) else value
  items = items if isinstance(items, (list, tuple)) else [items]
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in items]


@dataclasses.dataclass(frozen=True)
class _ToExample:
  image_key: str
  text_key: str
  label_key: str
  templates: tuple[str, ...]
  class_names: tuple[str, ...]

  def __call__(self, record: Any) -> dict[str, Any]:
    label = int(_path_get(record, self.label_key)) if self.label_key else -1
    if self.text_key:
      captions = _texts(_path_get(record, self.text_key))
    else:
      captions = [t.format(self.class_names[label]) for t in self.templates]
    image = _path_get(record, self.image_key)
    return {"image": image if isinstance(image, bytes) else np.asarray(image),
            "captions": captions, "label": label}


def _tokenizer_path(data_dir: str, builder: Any, to_example: _ToExample, train_split: str,
                    vocab_size: int) -> str:
  """A BPE trained on (up to TOKENIZER_SAMPLE of) the training captions, cached on disk."""
  key = repr((builder.info.full_name, to_example, train_split, vocab_size))
  path = os.path.join(data_dir, "mmie_tokenizers",
                      f"{builder.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json")
  if not os.path.exists(path):
    records = builder.as_data_source(
        train_split, decoders={to_example.image_key: tfds.decode.SkipDecoding()})
    texts = [c for i in range(min(len(records), TOKENIZER_SAMPLE))
             for c in to_example(records[i])["captions"]]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tokenizer_lib.train_bpe(texts, vocab_size).save(path + ".tmp")
    os.replace(path + ".tmp", path)
  return path


def build(*, data_dir: str, name: str, image_key: str, text_key: str, label_key: str,
          templates: Sequence[str], manual_dir: str, train_split: str, eval_split: str,
          vocab_size: int) -> sources.Source:
  """The TFDS dataset ``name`` prepared into ``data_dir`` and adapted to the common example.

  Defaults live in ``mmie.data.sources.tfds_source``, the registered call-string factory.
  """
  if not text_key and not label_key:
    raise ValueError(f"tfds(name={name!r}) needs text_key= (captions) or label_key= "
                     "(class labels turned into captions by templates).")
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=config)
  class_names: tuple[str, ...] = ()
  if label_key:
    feature = builder.info.features
    for part in label_key.split("/"):
      feature = feature[part]
    class_names = tuple(getattr(feature, "names", ()) or ())
    if not text_key and not class_names:
      raise ValueError(f"tfds(name={name!r}): label {label_key!r} has no class names to "
                       "fill the templates; pass text_key= instead.")
  to_example = _ToExample(image_key, text_key, label_key, tuple(templates), class_names)
  split_map = {"train": train_split, "validation": eval_split}
  available = set(builder.info.splits.keys())
  missing = {ours: theirs for ours, theirs in split_map.items() if theirs not in available}
  if missing:
    raise ValueError(f"tfds(name={name!r}) has splits {sorted(available)}; set train_split= / "
                     f"eval_split= (missing: {missing}).")
  return sources.Source(
      name=f"tfds:{name}",
      split_sources=functools.cache(lambda split: builder.as_data_source(split_map[split])),
      splits=tuple(split_map),
      to_example=to_example,
      class_names=tuple(n.lower() for n in class_names),
      tokenizer_path=_tokenizer_path(data_dir, builder, to_example, train_split, vocab_size),
      templated=not text_key,
  )
