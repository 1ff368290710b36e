"""Parallel text for translation: sources of sentence pairs, prepared into array_record.

``data.name`` names a pair source by call-string, like the image-text sources::

    sword                                   # KJV -> Reina-Valera 1909, 31k verse pairs
    sword(source='es', target='en')         # the other direction
    pairs(path='~/corpus.tsv')              # your own: source<TAB>target[<TAB>group] lines
    pairs(path='~/corpus.jsonl')            # or {"source": ..., "target": ..., "group": ...}

On first use a source is prepared once into ``<data_dir>/mmie_sources/<name>-<hash>/``:
pairs are cleaned (whitespace collapsed) and checked (an empty side, a side over
``max_chars`` characters, or a repeated source sentence is skipped and counted), split into
train / validation by a hash of each pair's group (a Bible chapter, or the group column) so
that related sentences never straddle the split, a case-preserving byte-level BPE is trained
on both sides of the training pairs (one joint vocabulary, as for tied embeddings), and each
split is written as an array_record file of JSON records ``{"source", "target", "group"}``.
``report.json`` holds the counts and the first skipped pairs of each reason. The directory
appears atomically (written aside, then renamed), so an interrupted preparation is redone,
never half-read.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mmie.data import sources, sword as sword_lib, tokenizer as tokenizer_lib
from mmie.data.schema import data_value
from mmie.registry import Registry

SWORD_MODULES = {  # Debian: apt-get install sword-text-kjv sword-text-sparv
    "en": os.path.join(sword_lib.SWORD_ROOT, "modules", "texts", "ztext", "engKJV2006eb"),
    "es": os.path.join(sword_lib.SWORD_ROOT, "modules", "texts", "ztext", "spaRV1909eb"),
}
REPORT_FILE = "report.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "validation")
LISTED_PER_REASON = 20

Pair = tuple[str, str, str]  # (group, source text, target text)


@dataclasses.dataclass(frozen=True)
class PairPlan:
  """A text source before preparation: how to read its items (sentence pairs here; rows for
  text records, mmie/data/text_records.py), and the preparation options."""

  name: str
  read: Callable[[], Iterable[Any]]
  identity: tuple[Any, ...]  # What the prepared directory's hash is taken over.
  validation_fraction: float
  max_chars: int
  vocab_size: int


@dataclasses.dataclass(frozen=True)
class ParallelSource:
  """A prepared text source (pairs here; text records too, mmie/data/text_records.py):
  random-access JSON records per split and its tokenizer."""

  name: str
  path: str
  tokenizer_path: str

  @property
  def splits(self) -> tuple[str, ...]:
    return SPLITS

  def records(self, split: str) -> Sequence[dict[str, str]]:
    """The split's records as dicts (pairs: ``{"source", "target", "group"}``), random
    access."""
    if split not in SPLITS:
      raise ValueError(f"Data source {self.name!r} has no split {split!r}; it has "
                       f"{list(SPLITS)}.")
    return JsonRecords(os.path.join(self.path, f"{split}.array_record"))


class JsonRecords(Sequence):
  """JSON records of an array_record file (grain's random-access reader underneath)."""

  def __init__(self, path: str):
    import grain  # pylint: disable=g-import-not-at-top

    self.path = path
    self._source = grain.sources.ArrayRecordDataSource([path])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, str]:  # type: ignore[override]
    return json.loads(self._source[index])

  def get_many(self, indices: Sequence[int]) -> list[dict[str, str]]:
    """Records at ``indices`` in one batched read (the pipeline's ``_Records`` protocol)."""
    return [json.loads(r) for r in self._source.__getitems__(list(indices))]


def check_options(name: str, validation_fraction: float, max_chars: int, vocab_size: int, *,
                  allow_no_validation: bool = False) -> None:
  """The preparation options of a text source, each checked with what is wrong."""
  low = 0.0 <= validation_fraction if allow_no_validation else 0.0 < validation_fraction
  if not (low and validation_fraction < 1.0):
    interval = "[0, 1)" if allow_no_validation else "(0, 1)"
    raise ValueError(f"{name}: validation_fraction={validation_fraction} must be in "
                     f"{interval}.")
  if max_chars < 1:
    raise ValueError(f"{name}: max_chars={max_chars} must be >= 1.")
  tokenizer_lib.check_vocab_size(vocab_size)


