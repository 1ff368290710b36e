"""Supervised contrastive learning (Khosla et al. 2020): both views of every image of a class
are positives. Uses the labels, so it is an upper reference for the self-supervised recipes.
Presets ``default`` and ``tiny``
(configs/vision.py)."""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = vision.ssl(vision.check_preset(arg, "supcon"), views="simclr")
  config.loss = ml_collections.ConfigDict({"name": "supcon(temperature=0.1)"})
  return config
