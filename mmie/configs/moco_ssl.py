"""MoCo v2 (Chen et al. 2020) on images: a momentum encoder (``train.ema_decay``) gives the keys
and a memory queue of past keys adds negatives to NT-Xent. (``configs/moco.py`` is the
image-text variant.) Presets ``default`` and ``tiny``
(configs/vision.py)."""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = vision.check_preset(arg, "moco_ssl")
  config = vision.ssl(preset, views="simclr")
  config.train = ml_collections.ConfigDict({"ema_decay": 0.99})
  queue = 64 if preset == "tiny" else 4096
  config.loss = ml_collections.ConfigDict({
      "name": "ntxent(temperature=0.2)",
      "transforms": ("momentum_keys(inputs=('z_a', 'z_b'))",
                     f"memory_queue(size={queue}, inputs=('z_a', 'z_b'))")})
  return config
