"""Data sources: the config's ``data.name`` -> prepared random-access splits of examples.

A source is anything that can be prepared into TFDS array_record shards and read back as
one common example: ``{"image": uint8 [H, W, C] or encoded bytes, "captions": list[str],
"label": int}`` (``label`` is -1 when the source has none). The pipeline only sees this
form, so a new source is one registered factory; it never touches the pipeline.

``data.name`` is a call-string, or a weighted mixture of them joined by ``+``::

    emoji
    folder(path='~/pets', captions='captions.csv')
    webdataset(urls='/data/cc3m/{00000..00331}.tar')
    webdataset_stream(urls='gs://bucket/laion/{00000..41407}.tar')   # streamed, see streaming.py
    fashion_mnist
    tfds(name='coco_captions', image_key='image', text_key='captions/text')
    emoji + folder(path='~/pets') * 3     # pets examples seen 3x as often, per example

User sources (folder, webdataset, IDX sets) are prepared on first use into
``<data_dir>/mmie_sources/<name>-<hash>/`` by mmie/data/prepare.py (or ahead of time with
``python -m mmie.data.prepare``, then read with ``prepared(path=DIR)``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mmie.data import readers
from mmie.data.schema import data_value
from mmie.registry import Registry, parse_call

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "mmie", "tensorflow_datasets")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist.
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LABEL_TEMPLATES = ("a photo of a {}", "a picture of a {}", "a {}", "{}")

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Source:
  """A prepared source: its splits, how a stored record becomes an Example, its classes."""

  name: str
  split_sources: Callable[[str], Sequence[Mapping[str, Any]]]  # split -> random-access records
  splits: tuple[str, ...]
  to_example: Callable[[Mapping[str, Any]], Example]
  class_names: tuple[str, ...]  # Human-readable; empty when the source has no labels.
  tokenizer_path: str  # The tokenizer that ships with (or was trained for) the source.
  templated: bool = False  # Captions are class-name templates (evaluate with the first only).

  def records(self, split: str) -> Sequence[Mapping[str, Any]]:
    """The random-access records of ``split``; an unknown split names the ones that exist."""
    if split not in self.splits:
      raise ValueError(f"Data source {self.name!r} has no split {split!r}; "
                       f"it has {list(self.splits)}.")
    return self.split_sources(split)


SOURCES: Registry[Source] = Registry("data source")


def group_bucket(group: str) -> float:
  """A uniform number in [0, 1) from a group name, for splitting: a record's split depends on
  its group alone, never on the rest of the data, so adding data never moves old records."""
  return int(hashlib.sha256(group.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def resolve_data_dir(data_config: Any) -> str:
  """Where prepared TFDS data lives: config.data.data_dir, else $MMIE_DATA_DIR, else ~/.cache."""
  data_dir = data_value(data_config, "data_dir") or os.environ.get("MMIE_DATA_DIR", "")
  return os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))


def parse_mixture(spec: str) -> list[tuple[str, float]]:
  """``"a + b(x=1) * 3"`` -> ``[("a", 1.0), ("b(x=1)", 3.0)]``; each term is a call-string."""
  try:
    tree = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"config.data.name {spec!r} does not parse ({e.msg}); expected a source "
                     "call-string or a mixture such as \"emoji + folder(path='x') * 3\".") from None
  terms, todo = [], [tree]
  while todo:
    node = todo.pop()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
      todo.extend([node.right, node.left])
      continue
    weight = 1.0
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
      if not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, (int, float))
              and node.right.value > 0):
        raise ValueError(f"mixture weight in {spec!r} must be a positive number after '*', "
                         f"got {ast.unparse(node.right)!r}.")
      node, weight = node.left, float(node.right.value)
    if not isinstance(node, (ast.Name, ast.Call)):
      raise ValueError(f"mixture term {ast.unparse(node)!r} in {spec!r} is not a source "
                       f"call-string; known sources: {', '.join(SOURCES)}.")
    terms.append((ast.unparse(node), weight))
  return terms


def _prepared_dir(data_dir: str, name: str, reader: Any, options: Mapping[str, Any]) -> str:
  digest = hashlib.sha256(repr((reader, sorted(options.items()))).encode()).hexdigest()[:12]
  return os.path.join(data_dir, "mmie_sources", f"{name}-{digest}")


def read_prepared(path: str, name: str = "prepared") -> Source:
  """A source over a directory written by mmie.data.prepare."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from mmie.data import prepared  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(os.path.expanduser(path))
  builder = prepared.open_builder(path)
  if not builder.is_prepared():
    raise FileNotFoundError(f"{path} holds no prepared data; run `python -m mmie.data.prepare "
                            f"--source=... --out={path}` first.")
  # Images stay encoded here: the pipeline decodes them at reduced size (JPEG draft mode).
  decoders = {"image": tfds.decode.SkipDecoding()}
  return Source(
      name=name,
      split_sources=functools.cache(lambda split: builder.as_data_source(split, decoders=decoders)),
      splits=tuple(builder.info.splits.keys()),
      to_example=prepared.to_example,
      class_names=tuple(builder.info.metadata.get("class_names", ())),
      tokenizer_path=os.path.join(path, "tokenizer.json"),
      templated=bool(builder.info.metadata.get("templated", False)),
  )


