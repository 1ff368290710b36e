"""SigLIP (Zhai et al. 2023) on the embedded emoji set: the pairwise sigmoid loss with a
learnable temperature and bias, otherwise the CLIP recipe of configs/clip.py.

The bias starts at -10 and log-temperature at log(10), the paper's initialisation: with B-1
negatives per positive, the sigmoid starts near the negatives' prior instead of at 0.5.

Presets: ``default`` (a few minutes on 2 CPU cores) and ``tiny`` (seconds; the tests).
"""

import math

import ml_collections

from mmie.configs import clip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the SigLIP config; ``arg`` names a preset (``tiny`` or ``default``)."""
  config = clip.get_config(arg)
  config.model.logit_bias_init = -10.0  # Turns on the model's learnable bias.
  config.model.logit_scale_init = math.log(10.0)
  config.loss.name = "siglip"
  return config
