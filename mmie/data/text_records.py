"""Text records: rows of named strings (and numbers) for the text-only tasks.

The language model on English text, the safety classifier, the reward model, DPO and PPO
read rows, not images or sentence pairs. ``data.name`` names a record source::

    sword_text                              # the King James Version, one row per verse
    jsonl(path='~/set.jsonl')               # your own: one JSON object per line

A row is a JSON object. Which fields a task reads is its data view's business
(mmie/data/record_views.py): ``text`` (and ``label``) for the LM and the classifier,
``prompt`` / ``chosen`` / ``rejected`` for preference pairs, ``prompt`` for PPO's rollouts.
On first use a source is prepared once into ``<data_dir>/mmie_sources/<name>-<hash>/``, as
parallel text is (mmie/data/parallel.py): string fields are cleaned (whitespace collapsed);
a row with an empty string field, a string over ``max_chars`` or a repeat of an earlier row
is skipped and counted; a row goes to the split its ``split`` field names ("train" or
"validation"), else to the one a hash of its ``group`` field picks (a Bible chapter, a source
document), so related rows never straddle the split; a byte-level BPE is trained on the
training rows' text fields; and each split is written as array_record. ``data.tokenizer``
(for example a trained language model's ``tokenizer.json``) replaces that BPE, which is how
the reward model, DPO and PPO share their language model's vocabulary.
"""

from __future__ import annotations

import collections
import functools
import json
import os
from collections.abc import Iterable
from typing import Any

from mmie.data import parallel, sources, sword as sword_lib, tokenizer as tokenizer_lib
from mmie.data.schema import data_value
from mmie.registry import Registry

SPLITS = parallel.SPLITS
# Fields that say where a row comes from, never tokenised or cleaned.
META_FIELDS = ("group", "split", "source", "category")

Row = dict[str, Any]


# A record source before preparation: how to read its rows, and the options (the same
# fields as a pair source's).
RecordPlan = parallel.PairPlan


# A prepared record source: random-access rows per split and its tokenizer.
RecordSource = parallel.ParallelSource


def _check_options(name: str, validation_fraction: float, max_chars: int,
                   vocab_size: int) -> None:
  # Rows may carry their own split, so a source may hold out nothing by hash.
  parallel.check_options(name, validation_fraction, max_chars, vocab_size,
                         allow_no_validation=True)


def _read_jsonl(path: str) -> Iterable[Row]:
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not a JSON object ({e.msg}).") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object, got "
                         f"{type(row).__name__}.")
      split = row.get("split")
      if split is not None and split not in SPLITS:
        raise ValueError(f"{path}:{line_no}: split={split!r} must be one of {list(SPLITS)}.")
      row.setdefault("group", f"line {line_no}")
      yield row


def jsonl(path: str, validation_fraction: float = 0.1, max_chars: int = 4000,
          vocab_size: int = 4096) -> RecordPlan:
  """Your own rows: a ``.jsonl`` file, one JSON object per line (see the module doc)."""
  _check_options("jsonl", validation_fraction, max_chars, vocab_size)
  return parallel.file_plan("jsonl", path, _read_jsonl, "a .jsonl file with one JSON object "
                            "per line (fields such as 'text', 'label', 'prompt')",
                            validation_fraction, max_chars, vocab_size)


def _read_verses(path: str) -> Iterable[Row]:
  for verse in sword_lib.read_module(path):
    if verse.text:
      yield {"text": verse.text, "group": verse.chapter}


def sword_text(module: str = "en", validation_fraction: float = 0.02, max_chars: int = 600,
               vocab_size: int = 4096) -> RecordPlan:
  """The verses of a SWORD Bible module (a language in ``parallel.SWORD_MODULES`` or a zText
  module path), one ``{"text", "group": chapter}`` row each: whole chapters are held out.

  The default is Debian's King James Version (``apt-get install sword-text-kjv``): real,
  public-domain English with plenty of violence for a harm principle to find.
  """
  _check_options("sword_text", validation_fraction, max_chars, vocab_size)
  path = os.path.abspath(os.path.expanduser(parallel.SWORD_MODULES.get(module, module)))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"sword_text: module {module!r} not found at {path}. Install the "
                            "King James Version with `apt-get install sword-text-kjv`, or pass "
                            "a zText module path.")
  return RecordPlan("sword_text", functools.partial(_read_verses, path), ("sword_text", path),
                    validation_fraction, max_chars, vocab_size)