@dataclasses.dataclass(frozen=True)
class Plan:
  """A user source before preparation: its reader and the preparation options."""

  name: str
  reader: Any
  options: tuple[tuple[str, Any], ...]  # validation_fraction, max_size, max_caption_chars, vocab_size


def prepare_plan(plan: Plan, data_dir: str, *, out_dir: str = "", workers: int = 0,
                 keep_work: bool = False) -> dict[str, Any]:
  """Prepares ``plan`` into ``out_dir`` (default: a hashed folder under ``data_dir``)."""
  from mmie.data import prepare as prepare_lib, validate  # pylint: disable=g-import-not-at-top

  options = dict(plan.options)
  limits = validate.Limits(**{k: options.pop(k) for k in ("max_caption_chars", "max_size")
                              if k in options})
  out_dir = out_dir or _prepared_dir(data_dir, plan.name, plan.reader, dict(plan.options))
  return prepare_lib.prepare(plan.reader, out_dir, limits=limits, workers=workers,
                             keep_work=keep_work, **options)


def _plan(name: str, reader: Any, **options: Any) -> Plan:
  return Plan(name, reader, tuple(sorted(options.items())))


def folder(path: str, captions: str = "", validation_fraction: float = 0.1,
           max_size: int = 256, max_caption_chars: int = 1000, vocab_size: int = 1024) -> Plan:
  """Images under ``path`` with a captions.jsonl/.csv/.tsv (file, caption[, label, group])."""
  reader = readers.FolderReader(os.path.abspath(os.path.expanduser(path)), captions)
  return _plan("folder", reader, validation_fraction=validation_fraction, max_size=max_size,
               max_caption_chars=max_caption_chars, vocab_size=vocab_size)


def webdataset(urls: str, validation_fraction: float = 0.01, max_size: int = 256,
               max_caption_chars: int = 1000, vocab_size: int = 1024) -> Plan:
  """img2dataset tar shards (key.jpg + key.txt [+ key.json]); ``urls`` takes {a..b} braces."""
  return _plan("webdataset", readers.WebDatasetReader(os.path.expanduser(urls)),
               validation_fraction=validation_fraction, max_size=max_size,
               max_caption_chars=max_caption_chars, vocab_size=vocab_size)


def idx(path: str, classes: Sequence[str], templates: Sequence[str] = LABEL_TEMPLATES,
        train: tuple[str, str] = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        validation: tuple[str, str] = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        name: str = "idx") -> Plan:
  """Labelled IDX files (MNIST layout); captions are ``template.format(class name)``.

  The official test files become the 'validation' split (the config's eval_split).
  """
  bad = [t for t in templates if "{}" not in t]
  if bad or not templates:
    raise ValueError(f"{name}: templates must be non-empty and each contain '{{}}', got {templates}.")
  reader = readers.LabelledReader(
      os.path.abspath(os.path.expanduser(path)),
      (("train", *train), ("validation", *validation)), tuple(classes), tuple(templates))
  missing = [f for _, i, l in reader.files for f in (i, l)
             if not os.path.exists(os.path.join(reader.path, f))]
  if missing:
    raise FileNotFoundError(f"{name}: {reader.path} lacks {missing}.")
  return _plan(name, reader, validation_fraction=0.0, max_size=0, vocab_size=1024)


