"""Streamed webdataset shards (mmie/data/streaming.py): per-host shards, window shuffle, checks,
exact resume, the held-out split, and the same samples through ``file://`` as through paths."""

from __future__ import annotations

import io
import json
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmie.data import pipeline, sources, streaming, validate

SHARDS, PER_SHARD = 7, 6  # The last shard is held out: 6 training shards.


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def _write(path, files: dict[str, bytes]) -> None:
  with tarfile.open(path, "w") as tar:
    for name, payload in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> str:
  """Shards 00..06, sample ``SSII`` captioned ``caption SSII``, with distinct pixels."""
  root = tmp_path_factory.mktemp("shards")
  rng = np.random.default_rng(0)
  for shard in range(SHARDS):
    files = {}
    for i in range(PER_SHARD):
      key = f"{shard:02d}{i:02d}"
      files[f"{key}.png"] = _png(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
      files[f"{key}.txt"] = f"caption {key}".encode()
    _write(root / f"{shard:02d}.tar", files)
  return str(root)


def _config(urls: str, data_dir: str, **options) -> ml_collections.ConfigDict:
  args = ", ".join(f"{k}={v!r}" for k, v in {"urls": urls, **options}.items())
  return ml_collections.ConfigDict({
      "name": f"webdataset_stream({args})", "data_dir": data_dir, "image_size": 16,
      "context_length": 8, "train_split": "train", "eval_split": "validation",
      "augment": {"random_flip": True, "random_resized_crop": True}})


def _source(shard_dir: str, tmp_path, **options) -> streaming.StreamSource:
  urls = f"{shard_dir}/{{00..{SHARDS - 1:02d}}}.tar"
  return sources.webdataset_stream(data_dir=str(tmp_path), urls=urls, **options)


def _keys(samples) -> list[str]:
  return [s["captions"][0].split()[1] for s in samples]


def _epoch(source, host: int, hosts: int, epoch: int) -> list[str]:
  """One host's samples of ``epoch``, read through the stream iterator."""
  stream = source.stream(seed=3, process_index=host, process_count=hosts)
  count = sum(len(w) for e in range(epoch + 1) for w in stream.windows(e)) * PER_SHARD
  iterator = iter(stream)
  tagged = [next(iterator) for _ in range(count)]
  return _keys([s for _, s in tagged][-len(_flat(stream.windows(epoch))) * PER_SHARD:])


def _flat(windows):
  return [shard for window in windows for shard in window]


def test_hosts_read_disjoint_shards_that_cover_every_training_sample_each_epoch(shard_dir,
                                                                                tmp_path):
  source = _source(shard_dir, tmp_path, shuffle_shards=2)
  training = {f"{s:02d}{i:02d}" for s in range(SHARDS - 1) for i in range(PER_SHARD)}
  for epoch in (0, 1):
    hosts = [_epoch(source, h, 2, epoch) for h in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == 3 * PER_SHARD  # 6 shards dealt to 2 hosts.
    assert not set(hosts[0]) & set(hosts[1])
    assert set(hosts[0]) | set(hosts[1]) == training  # The held-out shard 06 never trains.


def test_epochs_deal_shards_anew_and_windows_are_shuffled_across_their_shards(shard_dir,
                                                                             tmp_path):
  source = _source(shard_dir, tmp_path, shuffle_shards=3)
  stream = source.stream(seed=3, process_index=0, process_count=1)
  assert _flat(stream.windows(0)) != _flat(stream.windows(1))
  assert sorted(_flat(stream.windows(0))) == sorted(source.split_shards["train"])
  keys = _epoch(source, 0, 1, 0)
  first_window = [u.rsplit("/", 1)[-1][:2] for u in stream.windows(0)[0]]
  window_keys = keys[:3 * PER_SHARD]
  # A window holds exactly its shards' samples, in an order that mixes the shards.
  assert sorted(window_keys) == sorted(f"{s}{i:02d}" for s in first_window
                                       for i in range(PER_SHARD))
  assert window_keys != sorted(window_keys, key=lambda k: (first_window.index(k[:2]), k))


@pytest.mark.parametrize("view, keys", [
    (None, {"image", "text"}), ("text", {"text"}), ("labelled_image", {"image", "label"}),
    ("two_views", {"view_a", "view_b", "label"})])
def test_resume_mid_window_gives_the_same_batches_as_going_on(shard_dir, tmp_path, view, keys):
  config = _config(f"{shard_dir}/{{00..{SHARDS - 1:02d}}}.tar", str(tmp_path), shuffle_shards=2)
  build = lambda: pipeline.build_train_iterator(config, batch_size=5, seed=0, view=view)
  iterator = build()
  for _ in range(4):  # 20 samples: inside the second window (12 samples each).
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))  # What a checkpoint stores.
  going_on = [next(iterator) for _ in range(6)]  # Crosses into the next epoch (36 samples).
  resumed = build()
  resumed.set_state(state)
  for want in going_on:
    got = next(resumed)
    assert got.keys() == want.keys() == keys
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_file_urls_read_the_same_batches_as_paths(shard_dir, tmp_path):
  paths = _config(f"{shard_dir}/*.tar", str(tmp_path))
  urls = _config(f"file://{shard_dir}/{{00..{SHARDS - 1:02d}}}.tar", str(tmp_path))
  a = pipeline.build_train_iterator(paths, batch_size=4, seed=1)
  b = pipeline.build_train_iterator(urls, batch_size=4, seed=1)
  for _ in range(3):
    x, y = next(a), next(b)
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["text"], y["text"])


