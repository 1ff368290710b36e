"""CLIP with MoCo-style keys (He et al. 2020): a momentum encoder and a memory queue.

``train.ema_decay`` keeps an exponential moving average of the parameters in the train state;
the contrastive task runs it as the momentum encoder (``image_emb_momentum``,
``text_emb_momentum``); ``momentum_keys`` routes those outputs to the candidate side and
``memory_queue`` keeps the last ``size`` of them as extra negatives, so each query sees
``batch + size`` candidates from a slowly moving encoder.

Presets: ``default`` (a few minutes on 2 CPU cores) and ``tiny`` (seconds; the tests).
"""

import ml_collections

from mmie.configs import clip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the MoCo-keys CLIP config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  config = clip.recipe_base(preset)
  tiny = preset == "tiny"
  config.train = ml_collections.ConfigDict()
  config.train.ema_decay = 0.99 if tiny else 0.995
  queue = 32 if tiny else 1024  # Below the 1,717 training pairs: no key meets itself.
  config.loss.transforms = ("momentum_keys", f"memory_queue(size={queue})")
  return config
