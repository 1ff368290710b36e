"""Webdataset shards streamed from any fsspec path: image-text sets too large to prepare.

    data.name = "webdataset_stream(urls='gs://bucket/laion/{00000..41407}.tar')"
    data.name = "webdataset_stream(urls='file:///data/cc3m/{00000..00331}.tar',
                                   validation_urls='/data/cc3m-val/*.tar')"

Preparation (mmie/data/prepare.py) reads, checks and re-writes every example before the
first step, and writes the result from one host. A stream starts at once and each host reads
only its own shards, so its cost per host falls as hosts are added; ADR 0018 has the
measurement (``scripts/bench_data_scale.py``). How one host reads its part:

* **Shards**: ``urls`` (``{a..b}`` braces and globs; a local path, ``file://``, or any
  fsspec URL whose backend is installed: gcsfs for ``gs://``, s3fs for ``s3://``), sorted. The
  last is held out as the ``validation`` split unless ``validation_urls`` names others.
* **Per host**: in epoch ``e`` the training shards are ordered by ``permutation([seed, e])``
  and host ``h`` of ``P`` takes positions ``h, h + P, ...``: hosts read disjoint shards whose
  union is the set, and every epoch deals them anew.
* **Shuffle buffer**: a host reads ``shuffle_shards`` shards at a time, in parallel threads
  (the next window while the current one trains), and yields that window's samples in the
  order of ``permutation([seed, e, h, window])``.
* **Checks**: a sample is checked as it is read (``validate.check_streamed``): a corrupt
  image, an empty, over-long or undecodable caption, or an unreadable shard is skipped,
  counted in the iterator state and logged (the first few of each reason, per host).
* **Exact resume**: the position is ``(epoch, window, offset)``; restoring re-reads that one
  window and continues with the next sample. A shard must read the same twice (object
  storage does; a shard rewritten between runs does not).

Not done on a stream, because each needs the whole set first: duplicate removal and a
split by group hash. The tokenizer is trained on the captions of the first
``tokenizer_shards`` training shards, unless ``data.tokenizer`` names one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from mmie.data import readers, tokenizer as tokenizer_lib, validate

log = logging.getLogger(__name__)
SPLITS = ("train", "validation")
LOGGED_PER_REASON = 5  # Skipped samples logged per reason and host; all are counted.
Skipped = tuple[str, str, str]  # (reason, origin, detail)


def _filesystem(url: str) -> tuple[Any, str]:
  import fsspec  # pylint: disable=g-import-not-at-top

  try:
    return fsspec.core.url_to_fs(url)
  except (ImportError, ValueError) as e:
    raise ValueError(f"webdataset_stream: cannot open {url!r} ({e}). A remote URL needs the "
                     "fsspec backend of its protocol: pip install gcsfs for gs://, s3fs for "
                     "s3://.") from None


def list_shards(urls: str) -> list[str]:
  """The shard URLs of a brace pattern or glob, sorted within each pattern; a glob is listed
  on its filesystem, a plain name is taken as written (checked when read)."""
  found: list[str] = []
  for pattern in readers.expand_braces(urls.strip()):
    remote = "://" in pattern
    pattern = pattern if remote else os.path.expanduser(pattern)
    if any(c in pattern for c in "*?["):
      fs, path = _filesystem(pattern)
      found.extend(sorted(fs.unstrip_protocol(p) if remote else p for p in fs.glob(path)))
    else:
      found.append(pattern)
  return found


def read_shard(url: str, limits: validate.Limits) -> tuple[list[dict[str, Any]], list[Skipped]]:
  """The checked samples of one shard, in stored order, and the skipped ones. A shard that
  fails part-way keeps the samples before the failure and is reported as unreadable."""
  import fsspec  # pylint: disable=g-import-not-at-top

  samples: list[dict[str, Any]] = []
  skipped: list[Skipped] = []
  try:
    with fsspec.open(url, "rb") as f:
      for item in readers.read_tar(f, url.rstrip("/").rsplit("/", 1)[-1]):
        record, skip = validate.check_streamed(item, limits)
        if record is None:
          skipped.append((skip[0], item.origin, skip[1]))
        else:
          samples.append(record)
  except Exception as e:  # pylint: disable=broad-except  One bad shard must not stop a run.
    skipped.append((validate.UNREADABLE, url, f"{type(e).__name__}: {e}"))
  return samples, skipped


def _read_shards(pool: concurrent.futures.Executor, urls: Sequence[str], limits: validate.Limits
                 ) -> tuple[list[dict[str, Any]], list[Skipped]]:
  """Several shards read in parallel, concatenated in the order of ``urls``."""
  samples: list[dict[str, Any]] = []
  skipped: list[Skipped] = []
  for shard_samples, shard_skipped in pool.map(functools.partial(read_shard, limits=limits), urls):
    samples.extend(shard_samples)
    skipped.extend(shard_skipped)
  return samples, skipped


def _read_once(urls: Sequence[str], limits: validate.Limits
               ) -> tuple[list[dict[str, Any]], list[Skipped]]:
  """``_read_shards`` with a pool of its own, for one-off reads (tokenizer, validation)."""
  with concurrent.futures.ThreadPoolExecutor(min(8, len(urls))) as pool:
    return _read_shards(pool, urls, limits)


def as_example(record: dict[str, Any]) -> dict[str, Any]:
  """A checked sample is already the pipeline's common example (``Source.to_example``)."""
  return record