def fashion_mnist(path: str = FASHION_MNIST_DIR, templates: Sequence[str] = LABEL_TEMPLATES) -> Plan:
  """Fashion-MNIST from IDX files (default: Debian's `apt-get install dataset-fashion-mnist`)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"fashion_mnist: {path} not found. `apt-get install "
                            "dataset-fashion-mnist`, pass path= to the IDX files, or use "
                            "tfds(name='fashion_mnist', label_key='label').")
  return idx(path, FASHION_MNIST_CLASSES, templates, name="fashion_mnist")


def mnist(path: str, templates: Sequence[str] = LABEL_TEMPLATES) -> Plan:
  """MNIST digits from the four standard IDX files in ``path`` (captions name the digit)."""
  return idx(path, DIGIT_CLASSES, templates, name="mnist")


PLANS: Registry[Plan] = Registry("preparable data source")
for _name, _plan_fn in (("folder", folder), ("webdataset", webdataset), ("idx", idx),
                        ("fashion_mnist", fashion_mnist), ("mnist", mnist)):
  PLANS.register(_name, _plan_fn)


def _user_factory(plan_fn: Callable[..., Plan]) -> Callable[..., Source]:
  """The SOURCES factory of a preparable source: plan, prepare (if needed), read."""

  def factory(*, data_dir: str, **kwargs: Any) -> Source:
    plan = plan_fn(**kwargs)
    return read_prepared(prepare_plan(plan, data_dir)["out_dir"], name=plan.name)

  signature = inspect.signature(plan_fn)
  data_dir = inspect.Parameter("data_dir", inspect.Parameter.KEYWORD_ONLY, annotation=str)
  factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
      parameters=[*signature.parameters.values(), data_dir])
  factory.__doc__ = plan_fn.__doc__
  return factory


def emoji(*, data_dir: str, source_dir: str = "") -> Source:
  """The embedded emoji set (repository data/emoji/), prepared into ``data_dir``."""
  from mmie.data import emoji as emoji_builder  # pylint: disable=g-import-not-at-top

  source_dir = os.path.expanduser(source_dir) if source_dir else emoji_builder.DEFAULT_SOURCE_DIR
  builder = emoji_builder.prepare(data_dir, source_dir)
  names = builder.info.features["category"].names
  return Source(
      name="emoji",
      split_sources=functools.cache(builder.as_data_source),
      splits=tuple(builder.info.splits.keys()),
      to_example=emoji_builder.to_example,
      class_names=tuple(n.lower() for n in names),
      tokenizer_path=os.path.join(source_dir, "tokenizer.json"),
  )


def prepared_source(*, data_dir: str, path: str) -> Source:
  """A directory written by ``python -m mmie.data.prepare --out=path``."""
  del data_dir
  return read_prepared(path)


def tfds_source(*, data_dir: str, name: str, image_key: str = "image", text_key: str = "",
                label_key: str = "", templates: Sequence[str] = LABEL_TEMPLATES,
                manual_dir: str = "", train_split: str = "train",
                eval_split: str = "validation", vocab_size: int = 1024) -> Source:
  """Any TFDS dataset by name; captions from ``text_key`` or label templates.

  See mmie/data/tfds_source.py. Key paths use '/' for nested features ('captions/text').
  """
  from mmie.data import tfds_source as tfds_lib  # pylint: disable=g-import-not-at-top

  return tfds_lib.build(data_dir=data_dir, name=name, image_key=image_key, text_key=text_key,
                        label_key=label_key, templates=templates, manual_dir=manual_dir,
                        train_split=train_split, eval_split=eval_split, vocab_size=vocab_size)


def webdataset_stream(*, data_dir: str, urls: str, validation_urls: str = "",
                      shuffle_shards: int = 4, max_caption_chars: int = 1000,
                      vocab_size: int = 1024, tokenizer_shards: int = 4) -> Any:
  """Webdataset tar shards streamed, never prepared: local paths, ``file://`` or any fsspec
  URL (``gs://``, ``s3://``); for sets too large to prepare. See mmie/data/streaming.py."""
  from mmie.data import streaming, validate  # pylint: disable=g-import-not-at-top

  if shuffle_shards < 1 or tokenizer_shards < 1:
    raise ValueError(f"webdataset_stream: shuffle_shards={shuffle_shards} and tokenizer_shards="
                     f"{tokenizer_shards} must be >= 1.")
  source = streaming.StreamSource(
      "webdataset_stream", urls, validation_urls, shuffle_shards,
      validate.Limits(max_caption_chars=max_caption_chars, max_size=0), vocab_size,
      tokenizer_shards, data_dir)
  source.split_shards  # pylint: disable=pointless-statement  Lists the shards: fails early.
  return source


for _name, _factory in (("emoji", emoji), ("prepared", prepared_source), ("tfds", tfds_source),
                        ("webdataset_stream", webdataset_stream)):
  SOURCES.register(_name, _factory)
for _name in PLANS:
  SOURCES.register(_name, _user_factory(PLANS.get(_name)))


@functools.lru_cache(maxsize=16)
def _build_source(spec: str, data_dir: str) -> Source:
  return SOURCES.build(spec, data_dir=data_dir)


def sources_for(data_config: Any) -> list[tuple[Source, float]]:
  """Every (source, weight) of ``data_config.name``, prepared on first use (cached)."""
  spec = data_value(data_config, "name")
  if not spec:
    raise ValueError("config.data.name is empty; set it to a data source such as 'emoji' "
                     f"(known: {', '.join(SOURCES)}).")
  data_dir = resolve_data_dir(data_config)
  return [(_build_source(term, data_dir), weight) for term, weight in parse_mixture(spec)]


def source_for(data_config: Any) -> Source:
  """The first source of ``data_config.name``: evaluation and the default tokenizer use it."""
  return sources_for(data_config)[0][0]


def prepare_spec(spec: str, out_dir: str, *, workers: int = 0,
                 keep_work: bool = False) -> dict[str, Any]:
  """Prepares one user source call-string into ``out_dir`` (the prepare command's core)."""
  terms = parse_mixture(spec)
  if len(terms) != 1:
    raise ValueError(f"prepare takes one source, got a mixture of {len(terms)}: {spec!r}.")
  if parse_call(terms[0][0]).name not in PLANS:
    raise ValueError(f"{terms[0][0]!r} needs no preparation by this command; it prepares "
                     f"sources of kinds {', '.join(PLANS)} (emoji and tfds prepare themselves).")
  plan = PLANS.build(terms[0][0])
  return prepare_plan(plan, out_dir, out_dir=out_dir, workers=workers, keep_work=keep_work)
