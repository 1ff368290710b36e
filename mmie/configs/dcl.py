"""Decoupled contrastive learning (Yeh et al. 2022): NT-Xent without the positive in the
denominator, so small batches lose less of the gradient. Presets ``default`` and ``tiny``
(configs/vision.py)."""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = vision.ssl(vision.check_preset(arg, "dcl"), views="simclr")
  config.loss = ml_collections.ConfigDict({"name": "dcl(temperature=0.2)"})
  return config
