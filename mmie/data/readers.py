"""Raw readers: enumerate a user's images and captions as ``RawItem``s, nothing validated yet.

A reader splits its input into work units (a range of captions-file rows, one tar shard,
one IDX split) so that ``mmie.data.prepare`` can validate units in parallel and resume
after an interruption. Readers are small frozen dataclasses (hashable, so their repr and
fingerprint identify a preparation) and import neither tfds nor jax.

Formats:

* folder: images plus ``captions.jsonl`` / ``.csv`` / ``.tsv`` with columns ``file``,
  ``caption`` and optional ``label``, ``group``; several rows per file = several captions.
* webdataset: tar shards as img2dataset writes them (``key.jpg|jpeg|png|webp`` +
  ``key.txt`` + optional ``key.json``), read as a stream; shard lists use brace expansion.
* IDX (MNIST / Fashion-MNIST): labelled images whose captions come from prompt templates.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import gzip
import hashlib
import io
import json
import os
import re
import struct
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np

from mmie import paths

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
FILE_COLUMNS = ("file", "file_name", "filename", "image", "path")
CAPTION_COLUMNS = ("caption", "text", "captions")
ROWS_PER_UNIT = 2000
# Skip reasons a reader decides itself (mmie/data/validate.py REASONS lists them all).
OUTSIDE_FOLDER, BAD_ROW = "outside_folder", "bad_captions_row"
BAD_CAPTION = "undecodable_caption"  # A shard's .txt not UTF-8, or its .json not an object.


@dataclasses.dataclass(frozen=True)
class RawItem:
  """One candidate example as read: encoded image bytes (or pixels), captions, label."""

  key: str  # Unique within the source; also the TFDS record key.
  origin: str  # Where it came from, for the report (a path or "shard.tar:key").
  image: bytes | np.ndarray | None  # None: the image file is missing.
  captions: tuple[str, ...]
  label: int = -1
  group: str = ""  # Items sharing a group land in the same split (default: the key).
  split: str = ""  # A split fixed by the source (MNIST's test set); empty: hash the group.
  skip: tuple[str, ...] = ()  # (reason, detail) when the reader refused it (OUTSIDE, BAD_ROW,
  # BAD_CAPTION).


def expand_braces(pattern: str) -> list[str]:
  """``"a{00..02}.tar"`` -> a00.tar a01.tar a02.tar; ``{x,y}`` lists; nested and repeated."""
  match = re.search(r"\{([^{}]*)\}", pattern)
  if not match:
    return [pattern]
  head, tail, body = pattern[:match.start()], pattern[match.end():], match.group(1)
  numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if numeric:
    lo, hi = numeric.groups()
    width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
    options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    options = body.split(",")
  return [p for option in options for p in expand_braces(head + option + tail)]


def _read_file(path: str) -> bytes | None:
  try:
    with open(path, "rb") as f:
      return f.read()
  except (FileNotFoundError, IsADirectoryError):
    return None


def _json_row(line: bytes) -> dict[str, Any] | str:
  """One captions.jsonl line as a row, or why it is not one."""
  try:
    row = json.loads(line.decode("utf-8"))
  except UnicodeDecodeError:
    return "not UTF-8 text"
  except json.JSONDecodeError as e:
    return f"not JSON: {e.msg} at column {e.colno}"
  return row if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"


def _first(row: dict[str, Any], names: Sequence[str]) -> Any:
  for name in names:
    if name in row and row[name] not in (None, ""):
      return row[name]
  return None


@dataclasses.dataclass(frozen=True)
class FolderReader:
  """Images under ``path`` described by a captions file (jsonl, csv or tsv, with a header)."""

  path: str
  captions: str = ""  # File name inside ``path``; empty: the one captions.* that exists.
  rows_per_unit: int = ROWS_PER_UNIT

  def captions_file(self) -> str:
    if self.captions:
      candidate = os.path.join(self.path, self.captions)
      if not os.path.isfile(candidate):
        raise FileNotFoundError(f"folder source: captions file {candidate} does not exist.")
      return candidate
    found = [os.path.join(self.path, f"captions.{ext}") for ext in ("jsonl", "csv", "tsv")]
    found = [f for f in found if os.path.isfile(f)]
    if len(found) != 1:
      raise FileNotFoundError(
          f"folder source {self.path}: expected exactly one of captions.jsonl, captions.csv, "
          f"captions.tsv (found {found or 'none'}); or pass captions='NAME'.")
    return found[0]

  def _rows(self) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``(line number, row)`` per captions row, or ``(line number, why it cannot be read)``."""
    path = self.captions_file()
    with open(path, "rb") as f:
      raw = f.read()
    if path.endswith(".jsonl"):
      for number, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
          yield number, _json_row(line)
      return
    text = raw.decode("utf-8", errors="replace")  # Bad bytes become U+FFFD, flagged per row.
    delimiter = "\t" if path.endswith(".tsv") else ","
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(rows, [])
    for fields in rows:
      if not any(f.strip() for f in fields):
        continue
      if "\ufffd" in "".join(fields):
        yield rows.line_num, "not UTF-8 text"
      elif len(fields) != len(header):
        yield rows.line_num, f"{len(fields)} fields where the header has {len(header)}"
      else:
        yield rows.line_num, dict(zip(header, fields))

  def entries(self) -> tuple[list[tuple[str, list[str], str, str]], tuple[str, ...]]:
    """(file, captions, label name, group) per image in first-seen order, and class names."""
    return _folder_entries(self, os.stat(self.captions_file()).st_mtime_ns)[:2]

  def bad_rows(self) -> list[tuple[int, str]]:
    """``(line number, why)`` of the captions rows that name no usable image."""
    return _folder_entries(self, os.stat(self.captions_file()).st_mtime_ns)[2]

  def _parse(self) -> tuple[list[tuple[str, list[str], str, str]], tuple[str, ...],
                            list[tuple[int, str]]]:
    by_file: dict[str, tuple[list[str], str, str]] = {}
    bad: list[tuple[int, str]] = []
    for number, row in self._rows():
      file = None if isinstance(row, str) else _first(row, FILE_COLUMNS)
      if file is None:
        bad.append((number, row if isinstance(row, str) else
                    f"no file column; expected one of {FILE_COLUMNS}, got {sorted(row)}"))
        continue
      caption = _first(row, CAPTION_COLUMNS)
      captions = caption if isinstance(caption, list) else [caption or ""]
      label = "" if row.get("label") in (None, "") else str(row["label"])
      entry = by_file.setdefault(str(file), ([], label, str(row.get("group") or "")))
      entry[0].extend(str(c) for c in captions)
    classes = tuple(sorted({label for _, label, _ in by_file.values() if label}))
    return [(f, c, l, g) for f, (c, l, g) in by_file.items()], classes, bad

  def units(self) -> list[str]:
    count = len(self.entries()[0])
    step = self.rows_per_unit
    bad = ["bad_rows"] if self.bad_rows() else []
    return [f"rows:{i}:{min(i + step, count)}" for i in range(0, count, step)] + bad

  def read(self, unit: str) -> Iterator[RawItem]:
    if unit == "bad_rows":  # Reported with their line numbers, never fatal.
      name = os.path.basename(self.captions_file())
      for number, why in self.bad_rows():
        yield RawItem(key=f"{name}:{number}", origin=f"{name} line {number}", image=None,
                      captions=(), skip=(BAD_ROW, why))
      return
    _, start, stop = unit.split(":")
    entries, classes = self.entries()
    index = {name: i for i, name in enumerate(classes)}
    for file, captions, label, group in entries[int(start):int(stop)]:
      path = os.path.join(self.path, file)
      # A row may name any path ('../', '/etc/...', a symlink out): only files that resolve
      # inside the folder are opened; the others are skipped and reported, never read.
      real, inside = paths.resolve_inside(self.path, file)
      yield RawItem(key=file, origin=path, image=_read_file(path) if inside else None,
                    captions=tuple(captions), label=index.get(label, -1), group=group,
                    skip=() if inside else (OUTSIDE_FOLDER, f"resolves to {real}, outside "
                                                            f"{self.path}"))

  def class_names(self) -> tuple[str, ...]:
    return self.entries()[1]

  def fingerprint(self) -> str:
    """Changes when the captions file or any image listed in it changes (size or mtime)."""
    digest = hashlib.sha256()
    captions = self.captions_file()
    with open(captions, "rb") as f:
      digest.update(f.read())
    for file, *_ in self.entries()[0]:
      try:
        real, inside = paths.resolve_inside(self.path, file)
        if not inside:
          raise OSError("outside the folder: never looked at")
        stat = os.stat(real)
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
      except OSError:
        digest.update(f"{file}:missing".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _folder_entries(reader: FolderReader, mtime_ns: int):
  """Parses a captions file once per process (each work unit would otherwise re-read it)."""
  del mtime_ns  # Part of the cache key only.
  return reader._parse()  # pylint: disable=protected-access


def read_tar(stream: BinaryIO, shard: str) -> Iterator[RawItem]:
  """The samples of one webdataset shard, read front to back from ``stream`` (no seeking, so
  it may be a network stream); a key's files are grouped while they are adjacent, as tar
  writers (img2dataset, webdataset's ShardWriter) store them."""
  key, files = None, {}
  with tarfile.open(fileobj=stream, mode="r|*") as tar:
    for member in tar:
      if not member.isfile():
        continue
      directory, name = os.path.split(member.name)
      stem, _, ext = name.partition(".")
      member_key = f"{directory}/{stem}" if directory else stem
      if member_key != key:
        if key is not None:
          yield _tar_item(shard, key, files)
        key, files = member_key, {}
      files[ext.lower()] = tar.extractfile(member).read()
  if key is not None:
    yield _tar_item(shard, key, files)


def _tar_item(shard: str, key: str, files: dict[str, bytes]) -> RawItem:
  """One sample; an undecodable caption or metadata file skips it (reported), never the
  rest of the shard."""
  image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
  item = functools.partial(RawItem, key=f"{shard}/{key}", origin=f"{shard}:{key}")
  try:
    meta = json.loads(files["json"]) if "json" in files else {}
    if not isinstance(meta, dict):
      raise ValueError(f"a JSON {type(meta).__name__}, not an object")
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors.
    return item(image=None, captions=(), skip=(BAD_CAPTION, f"{key}.json: {e}"))
  try:
    captions = [files["txt"].decode("utf-8")] if "txt" in files else []
  except UnicodeDecodeError as e:
    return item(image=None, captions=(), skip=(
        BAD_CAPTION, f"{key}.txt: not UTF-8 (byte {e.object[e.start]:#04x} at {e.start})"))
  if not captions and meta.get("caption"):
    captions = [str(meta["caption"])]
  label = meta.get("label", -1)
  return item(image=image, captions=tuple(captions),
              label=int(label) if isinstance(label, int) else -1)


@dataclasses.dataclass(frozen=True)
class WebDatasetReader:
  """img2dataset-style tar shards, each read front to back as a stream (``r|*``)."""

  urls: str  # Brace pattern or glob, e.g. "/data/shards/{00000..00099}.tar".

  def shards(self) -> list[str]:
    paths = []
    for pattern in expand_braces(os.path.expanduser(self.urls)):
      paths.extend(sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern])
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing or not paths:
      raise FileNotFoundError(f"webdataset source {self.urls!r}: shard files missing: "
                              f"{missing[:5] or 'no shard matched'}.")
    return paths

  def units(self) -> list[str]:
    return self.shards()

  def read(self, unit: str) -> Iterator[RawItem]:
    with open(unit, "rb") as f:
      yield from read_tar(f, os.path.basename(unit))

  def class_names(self) -> tuple[str, ...]:
    return ()

  def fingerprint(self) -> str:
    stats = [f"{p}:{os.path.getsize(p)}:{os.stat(p).st_mtime_ns}" for p in self.shards()]
    return hashlib.sha256("\n".join(stats).encode()).hexdigest()