@dataclasses.dataclass(frozen=True)
class StreamSource:
  """A streamed webdataset source: the ``Source`` interface, with ``train`` read as a stream
  (``stream``) and ``validation`` read whole (``records``)."""

  name: str
  urls: str
  validation_urls: str
  shuffle_shards: int
  limits: validate.Limits
  vocab_size: int
  tokenizer_shards: int
  data_dir: str
  splits: tuple[str, ...] = SPLITS
  class_names: tuple[str, ...] = ()
  templated: bool = False
  to_example: Callable[[Any], dict[str, Any]] = as_example

  @functools.cached_property
  def split_shards(self) -> dict[str, tuple[str, ...]]:
    """``{"train": urls, "validation": urls}``; refuses an empty or overlapping split."""
    train = list_shards(self.urls)
    if self.validation_urls:
      validation = list_shards(self.validation_urls)
      overlap = sorted(set(train) & set(validation))
      if overlap:
        raise ValueError(f"webdataset_stream: validation_urls shares {len(overlap)} shards with "
                         f"urls (first {overlap[0]!r}); evaluation must not see training data.")
    elif len(train) >= 2:
      train, validation = train[:-1], train[-1:]
    else:
      raise ValueError(f"webdataset_stream(urls={self.urls!r}) matched {len(train)} shard(s); it "
                       "holds the last shard out for evaluation, so it needs two or more, or "
                       "validation_urls= naming the evaluation shards.")
    for url in (train[0], validation[0]):
      fs, path = _filesystem(url)
      if not fs.exists(path):
        raise FileNotFoundError(f"webdataset_stream: shard {url!r} does not exist.")
    return {"train": tuple(train), "validation": tuple(validation)}

  def records(self, split: str) -> Sequence[dict[str, Any]]:
    """The ``validation`` split, read whole into memory (evaluation sets are small)."""
    if split not in self.splits:
      raise ValueError(f"Data source {self.name!r} has no split {split!r}; it has "
                       f"{list(self.splits)}.")
    if split == "train":
      raise ValueError(f"{self.name}: the train split is streamed, not read whole; an "
                       "evaluation of it (a probe's train_split) needs a prepared source, e.g. "
                       "the same shards as webdataset(urls=...).")
    return _validation_records(self)

  @property
  def tokenizer_path(self) -> str:
    """A BPE tokenizer trained on the first ``tokenizer_shards`` training shards' captions,
    once, into ``<data_dir>/mmie_sources/``."""
    shards = self.split_shards["train"][:self.tokenizer_shards]
    key = repr((shards, self.limits, self.vocab_size))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = os.path.join(self.data_dir, "mmie_sources", f"{self.name}-{digest}", "tokenizer.json")
    if not os.path.isfile(path):
      samples, _ = _read_once(shards, self.limits)
      captions = [c for s in samples for c in s["captions"]]
      if not captions:
        raise ValueError(f"{self.name}: no usable caption in {list(shards)} to train a "
                         "tokenizer on; set data.tokenizer.")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      work = f"{path}.tmp-{os.getpid()}"
      tokenizer_lib.train_bpe(captions, self.vocab_size).save(work)
      os.replace(work, path)  # Hosts sharing data_dir write the same file; the last wins.
    return path

  def stream(self, *, seed: int, process_index: int, process_count: int,
             tag: int = 0) -> "ShardStream":
    """This host's infinite stream of ``(tag, sample)`` from the training shards."""
    shards = self.split_shards["train"]
    if len(shards) < process_count:
      raise ValueError(f"{self.name}: {len(shards)} training shards cannot be dealt to "
                       f"{process_count} hosts; each host needs at least one.")
    return ShardStream(shards, seed=seed, process_index=process_index,
                       process_count=process_count, window=self.shuffle_shards,
                       limits=self.limits, tag=tag)


