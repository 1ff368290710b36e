"""Shared fixtures for the data tests: one emoji preparation per test session."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from mmie.data import emoji

SOURCE_DIR = emoji.DEFAULT_SOURCE_DIR


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with the emoji set prepared once (about a second)."""
  path = str(tmp_path_factory.mktemp("tfds"))
  emoji.prepare(path)
  return path


@pytest.fixture(scope="session")
def raw_emoji() -> tuple[np.ndarray, list[dict]]:
  """The committed data/emoji/ files read directly: the independent reference."""
  with np.load(os.path.join(SOURCE_DIR, "images.npz")) as npz:
    images = npz["images"]
  with open(os.path.join(SOURCE_DIR, "metadata.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return images, rows


@pytest.fixture(scope="session")
def make_data_config(data_dir):
  """Factory of the data section of configs/clip.py with concrete sizes, on ``data_dir``."""

  def make(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({
        "name": "emoji", "data_dir": data_dir, "image_size": 32, "context_length": 16,
        "train_split": "train", "eval_split": "validation",
        "augment": {"random_flip": False, "random_resized_crop": False},
        "prompt_templates": ("{}", "an emoji of {}"),
    })
    config.update(overrides)
    return config

  return make