def test_validation_split_is_the_held_out_shard_read_whole(shard_dir, tmp_path):
  config = _config(f"{shard_dir}/{{00..{SHARDS - 1:02d}}}.tar", str(tmp_path))
  split = pipeline.load_eval_split(config)
  assert split["captions"] == [f"caption {SHARDS - 1:02d}{i:02d}" for i in range(PER_SHARD)]
  assert split["image"].shape == (PER_SHARD, 16, 16, 3)
  other = sources.webdataset_stream(data_dir=str(tmp_path), urls=f"{shard_dir}/{{01..06}}.tar",
                                    validation_urls=f"{shard_dir}/00.tar").split_shards
  assert other == {"train": tuple(f"{shard_dir}/{s:02d}.tar" for s in range(1, 7)),
                   "validation": (f"{shard_dir}/00.tar",)}


def test_bad_samples_and_an_unreadable_shard_are_skipped_and_counted(tmp_path):
  good = _png(np.full((8, 8, 3), 200, np.uint8))
  _write(tmp_path / "a.tar", {
      "ok1.png": good, "ok1.txt": b"a kept caption",
      "cut.png": good[:len(good) // 2], "cut.txt": b"truncated image",
      "empty.png": good, "empty.txt": b"   ",
      "latin.png": good, "latin.txt": "caf\u00e9".encode("latin-1"),
      "ok2.png": good, "ok2.txt": b"another kept caption"})
  whole = tmp_path / "whole.tar"
  _write(whole, {f"k{i}.{ext}": good if ext == "png" else b"x"
                 for i in range(3) for ext in ("png", "txt")})
  (tmp_path / "b.tar").write_bytes(whole.read_bytes()[:2600])  # Cut inside k1.png's data.
  _write(tmp_path / "val.tar", {"v.png": good, "v.txt": b"held out"})
  source = sources.webdataset_stream(data_dir=str(tmp_path), urls=f"{tmp_path}/{{a,b}}.tar",
                                     validation_urls=f"{tmp_path}/val.tar", shuffle_shards=2)
  iterator = iter(source.stream(seed=0, process_index=0, process_count=1))
  kept = sorted(s["captions"][0] for _, s in (next(iterator) for _ in range(3)))
  assert kept == ["a kept caption", "another kept caption", "x"]
  assert iterator.skipped() == {validate.CORRUPT: 1, validate.EMPTY: 1,
                                validate.BAD_CAPTION: 1, validate.UNREADABLE: 1}
  assert iterator.get_state()["skipped"] == iterator.skipped()


@pytest.mark.parametrize("options, message", [
    ({"urls": "{dir}/00.tar"}, "needs two or more"),
    ({"urls": "{dir}/*.tar", "validation_urls": "{dir}/03.tar"}, "shares 1 shards"),
    ({"urls": "{dir}/{{00..09}}.tar"}, "does not exist"),
    ({"urls": "nosuchprotocol://bucket/{{0..3}}.tar"}, "cannot open"),
    ({"urls": "{dir}/*.tar", "shuffle_shards": 0}, "must be >= 1"),
])
def test_bad_stream_arguments_are_refused_with_the_reason(shard_dir, tmp_path, options, message):
  options = {k: v.format(dir=shard_dir) if isinstance(v, str) else v for k, v in options.items()}
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    sources.webdataset_stream(data_dir=str(tmp_path), **options)


def test_a_stream_mixed_with_a_random_access_source_is_refused(shard_dir, tmp_path, data_dir):
  config = _config(f"{shard_dir}/*.tar", data_dir)
  config.name = f"emoji + {config.name}"
  with pytest.raises(ValueError, match="mixes streamed sources"):
    pipeline.build_train_iterator(config, batch_size=4, seed=0)


def test_the_train_split_of_a_stream_cannot_be_read_whole(shard_dir, tmp_path):
  with pytest.raises(ValueError, match="streamed, not read whole"):
    _source(shard_dir, tmp_path).records("train")
