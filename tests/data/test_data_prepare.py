"""Preparing user sources: every kept example reads back exactly; every bad one is counted."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmie.data import prepare, readers, sources, validate


def png_bytes(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def read_split(out_dir: str, split: str) -> dict[str, dict]:
  """key -> record, read back through the same source the pipeline uses."""
  source = sources.read_prepared(out_dir)
  records = source.records(split)
  return {r["key"].decode(): source.to_example(r) for r in (records[i] for i in range(len(records)))}


def decoded(image: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
  """A folder with real PNG and JPEG files plus one of each kind of bad input."""
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  pixels, rows = {}, []
  for i in range(12):
    name = f"good{i}.png" if i % 3 else f"good{i}.jpg"
    pixels[name] = rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels[name]).save(root / name)
    rows.append({"file": name, "caption": f"picture  number {i} ", "label": "odd" if i % 2 else "even"})
  rows.append({"file": "good1.png", "caption": "another caption for one"})
  (root / "corrupt.png").write_bytes(b"definitely not a png")
  (root / "zero.jpg").write_bytes(b"")
  (root / "truncated.png").write_bytes(png_bytes(pixels["good1.png"])[:60])
  (root / "copy.png").write_bytes((root / "good2.png").read_bytes())
  Image.fromarray(pixels["good4.png"]).save(root / "empty.png")
  Image.fromarray(pixels["good5.png"]).save(root / "long.png")
  rows += [{"file": "corrupt.png", "caption": "c"}, {"file": "zero.jpg", "caption": "z"},
           {"file": "truncated.png", "caption": "t"}, {"file": "missing.png", "caption": "m"},
           {"file": "copy.png", "caption": "a copy"}, {"file": "empty.png", "caption": "  "},
           {"file": "long.png", "caption": "w" * 60}]
  with open(root / "captions.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(root), pixels


@pytest.fixture(scope="module")
def folder_report(user_folder, tmp_path_factory) -> dict:
  path, _ = user_folder
  reader = readers.FolderReader(path, rows_per_unit=5)
  out = str(tmp_path_factory.mktemp("prepared"))
  return prepare.prepare(reader, out, limits=validate.Limits(max_caption_chars=50, max_size=0),
                         validation_fraction=0.25, workers=2)


def test_folder_counts_and_lists_every_skipped_file(folder_report):
  counts = folder_report["counts"]
  assert counts["kept"] == 12
  assert counts["split_train"] + counts["split_validation"] == 12
  assert (counts["corrupt_image"], counts["empty_caption"], counts["overlong_caption"],
          counts["duplicate"]) == (4, 1, 1, 1)
  listed = {reason: " ".join(items) for reason, items in folder_report["skipped"].items()}
  for name in ("corrupt.png", "zero.jpg", "truncated.png", "missing.png"):
    assert name in listed["corrupt_image"]
  assert "zero-size" in listed["corrupt_image"] and "missing file" in listed["corrupt_image"]
  assert "empty.png" in listed["empty_caption"] and "long.png" in listed["overlong_caption"]
  assert "copy.png" in listed["duplicate"] and "good2.png" in listed["duplicate"]
  with open(os.path.join(folder_report["out_dir"], prepare.REPORT_FILE)) as f:
    assert json.load(f)["counts"] == counts


def test_folder_reads_back_pixels_captions_and_labels(folder_report, user_folder):
  _, pixels = user_folder
  out = folder_report["out_dir"]
  back = {**read_split(out, "train"), **read_split(out, "validation")}
  assert sorted(back) == sorted(pixels)
  for name, example in back.items():
    image = decoded(example["image"])
    if name.endswith(".png"):
      np.testing.assert_array_equal(image, pixels[name])  # Stored untouched, lossless.
    else:
      assert image.shape == pixels[name].shape  # JPEG: lossy, same size.
    number = int(name[4:].split(".")[0])
    assert example["captions"][0] == f"picture number {number}"  # Whitespace normalised.
    assert example["label"] == (1 if number % 2 else 0)  # Classes sorted: even, odd.
  assert back["good1.png"]["captions"] == ["picture number 1", "another caption for one"]
  assert sources.read_prepared(out).class_names == ("even", "odd")


def test_interrupted_preparation_resumes_only_missing_units(user_folder, tmp_path, monkeypatch):
  path, _ = user_folder
  reader = readers.FolderReader(path, rows_per_unit=5)
  limits = validate.Limits(max_caption_chars=50, max_size=0)
  fingerprint = prepare.fingerprint_of(reader, limits, 0.25, 1024)
  work = str(tmp_path / "work" / fingerprint[:16])
  units = reader.units()
  assert len(units) == 4
  prepare._run_units(reader, units[:2], limits, work, workers=1)  # "Interrupted" after two.
  calls = []
  original = validate.process_unit
  monkeypatch.setattr(validate, "process_unit", lambda *a: calls.append(a[1]) or original(*a))
  report = prepare.prepare(reader, str(tmp_path), limits=limits, validation_fraction=0.25)
  assert calls == units[2:]
  assert report["counts"]["kept"] == 12
  calls.clear()
  prepare.prepare(reader, str(tmp_path), limits=limits, validation_fraction=0.25)  # Current.
  assert calls == []


def test_reader_failure_mid_unit_keeps_earlier_items(tmp_path):
  good = [("a", np.full((8, 8, 3), 10, np.uint8)), ("b", np.full((8, 8, 3), 20, np.uint8))]
  tar_path = tmp_path / "broken.tar"
  write_tar(tar_path, good)
  data = tar_path.read_bytes()
  (tmp_path / "cut.tar").write_bytes(data[:len(data) // 2 + 700])
  out = tmp_path / "chunk.msgpack"
  validate.process_unit(readers.WebDatasetReader(str(tmp_path / "cut.tar")),
                        str(tmp_path / "cut.tar"), validate.Limits(), str(out))
  chunk = validate.read_chunk(str(out))
  assert [r["key"] for r in chunk["records"]] == ["cut.tar/a"]
  assert chunk["skipped"][0][0] == validate.UNREADABLE


def write_tar(path, items, extra_json: bool = True) -> None:
  with tarfile.open(path, "w") as tar:
    for key, pixels in items:
      files = {f"{key}.png": png_bytes(pixels), f"{key}.txt": f"caption of {key}".encode()}
      if extra_json:
        files[f"{key}.json"] = json.dumps({"key": key}).encode()
      for name, payload in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))


def test_webdataset_shards_with_brace_expansion_read_back_exactly(tmp_path):
  rng = np.random.default_rng(1)
  expected = {}
  for shard in range(3):
    items = [(f"{shard:03d}{i:03d}", rng.integers(0, 255, (10, 12, 3), dtype=np.uint8))
             for i in range(4)]
    write_tar(tmp_path / f"shard-{shard:05d}.tar", items, extra_json=shard != 1)
    expected.update({f"shard-{shard:05d}.tar/{k}": (k, p) for k, p in items})
  assert readers.expand_braces(str(tmp_path / "shard-{00000..00002}.tar")) == [
      str(tmp_path / f"shard-{i:05d}.tar") for i in range(3)]
  plan = sources.PLANS.build(f"webdataset(urls='{tmp_path}/shard-{{00000..00002}}.tar', "
                             "validation_fraction=0.0, max_size=0)")
  report = sources.prepare_plan(plan, str(tmp_path / "out"), out_dir=str(tmp_path / "out"))
  assert report["counts"]["kept"] == 12
  back = read_split(str(tmp_path / "out"), "train")
  assert sorted(back) == sorted(expected)
  for key, (stem, pixels) in expected.items():
    np.testing.assert_array_equal(decoded(back[key]["image"]), pixels)
    assert back[key]["captions"] == [f"caption of {stem}"]


def write_idx(path, array: np.ndarray) -> None:
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_labelled_idx_set_becomes_template_captions(tmp_path):
  rng = np.random.default_rng(2)
  arrays = {}
  for split, n in (("train", 7), ("t10k", 3)):
    arrays[split] = (rng.integers(0, 255, (n, 6, 5), dtype=np.uint8), rng.integers(0, 3, n))
    write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", arrays[split][0])
    write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", arrays[split][1])
  np.testing.assert_array_equal(readers.read_idx(str(tmp_path / "train-images-idx3-ubyte.gz")),
                                arrays["train"][0])
  spec = f"idx(path='{tmp_path}', classes=('cat', 'dog', 'cow'), templates=('a {{}}', '{{}}!'))"
  sources.prepare_spec(spec, str(tmp_path / "out"))
  for split, key in (("train", "train"), ("validation", "t10k")):
    back = read_split(str(tmp_path / "out"), split)
    images, labels = arrays[key]
    assert len(back) == len(images)
    for i in range(len(images)):
      example = back[f"{split}/{i:06d}"]
      name = ("cat", "dog", "cow")[labels[i]]
      np.testing.assert_array_equal(decoded(example["image"]), np.repeat(images[i][..., None], 3, -1))
      assert example["captions"] == [f"a {name}", f"{name}!"] and example["label"] == labels[i]


def test_idx_header_errors_are_explained(tmp_path):
  (tmp_path / "bad.idx").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
    readers.read_idx(str(tmp_path / "bad.idx"))


@pytest.mark.skipif(not os.path.isdir(sources.FASHION_MNIST_DIR),
                    reason="apt-get install dataset-fashion-mnist (.ci/run does)")
def test_real_fashion_mnist_from_debian():
  """Debian's IDX files through our reader: sizes, balance and the first labels as published
  (Xiao et al. 2017; the first ten training labels are 9 0 0 3 0 2 7 2 5 5)."""
  plan = sources.fashion_mnist()
  root = plan.reader.path
  train = readers.read_idx(os.path.join(root, "train-labels-idx1-ubyte.gz"))
  np.testing.assert_array_equal(train[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
  np.testing.assert_array_equal(np.bincount(train), [6000] * 10)
  images = readers.read_idx(os.path.join(root, "t10k-images-idx3-ubyte.gz"))
  assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
  assert sources.FASHION_MNIST_CLASSES[train[0]] == "ankle boot"
