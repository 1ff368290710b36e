"""The emoji TFDS builder reads back exactly what data/emoji/ holds, split by caption."""

from __future__ import annotations

import collections
import os
import shutil

import numpy as np

from mmie.data import emoji


def test_counts_match_metadata(data_dir, raw_emoji):
  _, rows = raw_emoji
  builder = emoji.prepare(data_dir)
  expected = collections.Counter(r["split"] for r in rows)
  assert {s: builder.info.splits[s].num_examples for s in ("train", "validation")} == expected
  assert len(rows) == 1906  # 1,911 base emoji minus the 5 'Component' swatches.
  assert 0.08 < expected["validation"] / len(rows) < 0.12


def test_splits_are_disjoint_by_caption_and_name(data_dir):
  builder = emoji.prepare(data_dir)
  seen = {}
  for split in ("train", "validation"):
    src = builder.as_data_source(split)
    seen[split] = [src[i] for i in range(len(src))]
  for key in ("caption", "name"):
    train = {r[key] for r in seen["train"]}
    validation = {r[key] for r in seen["validation"]}
    assert not train & validation, key
  categories = {r["category"] for r in seen["validation"]}
  assert categories == set(range(len(emoji.CATEGORIES)))  # Stratified: every category.


def test_records_round_trip_images_and_labels_exactly(data_dir, raw_emoji):
  images, rows = raw_emoji
  by_key = {r["key"]: (images[i], r) for i, r in enumerate(rows)}
  src = emoji.prepare(data_dir).as_data_source("validation")
  for i in range(len(src)):
    record = src[i]
    image, row = by_key[record["key"].decode()]
    assert record["image"].dtype == np.uint8 and record["image"].shape == (32, 32, 3)
    np.testing.assert_array_equal(record["image"], image)  # PNG is lossless.
    assert record["caption"].decode() == row["caption"] == row["name"].lower()
    assert emoji.CATEGORIES[record["category"]] == row["category"]
    assert row["split"] == "validation"


def test_prepare_is_idempotent(data_dir):
  before = emoji.prepare(data_dir)
  files = sorted(os.listdir(before.data_dir))
  mtimes = [os.path.getmtime(os.path.join(before.data_dir, f)) for f in files]
  after = emoji.prepare(data_dir)
  assert sorted(os.listdir(after.data_dir)) == files
  assert [os.path.getmtime(os.path.join(after.data_dir, f)) for f in files] == mtimes


def test_changed_source_is_regenerated(tmp_path, raw_emoji):
  images, rows = raw_emoji
  source = tmp_path / "emoji"
  shutil.copytree(emoji.DEFAULT_SOURCE_DIR, source)
  assert emoji.prepare(str(tmp_path / "tfds"), str(source)).info.splits["train"].num_examples \
      == sum(r["split"] == "train" for r in rows)
  keep = [i for i, r in enumerate(rows) if r["split"] == "validation" or i % 2]
  np.savez_compressed(source / "images.npz", images=images[keep])
  with open(source / "metadata.jsonl", "w", encoding="utf-8") as f:
    f.writelines(__import__("json").dumps(rows[i]) + "\n" for i in keep)
  rebuilt = emoji.prepare(str(tmp_path / "tfds"), str(source))
  assert rebuilt.info.splits["train"].num_examples == sum(rows[i]["split"] == "train" for i in keep)
