"""Barlow Twins (Zbontar et al. 2021): the views' cross-correlation matrix driven to the
identity, lambda 5e-3, BYOL's views. Presets ``default`` and ``tiny``
(configs/vision.py)."""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = vision.ssl(vision.check_preset(arg, "barlow_twins"), views="byol",
                      projector=(1024, 1024))
  config.loss = ml_collections.ConfigDict({"name": "barlow_twins(lambda_=5e-3)"})
  return config
