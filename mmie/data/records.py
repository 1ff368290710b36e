"""Random-access records and the index stream every data view reads them through.

``index_stream`` turns each source's split into per-host shards, shuffled per epoch and mixed
by weight, as batches of ``(source id, record id)``; ``Records`` memoises a transformed split
in memory and reads batches of records with one call per source (array_record serves a batch
of random reads ~10x faster per record than single reads of a large file).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np


class Records(Sequence):
  """``working(records[i])``, memoised in memory when ``cache`` (filled lazily, thread-safe).

  ``get_many`` reads uncached records in one batched call: array_record serves a batch of
  random reads ~10x faster per record than single reads of a large file.
  """

  def __init__(self, records: Sequence[Any], working: Callable[[Any], Any], cache: bool):
    self._records, self._working = records, working
    self._memo: list[Any] | None = [None] * len(records) if cache else None

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._memo is None:
      return self._working(self._records[index])
    value = self._memo[index]
    if value is None:  # Two threads may both compute it: same value, harmless.
      value = self._memo[index] = self._working(self._records[index])
    return value

  def get_many(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    memo = self._memo
    missing = [i for i in indices if memo is None or memo[i] is None]
    loaded = {}
    if missing:
      many = getattr(self._records, "__getitems__", None)
      raw = many(missing) if many else [self._records[i] for i in missing]
      loaded = {i: self._working(r) for i, r in zip(missing, raw)}
      if memo is not None:
        for i, value in loaded.items():
          memo[i] = value
    return [loaded[i] if i in loaded else memo[i] for i in indices]


def check_sharding(batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count), got process_index="
                     f"{process_index}, process_count={process_count}.")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the process "
                     f"count {process_count}: each host loads batch_size // process_count.")
  return batch_size // process_count


def read_batch(per_source: Sequence[Any], batch: tuple[np.ndarray, np.ndarray]) -> list[Any]:
  """The records of a batch of ``(source id, record id)``, in batch order, read with one
  ``get_many(ids)`` call per source (batched random reads are much faster)."""
  source_ids, record_ids = (np.asarray(a) for a in batch)
  rows: list[Any] = [None] * len(record_ids)
  for k, records in enumerate(per_source):
    slots = np.flatnonzero(source_ids == k)
    if len(slots):
      for slot, row in zip(slots, records.get_many(record_ids[slots].tolist())):
        rows[slot] = row
  return rows


def index_stream(sizes_and_weights: Sequence[tuple[str, int, float]], seeds: Sequence[int], *,
                  local_batch: int, process_index: int, process_count: int
                  ) -> tuple[grain.MapDataset, list[int]]:
  """Batches of ``(source id, record id)``: per-host shards, shuffled, repeated and mixed.

  Each source ``(name, size, weight)`` is sharded ``process_index::process_count`` and
  shuffled on its own, then sources interleave in proportion to weight x shard size.
  Returns the stream and each source's shard size.
  """
  streams, weights, shard_sizes = [], [], []
  for k, ((name, size, weight), shuffle_seed) in enumerate(zip(sizes_and_weights, seeds)):
    shard = grain.MapDataset.range(size)[process_index::process_count]
    if len(shard) == 0:
      raise ValueError(f"process {process_index} of {process_count} got no records of "
                       f"{name!r} ({size} in all).")
    shard_sizes.append(len(shard))
    stream = shard.shuffle(seed=shuffle_seed).repeat(None)
    streams.append(stream.map(functools.partial(tag, k)))
    weights.append(weight * len(shard))
  ds = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
  return ds.batch(local_batch, drop_remainder=True), shard_sizes


def tag(source_id: int, record_id: int) -> tuple[int, int]:
  return source_id, record_id


class LazyImages:
  """A split's image column, decoded only where indexed: ``float32 [N, H, W, C]`` on demand.

  Rows are decoded (and memoised, as uint8, by ``records``) the first time they are indexed,
  then normalised. Evaluation places each batch with ``make_array_from_callback``, which asks
  for the rows of this host's devices alone, so on a pod every host decodes only its share of
  the evaluation split, as it reads only its share of the training data. ``window(start,
  size)`` is a lazy view of ``size`` rows from ``start``, the last row repeated past the end
  (the padding of a final partial batch); ``take(positions)`` one of any rows. ``np.asarray``
  decodes every row.
  """

  def __init__(self, records: Records, normalise: Callable[[np.ndarray], np.ndarray],
               row_shape: tuple[int, ...], rows: np.ndarray | None = None):
    self._records, self._normalise, self._row_shape = records, normalise, tuple(row_shape)
    self._rows = np.arange(len(records)) if rows is None else rows

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self._rows), *self._row_shape)

  dtype = np.dtype(np.float32)
  ndim = property(lambda self: 1 + len(self._row_shape))

  def __len__(self) -> int:
    return len(self._rows)

  def window(self, start: int, size: int) -> "LazyImages":
    if not len(self._rows):
      raise ValueError("an empty image column has no window.")
    return self.take(np.minimum(np.arange(start, start + size), len(self._rows) - 1))

  def take(self, positions: np.ndarray) -> "LazyImages":
    """A lazy view of the rows at ``positions`` (in order, repeats allowed)."""
    return type(self)(self._records, self._normalise, self._row_shape, self._rows[positions])

  def __getitem__(self, index: Any) -> np.ndarray:
    first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
    rows = self._rows[first]
    scalar = np.ndim(rows) == 0
    wanted = np.atleast_1d(rows).tolist()
    if wanted:
      pixels = np.stack([e["image"] for e in self._records.get_many(wanted)])
    else:
      pixels = np.zeros((0, *self._row_shape), np.uint8)
    out = self._normalise(pixels).astype(np.float32, copy=False)
    out = out[0] if scalar else out
    return out[(slice(None),) * (0 if scalar else 1) + tuple(rest)] if rest else out

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    out = self[:]
    return out if dtype is None else out.astype(dtype)
