"""The grain input pipeline shared by every task: sources -> shard -> shuffle -> mix -> augment -> batch.

Guarantees (tested in tests/data/):

* Deterministic from ``seed``: the same seed gives the same batches, on any machine, with
  or without the in-memory cache.
* Each epoch is shuffled differently (grain folds the epoch into the shuffle seed), draws a
  new random caption per image and augments differently (each example's generator is
  seeded by its position in the infinite stream).
* Per-host sharding by ``process_index``: hosts read disjoint records whose union is the
  split, and each yields ``batch_size // process_count`` examples per step.
* Exact resume: the iterator's ``get_state()`` is a small JSON-serialisable dict; feeding it
  to ``set_state()`` on a fresh iterator continues with the very next batch, mid-epoch.
* Mixtures (``data.name = "a + b * 3"``): each source is sharded and shuffled on its own and
  they are interleaved in proportion to weight x size, so ``* 3`` means each example of
  ``b`` is seen three times as often as one of ``a`` (open_clip's upsampling factor).

Batches are ``{"image": float32 [b, H, W, 3], "text": int32 [b, L]}``; images are
normalised with ``data.mean`` / ``data.std`` (default: CLIP's RGB statistics, see
mmie/data/augment.py) and texts are ``BOS tokens EOS PAD...`` (mmie/data/tokenizer.py).
When ``data.name`` names parallel text (mmie/data/parallel.py: ``sword``, ``pairs(...)``)
batches are ``{"source": int32 [b, L], "target": int32 [b, L]}`` instead, with the same
sharding, shuffling, mixing and resume guarantees.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from mmie.data import (augment, image_views, record_views, sources, streaming, text_views,
                       tokenizer as tokenizer_lib)
from mmie.data.records import LazyImages, Records, check_sharding, index_stream, read_batch
from mmie.data.schema import data_value
from mmie.data.spec import (VIEW_KINDS as VIEWS, data_kind, is_parallel_text, resolve_view,
                            tokenizer_for)

# Decoding PNG/JPEG in pillow releases the GIL, so a few reader threads keep up with a step.


DEFAULT_READ_THREADS = 4


@dataclasses.dataclass(frozen=True)
class _Working:
  """Record -> example with a decoded, deterministically reduced image (safe to cache).

  Without random crops the image is already final (centre square at ``image_size``); with
  them it keeps its aspect ratio with the shorter side at most ``2 * image_size`` so crops
  are cut from enough pixels. JPEGs decode at reduced scale (pillow draft mode).
  """

  to_example: Any
  image_size: int
  crop: bool

  def __call__(self, record: Any) -> dict[str, Any]:
    example = self.to_example(record)
    target = 2 * self.image_size if self.crop else self.image_size
    image = augment.decode(example["image"], target)
    if self.crop:
      image = augment.shrink(image, target)
    else:
      image = augment.center_crop_resize(image, self.image_size)
    return {"image": image, "captions": list(example["captions"]), "label": example["label"]}


def _cached(data_config: Any, records: Sequence[Any], working: Any,
            shard_size: int | None) -> Records:
  """``records`` as working examples, cached when ``shard_size`` of them fit
  ``data.cache_mb``; ``shard_size=None`` never caches (a single pass, as evaluation makes,
  gains nothing)."""
  budget = float(data_value(data_config, "cache_mb")) * 2**20
  cache = False
  if shard_size and budget > 0:
    one = working(records[0])
    per_example = sum(len(c) for c in one.get("captions", ())) + 600
    per_example += one["image"].nbytes if "image" in one else 0
    cache = per_example * shard_size <= budget
  return Records(records, working, cache)


def _records_for(data_config: Any, source: sources.Source, split: str, crop: bool,
                 shard_size: int | None = None) -> Records:
  """The split as working examples (decoded, reduced images; see ``_Working``)."""
  working = _Working(source.to_example, int(data_config["image_size"]), crop)
  return _cached(data_config, source.records(split), working, shard_size)


@dataclasses.dataclass(frozen=True)
class _Augment:
  """Working example -> random caption's ids and augmented uint8 image (normalised per batch)."""

  tokenizer: tokenizer_lib.Tokenizer
  image_size: int
  context_length: int
  chain: augment.Chain
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    captions = example["captions"]
    caption = captions[int(rng.integers(len(captions)))] if len(captions) > 1 else captions[0]
    image = self.chain(example["image"], self.image_size, rng)
    return {"image": image, "text": self.tokenizer.encode_one(caption, self.context_length)}


def _augment(data_config: Any) -> _Augment:
  mean, std = augment.normalisation(data_config)
  return _Augment(
      tokenizer=tokenizer_for(data_config),
      image_size=int(data_config["image_size"]),
      context_length=int(data_config["context_length"]),
      chain=augment.Chain.from_config(data_config),
      mean=mean,
      std=std,
  )


