"""Input-pipeline throughput against what the train step consumes (issue 7: must be >= 3x).

    python scripts/bench_data.py [--step-rate=1000] [--sources=emoji,fashion_mnist,jpeg_folder]
    python scripts/bench_data.py --view=two_views --views=byol --sources=fashion_mnist

For each source it times, in examples per second on this machine:
  decode     record -> decoded, size-reduced image (the cacheable "working" example)
  augment    + random resized crop + flip + normalise + tokenise (one thread, no batching)
  pipeline   the real iterator (grain, batch 128, 4 read threads), first epoch
  cached     the same after one epoch, with the in-memory cache of working examples
and prints a markdown table with each rate divided by ``--step-rate``, the examples per
second the default train step consumes (measure it with main.py's progress line).

``jpeg_folder`` is a generated folder of 256x256 JPEGs (emoji upscaled: smooth content,
as photos), prepared with the folder source: the cost of decoding real-size photos;
``jpeg_folder_64`` is the same prepared with ``max_size=64``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mmie.data import emoji, pipeline, sources, ssl_augment  # noqa: E402

BATCH = 128


def make_jpeg_folder(root: str, count: int = 2000) -> str:
  """``count`` 256x256 JPEGs with captions: emoji upscaled 8x (cheap, smooth, photo-sized)."""
  images, rows = emoji.read_source(emoji.DEFAULT_SOURCE_DIR)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "captions.jsonl"), "w", encoding="utf-8") as f:
    for i in range(count):
      name = f"{i:05d}.jpg"
      if not os.path.exists(os.path.join(root, name)):
        big = Image.fromarray(images[i % len(images)]).resize((256, 256), Image.Resampling.BICUBIC)
        big.save(os.path.join(root, name), quality=90)
      f.write(json.dumps({"file": name, "caption": rows[i % len(rows)]["caption"]}) + "\n")
  return root


def data_config(name: str, data_dir: str, **extra) -> dict:
  aug = {"random_flip": True, "random_resized_crop": True}
  return {"name": name, "data_dir": data_dir, "image_size": 32, "context_length": 24,
          "train_split": "train", "eval_split": "validation", "augment": aug, **extra}


def rate(fn, count: int, repeats: int = 3) -> float:
  """Best of ``repeats`` timings: the machine is shared, the best is the least disturbed."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn(count)
    best = min(best, time.perf_counter() - start)
  return count / best


def _two_views_rate(config: dict, working: list) -> float:
  """Both views of BATCH-sized batches (the two_views loader's work, one thread)."""
  specs = ssl_augment.PRESETS[config["augment"].get("views", "simclr")]
  size = config["image_size"]
  def run(k: int) -> None:
    for i in range(0, k, BATCH):
      chunk = working[i:i + BATCH]
      ssl_augment.two_views([w["image"] for w in chunk], size, specs,
                            [np.random.default_rng([0, i + j]) for j in range(len(chunk))])
  return rate(run, len(working))


def bench_source(config: dict, view: str) -> dict[str, float]:
  """The four rates for one source config and data view."""
  source = sources.source_for(config)
  uncached = pipeline._records_for(config, source, "train", crop=True)  # No shard: no cache.
  n = min(len(uncached), 2000)
  out = {"decode": rate(lambda k: [uncached.get_many(range(i, min(i + BATCH, k)))
                                   for i in range(0, k, BATCH)], n)}
  working = [uncached[i] for i in range(n)]
  if view == "two_views":
    out["augment"] = _two_views_rate(config, working)
  else:
    augmenter = pipeline._augment(config)
    rng = np.random.default_rng(0)
    out["augment"] = rate(lambda k: [augmenter(working[i], rng) for i in range(k)], n)
  steps = max(4, min(len(uncached) // BATCH, 16))
  it = pipeline.build_train_iterator({**config, "cache_mb": 0}, batch_size=BATCH, seed=0,
                                     view=view)
  next(it)
  out["pipeline"] = rate(lambda k: [next(it) for _ in range(k // BATCH)], steps * BATCH // 3)
  it = pipeline.build_train_iterator(config, batch_size=BATCH, seed=0, view=view)
  for _ in range(len(uncached) // BATCH + 1):  # One epoch fills the cache.
    next(it)
  out["cached"] = rate(lambda k: [next(it) for _ in range(k // BATCH)], 16 * BATCH)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--step-rate", type=float, default=1000.0,
                      help="examples/s the default train step consumes")
  parser.add_argument("--sources", default="emoji,fashion_mnist,jpeg_folder,jpeg_folder_64")
  parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "mmie_bench"))
  parser.add_argument("--view", default="image_text", choices=("image_text", "two_views"),
                      help="two_views: the SSL pipeline (both views by --views' preset)")
  parser.add_argument("--views", default="simclr", choices=sorted(ssl_augment.PRESETS))
  args = parser.parse_args()
  folder = make_jpeg_folder(os.path.join(args.data_dir, "jpeg_folder"))
  specs = {
      "emoji": "emoji",
      "fashion_mnist": "fashion_mnist",
      "jpeg_folder": f"folder(path='{folder}', validation_fraction=0.05)",
      # Prepared at the size the 32px model needs: 16x fewer pixels to decode.
      "jpeg_folder_64": f"folder(path='{folder}', validation_fraction=0.05, max_size=64)",
  }
  print(f"| source | decode | augment | pipeline (1st epoch) | cached | "
        f"pipeline / step | cached / step |   (step = {args.step_rate:.0f} examples/s)")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for name in args.sources.split(","):
    if name not in specs:
      raise SystemExit(f"unknown --sources entry {name!r}; choose from {sorted(specs)}.")
    config = data_config(specs[name], args.data_dir)
    if args.view == "two_views":
      config["augment"] = {"views": args.views}
      config["image_size"] = 28 if name == "fashion_mnist" else 32
    r = bench_source(config, args.view)
    print(f"| {name} | {r['decode']:.0f} | {r['augment']:.0f} | {r['pipeline']:.0f} "
          f"| {r['cached']:.0f} | {r['pipeline'] / args.step_rate:.1f}x "
          f"| {r['cached'] / args.step_rate:.1f}x |", flush=True)


if __name__ == "__main__":
  main()
