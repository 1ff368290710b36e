"""Every data source by name, image-text and parallel text alike: the one registry that
``data.name`` resolves through.

Sources are registered where they are defined (``sources.SOURCES``: emoji, prepared, tfds
and the preparable ``folder``, ``webdataset``, ``idx``, ``fashion_mnist``, ``mnist``;
``parallel.PAIR_SOURCES``: ``sword``, ``pairs``; ``text_records.RECORD_SOURCES``:
``sword_text``, ``jsonl``); this module assembles them, by explicit
import, into one catalog that says for each name what kind of records it yields and which
registry builds it. A mixture must be of one kind; the data views of mmie/data/spec.py say
which kind each task's batches read.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from mmie.data import parallel, sources, text_records
from mmie.registry import Registry, parse_call
from mmie.schema import suggestion

KINDS = ("image_text", "parallel_text", "text_records")


class Entry(NamedTuple):
  """One catalogued source: the kind of its records and the registry that builds it."""

  kind: str
  registry: Registry[Any]


def _catalog() -> dict[str, Entry]:
  catalog: dict[str, Entry] = {}
  for kind, registry in (("image_text", sources.SOURCES), ("parallel_text", parallel.PAIR_SOURCES),
                         ("text_records", text_records.RECORD_SOURCES)):
    for name in registry:
      if name in catalog:
        raise ValueError(f"data source {name!r} is registered as two kinds.")
      catalog[name] = Entry(kind, registry)
  return catalog


CATALOG: dict[str, Entry] = _catalog()


def lookup(name: str) -> Entry:
  """The catalogued source ``name``; an unknown name lists every source and the closest."""
  if name not in CATALOG:
    raise KeyError(f"unknown data source {name!r}.{suggestion(name, CATALOG)} Known data sources: "
                   f"{', '.join(sorted(CATALOG))}.")
  return CATALOG[name]


def kind_of(spec: str) -> str:
  """The kind of records a ``data.name`` call-string or mixture yields (one kind per mixture)."""
  kinds = {lookup(parse_call(term).name).kind for term, _ in sources.parse_mixture(spec)}
  if len(kinds) > 1:
    named = "; ".join(f"{kind}: " + ", ".join(n for n, e in sorted(CATALOG.items())
                                              if e.kind == kind) for kind in sorted(kinds))
    raise ValueError(f"config.data.name {spec!r} mixes kinds of sources ({named}); use one "
                     "kind.")
  return kinds.pop()