@dataclasses.dataclass(frozen=True)
class _LoadBatch:
  """A batch of (source, record index) -> stacked training arrays.

  Records are read per source in one batched call; example ``j`` of batch ``n`` draws its
  caption and augmentation from ``default_rng([seed, n * batch + j])``, so every example's
  randomness depends only on the seed and its stream position (resume-exact, per-epoch new).
  """

  records: tuple[Records, ...]
  augmenter: _Augment
  seed: int

  def __call__(self, batch_index: int, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    examples = read_batch(self.records, batch)
    first = batch_index * len(examples)
    out = [self.augmenter(e, np.random.default_rng([self.seed, first + j]))
           for j, e in enumerate(examples)]
    images = np.stack([o["image"] for o in out])
    return {"image": augment.normalize(images, self.augmenter.mean, self.augmenter.std),
            "text": np.stack([o["text"] for o in out])}


def build_train_dataset(data_config: Any, *, batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1, view: str | None = None
                        ) -> grain.MapDataset | grain.IterDataset:
  """The infinite batched dataset behind ``build_train_iterator`` (for benchmarks): a
  MapDataset over random-access sources, an IterDataset over streamed ones."""
  local_batch = check_sharding(batch_size, process_index, process_count)
  view = resolve_view(data_config, view)
  if data_kind(data_config) == "text_records":
    return record_views.build_dataset(data_config, view, local_batch=local_batch, seed=seed,
                                      process_index=process_index, process_count=process_count)
  if view == "parallel_text":
    return text_views.build_parallel_dataset(data_config, local_batch=local_batch, seed=seed,
                                             process_index=process_index,
                                             process_count=process_count)
  split = data_value(data_config, "train_split")
  terms = sources.sources_for(data_config)
  seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(len(terms) + 1)]
  if _streamed(terms):
    ds = streaming.example_stream(terms, seeds[1:], process_index=process_index,
                                  process_count=process_count)
    ds = ds.batch(local_batch, drop_remainder=True, batch_fn=streaming.as_batch)
    records = lambda k, working: streaming.Decoded(working)
  else:
    sizes = [(f"{source.name}:{split}", len(source.records(split)), weight)
             for source, weight in terms]
    ds, shard_sizes = index_stream(sizes, seeds[1:], local_batch=local_batch,
                                   process_index=process_index, process_count=process_count)
    records = lambda k, working: _cached(data_config, terms[k][0].records(split), working,
                                         shard_sizes[k])
  if view == "text":
    texts = tuple(records(k, text_views.Captions(source.to_example))
                  for k, (source, _) in enumerate(terms))
    return _map(ds, text_views.LoadText.from_config(texts, data_config, seeds[0]))
  size = int(data_config["image_size"])
  if view in image_views.IMAGE_VIEWS:
    crop = image_views.needs_crop_source(view, data_config)
    loaded = tuple(records(k, _Working(source.to_example, size, crop))
                   for k, (source, _) in enumerate(terms))
    return _map(ds, image_views.loader(view, data_config, loaded, seeds[0]))
  augmenter = _augment(data_config)
  loaded = tuple(records(k, _Working(source.to_example, size, augmenter.chain.crop))
                 for k, (source, _) in enumerate(terms))
  return _map(ds, _LoadBatch(loaded, augmenter, seeds[0]))


def _map(ds: grain.MapDataset | grain.IterDataset, loader: Any) -> Any:
  """``loader(batch index, batch)`` over the batches: lazily per index for a MapDataset (the
  iterator's read threads run it), in parallel threads over a stream."""
  if isinstance(ds, grain.IterDataset):
    return streaming.ParallelMap(ds, loader, DEFAULT_READ_THREADS)
  return ds.map_with_index(loader)


def _streamed(terms: Sequence[tuple[Any, float]]) -> bool:
  """Whether the mixture's sources are streamed (all of them) or random-access (all)."""
  kinds = {isinstance(source, streaming.StreamSource) for source, _ in terms}
  if len(kinds) > 1:
    raise ValueError("data.name mixes streamed sources (webdataset_stream) with random-access "
                     "ones; their weights mean different things (a share of samples against a "
                     "per-example upsampling), so use one kind: stream them all, or prepare "
                     "the shards with webdataset(urls=...).")
  return kinds.pop()