@functools.lru_cache(maxsize=4)
def _validation_records(source: StreamSource) -> list[dict[str, Any]]:
  shards = source.split_shards["validation"]
  samples, skipped = _read_once(shards, source.limits)
  for reason, origin, detail in skipped[:LOGGED_PER_REASON]:
    log.warning("Validation sample skipped (%s) %s: %s", reason, origin, detail)
  if not samples:
    raise ValueError(f"{source.name}: no usable sample in the validation shards {list(shards)}"
                     f" ({len(skipped)} skipped).")
  return samples


class ShardStream(grain.IterDataset):
  """One host's samples of a sharded set, window-shuffled and resumable (module docstring)."""

  def __init__(self, shards: Sequence[str], *, seed: int, process_index: int,
               process_count: int, window: int, limits: validate.Limits, tag: int = 0):
    super().__init__()
    if window < 1:
      raise ValueError(f"shuffle_shards must be >= 1, got {window}.")
    self.shards, self.seed, self.window, self.limits, self.tag = (
        tuple(shards), seed, window, limits, tag)
    self.process_index, self.process_count = process_index, process_count

  def windows(self, epoch: int) -> list[tuple[str, ...]]:
    """This host's shards of ``epoch``, in reading order, grouped into windows."""
    order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
    mine = [self.shards[i] for i in order[self.process_index::self.process_count]]
    return [tuple(mine[i:i + self.window]) for i in range(0, len(mine), self.window)]

  def __iter__(self) -> "_ShardStreamIterator":
    return _ShardStreamIterator(self)

  def __str__(self) -> str:
    return f"ShardStream({len(self.shards)} shards, host {self.process_index})"