def read_idx(path: str) -> np.ndarray:
  """An IDX file (optionally .gz) as used by MNIST: big-endian dims, then uint8 data."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  zero, dtype, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4].hex()}).")
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape} ({np.prod(shape)} bytes), file has {body.size}.")
  return body.reshape(shape)


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path: str) -> np.ndarray:
  """Each work unit of a split reads the same file: decompress it once per process."""
  return read_idx(path)


@dataclasses.dataclass(frozen=True)
class LabelledReader:
  """Labelled images (IDX files or in-memory arrays) captioned by ``template.format(class)``.

  ``files`` maps split -> (images file, labels file) in ``path``; MNIST's test set becomes
  the 'validation' split. Every template gives one caption, so the pipeline draws a random
  template for each image in each epoch.
  """

  path: str
  files: tuple[tuple[str, str, str], ...]  # (split, images file, labels file)
  classes: tuple[str, ...]
  templates: tuple[str, ...]
  chunk: int = 10000

  def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = next((i, l) for s, i, l in self.files if s == split)
    images = _read_idx_cached(os.path.join(self.path, images_file))
    labels = _read_idx_cached(os.path.join(self.path, labels_file))
    if len(images) != len(labels):
      raise ValueError(f"{self.path}: {len(images)} images but {len(labels)} labels in {split}.")
    return images, labels

  def units(self) -> list[str]:
    out = []
    for split, images_file, _ in self.files:
      with (gzip.open if images_file.endswith(".gz") else open)(
          os.path.join(self.path, images_file), "rb") as f:
        count = struct.unpack(">I", f.read(8)[4:8])[0]
      out.extend(f"{split}:{i}:{min(i + self.chunk, count)}" for i in range(0, count, self.chunk))
    return out

  def read(self, unit: str) -> Iterator[RawItem]:
    split, start, stop = unit.split(":")
    images, labels = self._arrays(split)
    for i in range(int(start), int(stop)):
      name = self.classes[int(labels[i])]
      yield RawItem(key=f"{split}/{i:06d}", origin=f"{split}[{i}]", image=images[i],
                    captions=tuple(t.format(name) for t in self.templates),
                    label=int(labels[i]), split=split)

  def class_names(self) -> tuple[str, ...]:
    return self.classes

  def fingerprint(self) -> str:
    digest = hashlib.sha256(repr((self.classes, self.templates)).encode())
    for _, images_file, labels_file in self.files:
      for name in (images_file, labels_file):
        stat = os.stat(os.path.join(self.path, name))
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