def build_train_iterator(data_config: Any, *, batch_size: int, seed: int,
                         process_index: int = 0, process_count: int = 1,
                         read_threads: int = DEFAULT_READ_THREADS,
                         view: str | None = None) -> grain.DatasetIterator:
  """An infinite, shuffled, augmented iterator of this host's share of the training batches.

  ``batch_size`` is global; this host yields ``batch_size // process_count`` examples per
  batch from records ``process_index::process_count`` of each source's split. Epochs flow
  into each other, so no partial batch ever occurs. ``data.worker_count > 0`` adds grain
  worker processes (spawned; each keeps its own cache) for machines with spare cores; the
  batches are the same as without them. ``view`` is what the task asks a batch to be
  (``VIEWS``; the training loop passes ``Task.data_view``); None takes the data's own kind.
  """
  ds = build_train_dataset(data_config, batch_size=batch_size, seed=seed,
                           process_index=process_index, process_count=process_count, view=view)
  workers = int(data_value(data_config, "worker_count"))
  if isinstance(ds, grain.IterDataset):
    # A streamed source reads its next shard window ahead and decodes in threads; the train
    # step is dispatched asynchronously, so the next batch is built while the device works.
    if workers > 0:
      raise ValueError(f"data.worker_count={workers}: a streamed source (webdataset_stream) "
                       "decodes in threads and cannot be split over worker processes; set "
                       "data.worker_count=0.")
    return iter(ds)
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)
  iter_ds = ds.to_iter_dataset(read_options=options)
  if workers > 0:  # Python-bound augmentation scales with processes, not threads.
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                               per_worker_buffer_size=2))
  return iter(iter_ds)


def load_eval_split(data_config: Any, split: str | None = None, view: str | None = None, *,
                    lazy_images: bool = False) -> dict[str, Any]:
  """A whole split of the first source as numpy, unaugmented and in stored order.

  Returns ``image`` float32 [N, H, W, 3] (normalised like training), ``text`` int32 [M, L],
  ``label`` int32 [N] (-1 without labels), ``captions`` list[str] (M), ``class_names``
  list[str]. M = N (each image's first caption) unless images have several real captions;
  then all are kept and ``text_image_ids`` int32 [M] names each caption's image.
  Parallel text returns ``source`` / ``target`` / ``sources`` / ``references`` instead; the
  ``text`` view returns ``text``, ``label``, ``captions`` and ``class_names``, no images; the
  image-only views (``labelled_image``, ``two_views``) ``image``, ``label``, ``class_names``;
  text records (mmie/data/record_views.py) their view's arrays and strings. ``lazy_images``: ``image`` is a ``LazyImages`` column, decoded only where indexed (what
  evaluation reads, so that each host decodes only the rows its devices hold).
  """
  split = split or data_value(data_config, "eval_split")
  view = resolve_view(data_config, view)
  if data_kind(data_config) == "text_records":
    return record_views.load_split(data_config, split, view)
  if view == "parallel_text":
    return text_views.load_parallel_split(data_config, split)
  source = sources.source_for(data_config)
  if view == "text":
    return text_views.load_text_split(data_config, source, split)
  # Captions and labels of every row, without decoding an image.
  rows = Records(source.records(split), text_views.Captions(source.to_example), cache=False)
  examples = [e for start in range(0, len(rows), 512)
              for e in rows.get_many(range(start, min(start + 512, len(rows))))]
  mean, std = augment.normalisation(data_config)
  size = int(data_config["image_size"])
  decoded = Records(source.records(split), _Working(source.to_example, size, False), cache=True)
  images = LazyImages(decoded, functools.partial(augment.normalize, mean=mean, std=std),
                      (size, size, 3))
  image = images if lazy_images else np.asarray(images)
  if view in image_views.IMAGE_VIEWS:  # Images and labels only: no captions to tokenise.
    return {"image": image, "label": np.asarray([e["label"] for e in examples], np.int32),
            "class_names": list(source.class_names)}
  all_captions = not source.templated and any(len(e["captions"]) > 1 for e in examples)
  captions, owners = [], []
  for index, example in enumerate(examples):
    kept = example["captions"] if all_captions else example["captions"][:1]
    captions.extend(kept)
    owners.extend([index] * len(kept))
  out = {
      "image": image,
      "text": tokenizer_for(data_config).encode(captions, int(data_config["context_length"])),
      "label": np.asarray([e["label"] for e in examples], np.int32),
      "captions": captions,
      "class_names": list(source.class_names),
  }
  if all_captions:
    out["text_image_ids"] = np.asarray(owners, np.int32)
  return out


def encode_prompts(data_config: Any, class_names: Sequence[str],
                   templates: Sequence[str]) -> np.ndarray:
  """Zero-shot prompts ``template.format(class_name)`` tokenised: int32 [C, T, L]."""
  if not class_names or not templates:
    raise ValueError(f"encode_prompts needs classes and templates, got {len(class_names)} "
                     f"class names and {len(templates)} templates.")
  bad = [t for t in templates if "{}" not in t]
  if bad:
    raise ValueError(f"prompt templates must contain '{{}}' for the class name: {bad}.")
  texts = [t.format(name) for name in class_names for t in templates]
  ids = tokenizer_for(data_config).encode(texts, int(data_config["context_length"]))
  return ids.reshape(len(class_names), len(templates), -1)


__all__ = [  # tokenizer_for, is_parallel_text and VIEWS are re-exported from spec.py.
    "DEFAULT_READ_THREADS", "VIEWS", "build_train_dataset", "build_train_iterator",
    "encode_prompts", "is_parallel_text", "load_eval_split", "resolve_view", "tokenizer_for",
]
