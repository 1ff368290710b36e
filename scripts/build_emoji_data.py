"""Rebuilds the embedded emoji image-caption set in data/emoji/ from its npm package.

    python scripts/build_emoji_data.py [--package=/path/to/package] [--out=data/emoji]

Without ``--package`` it runs ``npm pack emoji-datasource-twitter@16.0.0`` in a temporary
directory (the only network it needs is the npm registry). Output, a few MB, all
deterministic:

  images.npz       uint8 [N, 32, 32, 3]: 64x64 Twemoji PNGs composited on white, resized
  metadata.jsonl   one line per image, same order: key, name, caption, short_names,
                   category, subcategory, unified, split
  tokenizer.json   byte-level BPE trained on the TRAINING captions only
  ATTRIBUTION.md   licences of the art (CC-BY 4.0) and the metadata (MIT)

The 5 'Component' emoji (skin-tone swatches: plain colour squares named "emoji modifier
fitzpatrick type-N") are dropped: they are not pictures of their captions and their
category would be a 5-example class. Skin-tone variants are not in the base list.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mmie.data import tokenizer as tokenizer_lib  # noqa: E402

PACKAGE = "emoji-datasource-twitter@16.0.0"
DROPPED_CATEGORIES = ("Component",)
IMAGE_SIZE = 32
VALIDATION_FRACTION = 0.1
VOCAB_SIZE = 1024

ATTRIBUTION = """\
# Attribution: embedded emoji image-caption set

Built by `scripts/build_emoji_data.py` from the npm package `{package}`.

- **Images**: Twemoji, Copyright 2020 Twitter, Inc and other contributors. Graphics
  licensed under CC-BY 4.0: https://creativecommons.org/licenses/by/4.0/ . The images here
  are modified: composited on a white background and resized from 64x64 to {size}x{size}.
  Source: https://github.com/twitter/twemoji (now maintained at jdecked/twemoji).
- **Metadata** (names, short names, categories): emoji-datasource by Cal Henderson
  (iamcal), MIT licence: https://github.com/iamcal/emoji-data .

Contents: {count} base emoji (no skin-tone variants, 'Component' category dropped),
{train} train / {validation} validation, split by caption so that no validation caption
appears in training; `tokenizer.json` was trained on the training captions only.
"""


def fetch_package(workdir: str) -> str:
  """Runs ``npm pack`` into ``workdir`` and returns the unpacked ``package`` directory."""
  try:
    subprocess.run(["npm", "pack", PACKAGE], cwd=workdir, check=True, capture_output=True)
  except FileNotFoundError as e:
    raise SystemExit("npm not found: install Node.js/npm or pass --package=DIR "
                     "(an unpacked emoji-datasource-twitter package).") from e
  tarballs = [f for f in os.listdir(workdir) if f.endswith(".tgz")]
  if len(tarballs) != 1:
    raise SystemExit(f"npm pack left {tarballs} in {workdir}; expected one .tgz.")
  with tarfile.open(os.path.join(workdir, tarballs[0])) as tar:
    tar.extractall(workdir, filter="data")
  return os.path.join(workdir, "package")


def load_image(path: str, size: int) -> np.ndarray:
  """RGBA PNG -> composited on white (before resizing, so edges do not darken) -> RGB uint8."""
  with Image.open(path) as im:
    rgba = im.convert("RGBA")
  white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  rgb = Image.alpha_composite(white, rgba).convert("RGB")
  return np.asarray(rgb.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def select_emoji(package: str) -> list[dict]:
  """Base emoji with a Twitter image, minus dropped categories, in the package's sort order."""
  with open(os.path.join(package, "emoji.json"), encoding="utf-8") as f:
    entries = json.load(f)
  image_dir = os.path.join(package, "img", "twitter", "64")
  kept = []
  for e in sorted(entries, key=lambda e: e["sort_order"]):
    if e["category"] in DROPPED_CATEGORIES or not e.get("has_img_twitter"):
      continue
    path = os.path.join(image_dir, e["image"])
    if not os.path.exists(path):
      raise SystemExit(f"{path} missing although emoji.json says has_img_twitter.")
    kept.append({
        "key": e["short_name"],
        "name": e["name"],
        "caption": " ".join(e["name"].lower().split()),
        "short_names": list(e["short_names"]),
        "category": e["category"],
        "subcategory": e["subcategory"],
        "unified": e["unified"],
        "image_path": path,
    })
  return kept


def assign_splits(records: list[dict]) -> None:
  """Validation = the ~10% of captions per category with the smallest sha256 (stable, stratified).

  Splitting by caption (not by entry) keeps two entries with the same caption in one split.
  """
  by_category = collections.defaultdict(set)
  for r in records:
    by_category[r["category"]].add(r["caption"])
  validation = set()
  for captions in by_category.values():
    ranked = sorted(captions, key=lambda c: hashlib.sha256(c.encode("utf-8")).hexdigest())
    validation.update(ranked[: max(1, round(VALIDATION_FRACTION * len(ranked)))])
  for r in records:
    r["split"] = "validation" if r["caption"] in validation else "train"


def build(package: str, out: str) -> dict:
  """Writes images.npz, metadata.jsonl, tokenizer.json and ATTRIBUTION.md into ``out``."""
  records = select_emoji(package)
  assign_splits(records)
  images = np.stack([load_image(r.pop("image_path"), IMAGE_SIZE) for r in records])
  os.makedirs(out, exist_ok=True)
  np.savez_compressed(os.path.join(out, "images.npz"), images=images)
  with open(os.path.join(out, "metadata.jsonl"), "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  train_captions = [r["caption"] for r in records if r["split"] == "train"]
  tokenizer = tokenizer_lib.train_bpe(train_captions, VOCAB_SIZE)
  tokenizer.save(os.path.join(out, "tokenizer.json"))
  counts = collections.Counter(r["split"] for r in records)
  with open(os.path.join(out, "ATTRIBUTION.md"), "w", encoding="utf-8") as f:
    f.write(ATTRIBUTION.format(package=PACKAGE, size=IMAGE_SIZE, count=len(records),
                               train=counts["train"], validation=counts["validation"]))
  return {"count": len(records), **counts, "vocab_size": tokenizer.vocab_size}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--package", help="unpacked npm package dir (holds emoji.json); "
                      "default: npm pack " + PACKAGE)
  repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  parser.add_argument("--out", default=os.path.join(repo, "data", "emoji"))
  args = parser.parse_args()
  if args.package:
    summary = build(args.package, args.out)
  else:
    with tempfile.TemporaryDirectory() as workdir:
      summary = build(fetch_package(workdir), args.out)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
