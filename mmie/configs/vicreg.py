"""VICReg (Bardes et al. 2022): invariance + variance + covariance on a wide projection, with
BYOL's asymmetric views; the paper's coefficients 25 / 25 / 1. Presets ``default`` and ``tiny``
(configs/vision.py)."""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = vision.ssl(vision.check_preset(arg, "vicreg"), views="vicreg",
                      projector=(1024, 1024))
  config.loss = ml_collections.ConfigDict({"name": "vicreg"})
  return config
