"""Prepare or stream a webdataset? The measurement behind ADR 0018 (issue 15).

    python scripts/bench_data_scale.py [--shards=16] [--per-shard=250] [--batch=128]

Writes ``--shards`` img2dataset-style tar shards of 256x256 JPEGs (emoji upscaled with noise,
~20 KB each, as LAION at 256 px) and times, on this machine:

  validate   preparation's first phase (decode + check every sample into chunk files): the
             part that could be split across hosts
  merge      the rest of preparation: de-duplicate, train the tokenizer, write array_record
             through TFDS; one host's work whatever the host count
  prepared   the training iterator over the prepared set: time to the first batch, examples/s
  stream     the training iterator of webdataset_stream over the same shards: time to the
             first batch (no preparation), examples/s

then projects both ways onto a LAION-400M-sized set on 1, 64 and 256 hosts with this machine's
rates per host: hours before the first step, and examples/s the hosts read together.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mmie.data import emoji, pipeline, prepare as prepare_lib, readers, validate  # noqa: E402

LAION = 400_000_000


def make_shards(root: str, shards: int, per_shard: int) -> int:
  """Tar shards of noisy upscaled emoji JPEGs and captions; returns the mean JPEG size."""
  images, rows = emoji.read_source(emoji.DEFAULT_SOURCE_DIR)
  rng = np.random.default_rng(0)
  sizes = []
  for shard in range(shards):
    with tarfile.open(os.path.join(root, f"{shard:05d}.tar"), "w") as tar:
      for i in range(per_shard):
        n = shard * per_shard + i
        big = np.asarray(Image.fromarray(images[n % len(images)]).resize(
            (256, 256), Image.Resampling.BICUBIC), np.float32)
        noisy = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
        files = {f"{n:08d}.jpg": buffer.getvalue(),
                 f"{n:08d}.txt": rows[n % len(rows)]["caption"].encode()}
        sizes.append(len(files[f"{n:08d}.jpg"]))
        for name, payload in files.items():
          info = tarfile.TarInfo(name)
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
  return int(np.mean(sizes))


def config(name: str, data_dir: str) -> dict:
  return {"name": name, "data_dir": data_dir, "image_size": 224, "context_length": 32,
          "train_split": "train", "eval_split": "validation", "cache_mb": 0,
          "augment": {"random_flip": True, "random_resized_crop": True}}


def iterate(data_config: dict, batch: int, examples: int) -> tuple[float, float]:
  """(seconds to the first batch, examples/s over the following ``examples``)."""
  start = time.perf_counter()
  iterator = pipeline.build_train_iterator(data_config, batch_size=batch, seed=0)
  next(iterator)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(max(1, examples // batch)):
    next(iterator)
  return first, max(1, examples // batch) * batch / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shards", type=int, default=16)
  parser.add_argument("--per-shard", type=int, default=250)
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args()
  count = args.shards * args.per_shard
  with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, "shards")
    os.makedirs(root)
    jpeg = make_shards(root, args.shards, args.per_shard)
    urls = os.path.join(root, f"{{00000..{args.shards - 1:05d}}}.tar")

    reader = readers.WebDatasetReader(urls)
    out = os.path.join(tmp, "prepared")
    limits, fraction, vocab = validate.Limits(), 0.01, 1024
    fingerprint = prepare_lib.fingerprint_of(reader, limits, fraction, vocab)
    start = time.perf_counter()
    prepare_lib._run_units(reader, reader.units(), limits,  # pylint: disable=protected-access
                           os.path.join(out, "work", fingerprint[:16]), 0)
    t_validate = time.perf_counter() - start
    start = time.perf_counter()  # The chunks exist now: prepare() merges and writes.
    prepare_lib.prepare(reader, out, limits=limits, validation_fraction=fraction,
                        vocab_size=vocab)
    t_merge = time.perf_counter() - start
    prepared_first, prepared_rate = iterate(config(f"prepared(path={out!r})", tmp), args.batch,
                                            min(count, 1536))
    stream_first, stream_rate = iterate(config(f"webdataset_stream(urls={urls!r})", tmp),
                                        args.batch, min(count, 1536))

  per_validate, per_merge = count / t_validate, count / t_merge
  print(f"{args.shards} shards x {args.per_shard} samples, JPEG 256x256 ~{jpeg // 1000} KB, "
        f"{os.cpu_count()} CPUs, batch {args.batch}, image 224 with random crops\n")
  print("| phase | seconds | examples/s (one host) |")
  print("|---|---:|---:|")
  print(f"| prepare: validate | {t_validate:.1f} | {per_validate:.0f} |")
  print(f"| prepare: merge + tokenizer + write | {t_merge:.1f} | {per_merge:.0f} |")
  print(f"| prepared: first batch / reading | {prepared_first:.2f} | {prepared_rate:.0f} |")
  print(f"| stream: first batch / reading | {stream_first:.2f} | {stream_rate:.0f} |")
  print(f"\nProjected onto {LAION / 1e6:.0f}M samples at these per-host rates:\n")
  print("| hosts | prepare on one host (h) | prepare in parallel, one merge (h) | stream: "
        "before the first step | read examples/s, all hosts (prepared / stream) |")
  print("|---:|---:|---:|---:|---:|")
  for hosts in (1, 64, 256):
    serial = LAION / per_validate + LAION / per_merge
    parallel = LAION / (per_validate * hosts) + LAION / per_merge
    print(f"| {hosts} | {serial / 3600:.0f} | {parallel / 3600:.0f} | {stream_first:.1f} s | "
          f"{prepared_rate * hosts:.0f} / {stream_rate * hosts:.0f} |")


if __name__ == "__main__":
  main()
