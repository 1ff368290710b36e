"""The prototype's "contrastive + classification" multitask: one ViT, NT-Xent on two views'
projections plus cross-entropy of a classifier on view a. Presets ``default`` and ``tiny``
(configs/vision.py)."""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = vision.check_preset(arg, "classify_multitask")
  config = vision.ssl(preset, views="simclr")
  config.model.num_classes = 9 if preset == "tiny" else 10
  config.loss = ml_collections.ConfigDict({"terms": {
      "contrastive": {"name": "ntxent(temperature=0.2)"},
      "classify": {"name": "cross_entropy(label_smoothing=0.1)", "weight": 1.0},
  }})
  return config
