"""The text data views: ``text`` (the captions of an image-text source, images dropped: the
language model's batches) and ``parallel_text`` (sentence pairs: the translation task's).

Both read through the same index stream as the image-text view (mmie/data/records.py), so
they share its per-host sharding, shuffling, mixing and exact resume; a caption is drawn from
``default_rng([seed, stream position])`` as the image-text view draws it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from mmie.data import parallel, sources, tokenizer as tokenizer_lib
from mmie.data.records import Records, index_stream, read_batch
from mmie.data.schema import data_value
from mmie.data.spec import tokenizer_for


@dataclasses.dataclass(frozen=True)
class Captions:
  """Record -> its captions and label; the image is dropped, never resized or augmented."""

  to_example: Any

  def __call__(self, record: Any) -> dict[str, Any]:
    example = self.to_example(record)
    return {"captions": list(example["captions"]), "label": example["label"]}


@dataclasses.dataclass(frozen=True)
class LoadText:
  """A batch of (source, record index) -> ``{"text"}`` rows: a random caption per example,
  drawn from ``default_rng([seed, position])`` as the image-text view draws it."""

  records: tuple[Records, ...]
  tokenizer: tokenizer_lib.Tokenizer
  context_length: int
  seed: int

  @classmethod
  def from_config(cls, texts: tuple[Any, ...], data_config: Any, seed: int) -> "LoadText":
    """Over ``texts``, each source's records read as ``Captions``."""
    return cls(texts, tokenizer_for(data_config), int(data_config["context_length"]), seed)

  def __call__(self, batch_index: int, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    examples = read_batch(self.records, batch)
    first = batch_index * len(examples)
    rows = []
    for j, e in enumerate(examples):
      captions = e["captions"]
      pick = int(np.random.default_rng([self.seed, first + j]).integers(len(captions)))
      rows.append(self.tokenizer.encode_one(captions[pick], self.context_length))
    return {"text": np.stack(rows)}


@dataclasses.dataclass(frozen=True)
class LoadPairs:
  """A batch of (source, record index) -> ``{"source", "target"}`` token rows."""

  records: tuple[Sequence[dict[str, str]], ...]
  tokenizer: tokenizer_lib.Tokenizer
  context_length: int

  def __call__(self, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    rows = read_batch(self.records, batch)
    encode = lambda side: np.stack([self.tokenizer.encode_one(r[side], self.context_length)
                                    for r in rows])
    return {"source": encode("source"), "target": encode("target")}


def record_stream(terms: Sequence[tuple[Any, float]], split: str, *, local_batch: int,
                  seed: int, process_index: int, process_count: int
                  ) -> tuple[grain.MapDataset, tuple[Sequence[Any], ...]]:
  """The batches of (source, record index) over a mixture of prepared text sources (pairs or
  records: anything with ``name`` and ``records(split)``), and each source's records."""
  seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(len(terms) + 1)]
  records = tuple(source.records(split) for source, _ in terms)
  ds, _ = index_stream([(f"{s.name}:{split}", len(r), w) for (s, w), r in zip(terms, records)],
                        seeds[1:], local_batch=local_batch, process_index=process_index,
                        process_count=process_count)
  return ds, records


def build_parallel_dataset(data_config: Any, *, local_batch: int, seed: int,
                            process_index: int, process_count: int) -> grain.MapDataset:
  ds, records = record_stream(parallel.sources_for(data_config),
                              data_value(data_config, "train_split"), local_batch=local_batch,
                              seed=seed, process_index=process_index,
                              process_count=process_count)
  return ds.map(LoadPairs(records, tokenizer_for(data_config),
                           int(data_config["context_length"])))


def load_text_split(data_config: Any, source: sources.Source, split: str) -> dict[str, Any]:
  """Every caption of the split (the LM's evaluation text), with no image decoded."""
  records = Records(source.records(split), Captions(source.to_example), cache=False)
  examples = [e for start in range(0, len(records), 512)
              for e in records.get_many(range(start, min(start + 512, len(records))))]
  captions = [c for e in examples for c in (e["captions"][:1] if source.templated
                                            else e["captions"])]
  return {"text": tokenizer_for(data_config).encode(captions, int(data_config["context_length"])),
          "label": np.asarray([e["label"] for e in examples], np.int32),
          "captions": captions, "class_names": list(source.class_names)}


def load_parallel_split(data_config: Any, split: str) -> dict[str, Any]:
  """A pair split: ``source`` / ``target`` int32 [N, L], and the texts as ``sources`` and
  ``references`` (what BLEU scores generations against)."""
  records = parallel.sources_for(data_config)[0][0].records(split)
  rows = [r for start in range(0, len(records), 1024)
          for r in records.get_many(range(start, min(start + 1024, len(records))))]
  tokenizer, length = tokenizer_for(data_config), int(data_config["context_length"])
  return {"source": tokenizer.encode([r["source"] for r in rows], length),
          "target": tokenizer.encode([r["target"] for r in rows], length),
          "sources": [r["source"] for r in rows],
          "references": [r["target"] for r in rows]}