def sword(source: str = "en", target: str = "es", validation_fraction: float = 0.02,
          max_chars: int = 600, vocab_size: int = 8000) -> PairPlan:
  """Verse pairs of two SWORD Bible modules (a language in SWORD_MODULES or a module path).

  The default pair is Debian's King James Version and Reina-Valera 1909 (public domain);
  whole chapters go to validation, so no verse's neighbours are trained on.
  """
  check_options("sword", validation_fraction, max_chars, vocab_size)
  paths = [os.path.abspath(os.path.expanduser(SWORD_MODULES.get(side, side)))
           for side in (source, target)]
  for side, path in zip((source, target), paths):
    if not os.path.isdir(path):
      known = ", ".join(f"{k}={v}" for k, v in SWORD_MODULES.items())
      raise FileNotFoundError(
          f"sword: module {side!r} not found at {path}. Install the defaults with `apt-get "
          f"install sword-text-kjv sword-text-sparv` ({known}), or pass a zText module path.")
  return PairPlan("sword", functools.partial(sword_lib.parallel_verses, *paths),
                  ("sword", *paths), validation_fraction, max_chars, vocab_size)


def _read_pair_file(path: str) -> Iterable[Pair]:
  """``.tsv`` (source, target[, group]) or ``.jsonl`` ({"source", "target"[, "group"]}) rows.

  A row without a group is its own group. Malformed rows are reported, not skipped silently.
  """
  with open(path, encoding="utf-8", newline="") as f:
    if path.endswith(".jsonl"):
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          yield str(row.get("group", line_no)), str(row["source"]), str(row["target"])
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
          raise ValueError(f"{path}:{line_no}: expected a JSON object with 'source' and "
                           f"'target' strings ({e!r}).") from None
    else:
      for line_no, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
        if not row or not "".join(row).strip():
          continue
        if len(row) not in (2, 3):
          raise ValueError(f"{path}:{line_no}: expected 2 or 3 tab-separated columns (source, "
                           f"target[, group]), got {len(row)}.")
        yield (row[2] if len(row) == 3 else str(line_no)), row[0], row[1]


def pairs(path: str, validation_fraction: float = 0.02, max_chars: int = 600,
          vocab_size: int = 8000) -> PairPlan:
  """Your own sentence pairs: a ``.tsv`` or ``.jsonl`` file (see ``_read_pair_file``)."""
  check_options("pairs", validation_fraction, max_chars, vocab_size)
  return file_plan("pairs", path, _read_pair_file, "a .tsv (source<TAB>target[<TAB>group]) or"
                   " .jsonl file of sentence pairs", validation_fraction, max_chars, vocab_size)


def file_plan(name: str, path: str, read: Callable[[str], Iterable[Any]], expected: str,
              validation_fraction: float, max_chars: int, vocab_size: int) -> PairPlan:
  """The plan of a source that is one user file, identified by its path, size and mtime (an
  edited file is prepared again); a missing file says what was ``expected``."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{name}: {path} not found; expected {expected}.")
  stat = os.stat(path)
  return PairPlan(name, functools.partial(read, path),
                  (name, path, stat.st_size, stat.st_mtime_ns), validation_fraction,
                  max_chars, vocab_size)


PAIR_SOURCES: Registry[PairPlan] = Registry("parallel text source")
PAIR_SOURCES.register("sword", sword)
PAIR_SOURCES.register("pairs", pairs)


def _clean(text: str) -> str:
  return " ".join(text.split())


def write_json_records(path: str, rows: Sequence[dict[str, Any]]) -> None:
  """``rows`` as one array_record file of JSON records (read back by ``JsonRecords``)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for row in rows:
    writer.write(json.dumps(row, ensure_ascii=False).encode("utf-8"))
  writer.close()


