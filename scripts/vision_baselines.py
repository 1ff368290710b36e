"""Baselines for the vision recipes, with the same evaluators: raw pixels and a random backbone.

The logistic probe and kNN (k = 20, 200) of mmie/evaluate/probe.py on (a) the raw pixels and
(b) the pooled features of a randomly initialised ViT of configs/simclr.py, trained on the
60k Fashion-MNIST training images and scored on the official 10k test split. Zalando's
published benchmark has about 84% (logistic regression) and 86% (kNN) on raw pixels.

    python scripts/vision_baselines.py                    # both rows
    python scripts/vision_baselines.py --features=random  # only the random backbone
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmie import cli  # noqa: E402
from mmie.data import pipeline  # noqa: E402
from mmie.evaluate import probe  # noqa: E402
from mmie.evaluate.context import embed_in_batches  # noqa: E402
from mmie.models import build_model, unbox  # noqa: E402


def _evaluate(name: str, train_x, train_y, test_x, test_y) -> dict[str, object]:
  start = time.perf_counter()
  row: dict[str, object] = {"features": name, "dim": train_x.shape[1]}
  row.update(probe.linear_probe(train_x, train_y, test_x, test_y))
  for k in (20, 200):
    row.update(probe.knn_accuracy(train_x, train_y, test_x, test_y, k=k))
  row["seconds"] = time.perf_counter() - start
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="simclr", help="vision recipe whose backbone to use")
  parser.add_argument("--max_train", type=int, default=60_000)
  parser.add_argument("--features", default="pixels,random",
                      help="which rows: 'pixels' (about 6 minutes), 'random' (about 1.5)")
  args = parser.parse_args()
  features = set(args.features.split(","))
  if not features or features - {"pixels", "random"}:
    parser.error(f"--features={args.features!r}: a comma-separated subset of pixels,random.")
  config = importlib.import_module(f"configs.{args.config}").get_config("default")
  cli.fill_all_defaults(config)
  train = pipeline.load_eval_split(config.data, "train", view="labelled_image")
  test = pipeline.load_eval_split(config.data, "validation", view="labelled_image")
  train_y, test_y = train["label"][:args.max_train], test["label"]
  pixels = lambda split: split["image"][..., 0].reshape(len(split["image"]), -1)
  rows = []
  if "pixels" in features:
    rows.append(_evaluate("raw pixels", pixels(train)[:args.max_train], train_y, pixels(test),
                          test_y))
  if "random" in features:
    rows.append(_random_backbone(config, args.config, train, test, args.max_train))
  print("| features | dim | linear probe top-1 | kNN k=20 | kNN k=200 | seconds |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['features']} | {r['dim']} | {r['linear_probe_top1']:.2f} | "
          f"{r['knn20_top1']:.2f} | {r['knn200_top1']:.2f} | {r['seconds']:.0f} |")


def _random_backbone(config, name: str, train, test, max_train: int) -> dict[str, object]:
  """The recipe's backbone at its initialisation (seed ``config.seed``): pooled features."""
  model = build_model(config.model)
  size = config.data.image_size
  params = unbox(model.init(jax.random.key(config.seed), np.zeros((1, size, size, 3),
                                                                   np.float32))["params"])
  encode = jax.jit(lambda x: model.apply({"params": params}, x, method="encode_image"))
  return _evaluate(f"random ViT ({name})",
                   embed_in_batches(encode, train["image"][:max_train], 512),
                   train["label"][:max_train], embed_in_batches(encode, test["image"], 512),
                   test["label"])


if __name__ == "__main__":
  main()