RECORD_SOURCES: Registry[RecordPlan] = Registry("text record source")
RECORD_SOURCES.register("jsonl", jsonl)
RECORD_SOURCES.register("sword_text", sword_text)


def _clean(row: Row) -> Row:
  return {k: (" ".join(v.split()) if isinstance(v, str) and k not in META_FIELDS else v)
          for k, v in row.items()}


def _skip_reason(row: Row, max_chars: int, seen: set[str]) -> str:
  texts = [v for k, v in row.items() if isinstance(v, str) and k not in META_FIELDS]
  if not texts or any(not t for t in texts):
    return "empty"
  if max(len(t) for t in texts) > max_chars:
    return "over_long"
  return "duplicate" if _content_key(row) in seen else ""


def _content_key(row: Row) -> str:
  return json.dumps({k: v for k, v in row.items() if k not in META_FIELDS}, sort_keys=True)


def prepare(plan: RecordPlan, out_dir: str) -> dict[str, Any]:
  """Checks, splits and tokenizes ``plan``'s rows into ``out_dir``; returns the report.

  Reuses ``out_dir`` when a previous preparation completed there.
  """
  report_path = os.path.join(out_dir, parallel.REPORT_FILE)
  if os.path.exists(report_path):
    with open(report_path, encoding="utf-8") as f:
      return json.load(f)
  counts: collections.Counter[str] = collections.Counter()
  skipped: dict[str, list[str]] = collections.defaultdict(list)
  splits: dict[str, list[Row]] = {s: [] for s in SPLITS}
  seen: set[str] = set()
  for index, row in enumerate(plan.read()):
    row = _clean(row)
    reason = _skip_reason(row, plan.max_chars, seen)
    if reason:
      counts[reason] += 1
      if len(skipped[reason]) < parallel.LISTED_PER_REASON:
        skipped[reason].append(f"row {index} (group {row.get('group')}): {str(row)[:80]}")
      continue
    seen.add(_content_key(row))
    split = row.get("split") or ("validation" if sources.group_bucket(str(row["group"]))
                                 < plan.validation_fraction else "train")
    splits[split].append(row)
  counts.update({f"kept_{s}": len(rows) for s, rows in splits.items()})
  if not splits["train"]:
    raise ValueError(f"{plan.name}: preparation left no training rows (counts: "
                     f"{dict(counts)}); check the file and its 'split' fields.")
  texts = [v for r in splits["train"] for k, v in r.items()
           if isinstance(v, str) and k not in META_FIELDS]
  return parallel.write_prepared(out_dir, plan.name, splits, texts, plan.vocab_size, counts,
                                 skipped)


@functools.lru_cache(maxsize=8)
def _build(term: str, data_dir: str) -> RecordSource:
  plan = RECORD_SOURCES.build(term)
  out_dir = parallel.prepared_dir(plan, data_dir)
  counts = prepare(plan, out_dir)["counts"]
  print(f"Text records {term}: {counts['kept_train']} training and "
        f"{counts['kept_validation']} validation rows in {out_dir}.", flush=True)
  return RecordSource(plan.name, out_dir, os.path.join(out_dir, parallel.TOKENIZER_FILE))


def sources_for(data_config: Any) -> list[tuple[RecordSource, float]]:
  """Every (record source, weight) of ``data_config.name``, prepared on first use."""
  data_dir = sources.resolve_data_dir(data_config)
  spec = data_value(data_config, "name")
  return [(_build(term, data_dir), weight) for term, weight in sources.parse_mixture(spec)]