def prepare(plan: PairPlan, out_dir: str) -> dict[str, Any]:
  """Checks, splits and tokenizes ``plan``'s pairs into ``out_dir``; returns the report.

  Reuses ``out_dir`` when a previous preparation completed there.
  """
  report_path = os.path.join(out_dir, REPORT_FILE)
  if os.path.exists(report_path):
    with open(report_path, encoding="utf-8") as f:
      return json.load(f)
  counts: collections.Counter[str] = collections.Counter()
  skipped: dict[str, list[str]] = collections.defaultdict(list)
  splits: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
  seen: set[str] = set()
  for index, (group, source, target) in enumerate(plan.read()):
    source, target = _clean(source), _clean(target)
    reason = ("empty" if not source or not target else
              "over_long" if max(len(source), len(target)) > plan.max_chars else
              "duplicate" if source in seen else "")
    if reason:
      counts[reason] += 1
      if len(skipped[reason]) < LISTED_PER_REASON:
        skipped[reason].append(f"pair {index} (group {group}): {source[:80]!r}")
      continue
    seen.add(source)
    split = "validation" if sources.group_bucket(group) < plan.validation_fraction else "train"
    splits[split].append({"source": source, "target": target, "group": group})
  counts.update({f"kept_{s}": len(rows) for s, rows in splits.items()})
  if not splits["train"] or not splits["validation"]:
    raise ValueError(f"{plan.name}: preparation left {counts['kept_train']} training and "
                     f"{counts['kept_validation']} validation pairs (skipped: "
                     f"{dict((k, v) for k, v in counts.items() if not k.startswith('kept'))});"
                     " both splits need at least one. More data or another "
                     "validation_fraction?")
  texts = [r[side] for r in splits["train"] for side in ("source", "target")]
  return write_prepared(out_dir, plan.name, splits, texts, plan.vocab_size, counts, skipped)


def write_prepared(out_dir: str, name: str, splits: dict[str, list[dict[str, Any]]],
                   texts: Sequence[str], vocab_size: int, counts: Any,
                   skipped: dict[str, list[str]]) -> dict[str, Any]:
  """Writes a prepared text source into ``out_dir`` atomically and returns its report.

  A case-preserving byte-level BPE of ``vocab_size`` is trained on ``texts`` (the training
  split's), each split becomes ``<split>.array_record`` and ``report.json`` holds the
  counts. The directory is written aside and renamed, so an interrupted preparation is
  redone, never half-read.
  """
  work = f"{out_dir.rstrip(os.sep)}.tmp-{os.getpid()}"
  shutil.rmtree(work, ignore_errors=True)
  os.makedirs(work)
  tokenizer = tokenizer_lib.train_bpe(texts, vocab_size, lowercase=False)
  tokenizer.save(os.path.join(work, TOKENIZER_FILE))
  for split, rows in splits.items():
    write_json_records(os.path.join(work, f"{split}.array_record"), rows)
  report = {"source": name, "counts": dict(counts), "skipped": dict(skipped),
            "vocab_size": tokenizer.vocab_size}
  with open(os.path.join(work, REPORT_FILE), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1, ensure_ascii=False)
  os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
  try:
    os.replace(work, out_dir)
  except OSError:  # Another process (host) finished the same preparation first.
    shutil.rmtree(work, ignore_errors=True)
  return report


@functools.lru_cache(maxsize=8)
def prepared_dir(plan: PairPlan, data_dir: str) -> str:
  """Where ``plan`` is prepared: one directory per source identity and options."""
  digest = hashlib.sha256(repr((plan.identity, plan.validation_fraction, plan.max_chars,
                                plan.vocab_size)).encode()).hexdigest()[:12]
  return os.path.join(data_dir, "mmie_sources", f"{plan.name}-{digest}")


def _build(term: str, data_dir: str) -> ParallelSource:
  plan = PAIR_SOURCES.build(term)
  out_dir = prepared_dir(plan, data_dir)
  report = prepare(plan, out_dir)
  counts = report["counts"]
  print(f"Parallel text {term}: {counts['kept_train']} training and "
        f"{counts['kept_validation']} validation pairs in {out_dir}.", flush=True)
  return ParallelSource(plan.name, out_dir, os.path.join(out_dir, TOKENIZER_FILE))


def sources_for(data_config: Any) -> list[tuple[ParallelSource, float]]:
  """Every (pair source, weight) of ``data_config.name``, prepared on first use."""
  data_dir = sources.resolve_data_dir(data_config)
  spec = data_value(data_config, "name")
  return [(_build(term, data_dir), weight) for term, weight in sources.parse_mixture(spec)]
