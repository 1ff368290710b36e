"""SimCLR (Chen et al. 2020): NT-Xent over two augmented views, temperature 0.2.

``python main.py --config=configs/simclr.py --workdir=runs/simclr``; presets ``default`` and
``tiny`` (configs/vision.py). kNN, logistic probe and collapse diagnostics are logged.
"""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = vision.ssl(vision.check_preset(arg, "simclr"), views="simclr")
  config.loss = ml_collections.ConfigDict({"name": "ntxent(temperature=0.2)"})
  return config
