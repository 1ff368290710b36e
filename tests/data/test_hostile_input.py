"""Hostile input to data preparation: a captions file naming paths outside its folder, and a
work-unit chunk file that would run code if it were unpickled.

An audit hook records every file the process opens while the folder is prepared, so the tests
check that nothing outside the folder is read, not only that it is not kept.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from mmie.data import prepare, readers, validate
from tests.hostile import pickled_payload

_OPENED: list[str] | None = None  # Paths opened while recording; None: not recording.


def _audit(event: str, args: tuple) -> None:
  if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
    _OPENED.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # Audit hooks cannot be removed; it records only inside _recording.


def _save(path, seed: int) -> None:
  pixels = np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)


@pytest.fixture
def hostile_folder(tmp_path):
  """Three good images and four rows that point outside the folder, one per route out."""
  secret_dir = tmp_path / "secret"
  secret_dir.mkdir()
  secret = secret_dir / "private.png"
  _save(secret, 99)
  folder = tmp_path / "data"
  folder.mkdir()
  rows = []
  for i in range(3):
    _save(folder / f"good{i}.png", i)
    rows.append({"file": f"good{i}.png", "caption": f"good picture {i}"})
  os.symlink(folder / "good0.png", folder / "alias.png")  # A link that stays inside: kept.
  os.symlink(secret, folder / "link_out.png")
  os.mkdir(folder / "sub")
  os.symlink(secret_dir, folder / "sub" / "escape")  # A linked directory on the way out.
  rows += [{"file": "alias.png", "caption": "the first good picture again, by a link"},
           {"file": "../secret/private.png", "caption": "dot-dot"},
           {"file": str(secret), "caption": "absolute"},
           {"file": "link_out.png", "caption": "symlink to a file outside"},
           {"file": "sub/escape/private.png", "caption": "through a linked directory"}]
  with open(folder / "captions.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(folder), str(secret)


def test_paths_outside_the_folder_are_reported_and_never_opened(hostile_folder, tmp_path):
  global _OPENED
  folder, secret = hostile_folder
  _OPENED = []
  try:
    report = prepare.prepare(readers.FolderReader(folder), str(tmp_path / "out"),
                             limits=validate.Limits(max_size=0), validation_fraction=0.0,
                             workers=1)
    opened = list(_OPENED)
  finally:
    _OPENED = None
  counts = report["counts"]
  assert counts["outside_folder"] == 4, report["skipped"]
  # alias.png has good0's pixels: kept as read, then dropped as its duplicate.
  assert (counts["kept"], counts["duplicate"], counts["corrupt_image"]) == (3, 1, 0)
  listed = "\n".join(report["skipped"]["outside_folder"])
  for name in ("../secret/private.png", secret, "link_out.png", "sub/escape/private.png"):
    assert name in listed
  assert secret not in opened, "a file outside the folder was opened"
  assert any(p.startswith(os.path.realpath(folder)) for p in opened)  # The hook does record.



def test_a_pickled_chunk_file_is_refused_not_run(tmp_path):
  marker = tmp_path / "code_ran"
  chunk = tmp_path / "unit-000000-deadbeef.msgpack"
  chunk.write_bytes(pickled_payload(marker))
  with pytest.raises(ValueError, match="not a chunk file of mmie.data.prepare"):
    validate.read_chunk(str(chunk))
  assert not marker.exists()


def test_chunk_files_round_trip_records_with_numpy_labels(tmp_path):
  """Chunks are msgpack: bytes, text and numbers survive; an IDX label (numpy) becomes int."""
  item = readers.RawItem(key="k", origin="o", image=np.zeros((4, 4), np.uint8), captions=("a",),
                         label=np.int64(3))

  class OneItem:
    def read(self, unit):
      del unit
      yield item

  path = str(tmp_path / "chunk.msgpack")
  validate.process_unit(OneItem(), "u", validate.Limits(max_size=0), path)
  [record] = validate.read_chunk(path)["records"]
  assert record["label"] == 3 and type(record["label"]) is int
  assert record["captions"] == ["a"] and isinstance(record["image"], bytes)