class _ShardStreamIterator(grain.DatasetIterator):
  """Yields ``(tag, sample)``; the state is the position of the next sample."""

  def __init__(self, stream: ShardStream):
    super().__init__()
    self._stream = stream
    self._readers = concurrent.futures.ThreadPoolExecutor(stream.window)
    self._ahead = concurrent.futures.ThreadPoolExecutor(1)  # Reads the next window meanwhile.
    self._pending: tuple[tuple[int, int], concurrent.futures.Future] | None = None
    self._epoch = self._window = self._offset = self._epoch_samples = 0
    self._skipped: collections.Counter[str] = collections.Counter()
    self._samples: list[dict[str, Any]] | None = None  # The current window, in yield order.

  def _read(self, epoch: int, window: int) -> tuple[list[dict[str, Any]], list[Skipped]]:
    samples, skipped = _read_shards(self._readers, self._stream.windows(epoch)[window],
                                    self._stream.limits)
    rng = np.random.default_rng([self._stream.seed, epoch, self._stream.process_index, window])
    return [samples[i] for i in rng.permutation(len(samples))], skipped

  def _following(self, epoch: int, window: int) -> tuple[int, int]:
    if window + 1 < len(self._stream.windows(epoch)):
      return epoch, window + 1
    return epoch + 1, 0

  def _enter(self, count_skips: bool) -> None:
    """Loads the current window (prefetched if it was the expected next one)."""
    key = (self._epoch, self._window)
    if self._pending is not None and self._pending[0] == key:
      samples, skipped = self._pending[1].result()
    else:
      samples, skipped = self._read(*key)
    self._samples = samples
    self._pending = (self._following(*key), self._ahead.submit(self._read,
                                                               *self._following(*key)))
    if count_skips:
      for reason, origin, detail in skipped:
        self._skipped[reason] += 1
        if self._skipped[reason] <= LOGGED_PER_REASON:
          log.warning("Host %d skipped %s (%s): %s", self._stream.process_index, origin,
                      reason, detail)

  def __next__(self) -> tuple[int, dict[str, Any]]:
    while True:
      if self._samples is None:
        self._enter(count_skips=True)
      if self._offset < len(self._samples):
        sample = self._samples[self._offset]
        self._offset += 1
        self._epoch_samples += 1
        return self._stream.tag, sample
      epoch, self._window = self._following(self._epoch, self._window)
      if epoch != self._epoch:
        if not self._epoch_samples:
          raise ValueError(f"{self._stream}: a whole epoch gave no usable sample (skipped: "
                           f"{dict(self._skipped)}); see the warnings above.")
        self._epoch, self._epoch_samples = epoch, 0
      self._offset, self._samples = 0, None

  def get_state(self) -> dict[str, Any]:
    return {"epoch": self._epoch, "window": self._window, "offset": self._offset,
            "epoch_samples": self._epoch_samples, "entered": self._samples is not None,
            "skipped": dict(self._skipped)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._epoch, self._window, self._offset = state["epoch"], state["window"], state["offset"]
    self._epoch_samples = state["epoch_samples"]
    self._skipped = collections.Counter(state["skipped"])
    self._samples = None
    if state["entered"]:  # Its skips are counted already.
      self._enter(count_skips=False)

  def skipped(self) -> dict[str, int]:
    """Samples skipped so far on this host, by reason."""
    return dict(self._skipped)


class Decoded:
  """Stream samples -> working examples: the ``get_many`` protocol of
  ``records.read_batch``, with the samples themselves in place of record ids."""

  def __init__(self, working: Callable[[Any], dict[str, Any]]):
    self._working = working

  def get_many(self, samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [self._working(s) for s in samples]


class ParallelMap(grain.IterDataset):
  """``fn(index, element)`` over a stream with up to ``threads`` elements in flight, in order.

  What ``to_iter_dataset``'s read threads do for a MapDataset: batches are decoded and
  augmented in parallel (pillow and numpy release the GIL). The state is the parent's state
  recorded right after the element last returned, so resuming never skips or repeats one.
  """

  def __init__(self, parent: grain.IterDataset, fn: Callable[[int, Any], Any], threads: int):
    super().__init__(parent)
    self._fn, self._threads = fn, max(1, threads)

  def __iter__(self) -> "_ParallelMapIterator":
    return _ParallelMapIterator(self._parent.__iter__(), self._fn, self._threads)


class _ParallelMapIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, fn: Callable[[int, Any], Any],
               threads: int):
    super().__init__(parent)
    self._fn, self._threads = fn, threads
    self._pool = concurrent.futures.ThreadPoolExecutor(threads)
    self._queue: collections.deque = collections.deque()  # (future, parent state after it)
    self._index = 0  # Of the next element submitted.
    self._state = {"parent": parent.get_state(), "index": 0}

  def __next__(self) -> Any:
    while len(self._queue) < self._threads:
      element = next(self._parent)
      self._queue.append((self._pool.submit(self._fn, self._index, element),
                          {"parent": self._parent.get_state(), "index": self._index + 1}))
      self._index += 1
    future, self._state = self._queue.popleft()
    return future.result()

  def get_state(self) -> dict[str, Any]:
    return self._state

  def set_state(self, state: dict[str, Any]) -> None:
    for future, _ in self._queue:
      future.cancel()
    self._queue.clear()
    self._parent.set_state(state["parent"])
    self._index, self._state = state["index"], state


def as_batch(tagged: Sequence[tuple[int, dict[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
  """``[(source id, sample)]`` -> the ``(source ids, records)`` pair the batch loaders read."""
  ids = np.asarray([k for k, _ in tagged], np.int32)
  samples = np.empty(len(tagged), dtype=object)
  samples[:] = [s for _, s in tagged]
  return ids, samples


def example_stream(terms: Sequence[tuple[Any, float]], seeds: Sequence[int], *,
                   process_index: int, process_count: int) -> grain.IterDataset:
  """The streamed sources of a mixture, interleaved by weight (a stream's size is not known
  up front, so ``* w`` here is a share of the samples, not a per-example upsampling)."""
  streams = [source.stream(seed=s, process_index=process_index, process_count=process_count,
                           tag=k) for k, ((source, _), s) in enumerate(zip(terms, seeds))]
  if len(streams) == 1:
    return streams[0]
  return grain.IterDataset.mix(streams, [weight for _, weight in terms])
