"""Reads SWORD zText Bible modules (Debian's ``sword-text-*`` packages) as plain verses.

A zText module is three files per testament (``ot``, ``nt``):

* ``.bzs``: per compressed block, ``<uint32 offset, uint32 size, uint32 uncompressed size>``
  into ``.bzz``;
* ``.bzv``: per verse slot of the versification, ``<uint32 block, uint32 offset, uint16
  size>`` into the uncompressed block (size 0: an empty slot);
* ``.bzz``: the zlib-compressed blocks, concatenated.

Every module of one versification has the same slots in the same order (testament
heading, then per book a heading slot, per chapter a heading slot and its verses), so two
translations align verse by verse by slot index: that is how ``parallel_verses`` pairs them,
with no versification table. Text is OSIS or ThML markup; ``clean_markup`` keeps the words
and drops notes, editorial headings, paragraph marks and Strong's numbers.
"""

from __future__ import annotations

import glob
import html
import os
import re
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

SWORD_ROOT = "/usr/share/sword"  # Where Debian's sword-text-* packages install.
TESTAMENTS = ("ot", "nt")

_NOTE = re.compile(r"<note\b[^>]*?(?<!/)>.*?</note>", re.S)
_RF = re.compile(r"<RF>.*?<Rf>", re.S)  # GBF / ThML footnotes.
_TITLE = re.compile(r"<title\b(?![^>]*canonical=\"true\")[^>]*?(?<!/)>.*?</title>", re.S)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
# Starts of chapters and books (their ends, eID=..., sit inside the last verse).
_CHAPTER = re.compile(r"<chapter\b[^>]*\bsID=\"([^\"]+)\"")
_BOOK = re.compile(r"<div\b(?=[^>]*\bsID=)(?=[^>]*\btype=\"book\")[^>]*\bosisID=\"([^\"]+)\"")


class Verse(NamedTuple):
  slot: int  # Index over both testaments' slots: equal slots are the same verse.
  chapter: str  # OSIS id of the enclosing chapter ("Gen.1"); "" before the first one.
  text: str  # Plain text, whitespace collapsed; "" for headings and empty slots.


def clean_markup(raw: str) -> str:
  """OSIS/ThML/GBF verse markup -> plain text (notes and non-canonical titles removed)."""
  text = _TITLE.sub(" ", _RF.sub(" ", _NOTE.sub(" ", raw)))
  text = html.unescape(_TAG.sub("", text)).replace("\u00b6", " ")  # ¶: KJV paragraph marks.
  return _SPACE.sub(" ", text).strip()


def _check_module(path: str) -> None:
  missing = [f"{t}.{ext}" for t in TESTAMENTS for ext in ("bzs", "bzv", "bzz")
             if not os.path.exists(os.path.join(path, f"{t}.{ext}"))]
  if missing:
    raise FileNotFoundError(
        f"{path} is not a SWORD zText module: it lacks {missing}. Debian installs them with "
        f"`apt-get install sword-text-kjv sword-text-sparv` under {SWORD_ROOT}/modules/texts/"
        "ztext/.")


def _testament_slots(path: str, testament: str) -> Iterator[str]:
  """The raw markup of every slot of one testament, in order."""
  def read(ext: str) -> bytes:
    with open(os.path.join(path, f"{testament}.{ext}"), "rb") as f:
      return f.read()

  bzs, bzv, bzz = read("bzs"), read("bzv"), read("bzz")
  if len(bzs) % 12 or len(bzv) % 10:
    raise ValueError(f"{path}/{testament}.bzs/.bzv have sizes {len(bzs)}/{len(bzv)}, not "
                     "multiples of their 12/10-byte entries: the module is truncated.")
  blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs), 12)]
  current, data = -1, b""
  for entry in range(0, len(bzv), 10):
    block, offset, size = struct.unpack_from("<IIH", bzv, entry)
    if size == 0:
      yield ""
      continue
    if block >= len(blocks):
      raise ValueError(f"{path}/{testament}.bzv slot {entry // 10} names block {block}, but "
                       f".bzs has {len(blocks)}: the module is corrupt.")
    if block != current:
      start, length, _ = blocks[block]
      try:
        data = zlib.decompress(bzz[start:start + length])
      except zlib.error as e:
        raise ValueError(f"{path}/{testament}.bzz block {block} does not decompress ({e}): "
                         "the module is corrupt.") from None
      current = block
    yield data[offset:offset + size].decode("utf-8", errors="replace")


def slot_counts(path: str) -> tuple[int, ...]:
  """Number of verse slots per testament (equal for modules of one versification)."""
  _check_module(path)
  return tuple(os.path.getsize(os.path.join(path, f"{t}.bzv")) // 10 for t in TESTAMENTS)


def read_module(path: str) -> list[Verse]:
  """Every slot of the zText module in ``path`` (both testaments), as cleaned verses."""
  _check_module(path)
  verses, chapter, slot = [], "", 0
  for testament in TESTAMENTS:
    for raw in _testament_slots(path, testament):
      marker = _CHAPTER.search(raw) or _BOOK.search(raw)
      if marker:
        chapter = marker.group(1)
      verses.append(Verse(slot, chapter, clean_markup(raw)))
      slot += 1
  return verses


def versification(path: str) -> str:
  """The ``Versification=`` of the module's ``mods.d`` conf file ("KJV" when unstated)."""
  root, name = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(path))))), os.path.basename(os.path.normpath(path))
  for conf in glob.glob(os.path.join(root, "mods.d", "*.conf")):
    with open(conf, encoding="utf-8", errors="replace") as f:
      text = f.read()
    data_path = re.search(r"^DataPath=(.*)$", text, re.M)
    if data_path and os.path.basename(os.path.normpath(data_path.group(1).strip())) == name:
      found = re.search(r"^Versification=(\S+)", text, re.M)
      return found.group(1) if found else "KJV"
  return "KJV"  # SWORD's default when a conf says nothing.


def parallel_verses(source: str, target: str) -> list[tuple[str, str, str]]:
  """``(chapter, source text, target text)`` for every slot where both modules have text."""
  layouts = [(versification(path), slot_counts(path)) for path in (source, target)]
  if layouts[0] != layouts[1]:
    raise ValueError(
        f"{source} {layouts[0]} and {target} {layouts[1]} (versification, slots per "
        "testament) use different versifications, so their verses do not align slot by slot.")
  pairs = []
  for a, b in zip(read_module(source), read_module(target)):
    if a.text and b.text:
      pairs.append((a.chapter, a.text, b.text))
  return pairs
