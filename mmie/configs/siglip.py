"""SigLIP (Zhai et al. 2023) on the embedded emoji set: the pairwise sigmoid loss with a
learnable temperature and bias, otherwise the CLIP recipe of configs/clip.py.

The bias starts at -10 and log-temperature at log(10), the paper's initialisation: with B-1
negatives per positive, the sigmoid starts near the negatives' prior instead of at 0.5.

Presets: ``default`` (a few minutes on 2 CPU cores) and ``tiny`` (seconds; the tests), and
at pod scale ``b16`` and ``l14`` (configs/clip.py's, with the sigmoid loss) and ``so400m``:
the shape-optimised ViT of Alabdulmohsin et al. (2023) that SigLIP So400m/14 uses (width
1,152, depth 27, MLP 4,304, 16 heads) for both towers, 224 pixels, patch 14, text context 64
over a 32,000-token vocabulary. The pod presets take configs/clip.py's arguments
(``POD_ARGUMENTS``: batch, data, fsdp, model, remat, scan, block_size, steps).
"""

import math

import ml_collections

from mmie.configs import clip, presets

SO400M = ((14, 1152, 27, 16, 4304), (1152, 27, 16, 4304), 1152)
PRESETS = {**clip.PRESETS, "so400m": clip.POD_ARGUMENTS}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the SigLIP config; ``arg`` names a preset and its arguments (module docstring)."""
  preset, args = presets.parse(arg, "configs/siglip.py", PRESETS)
  if preset == "so400m":
    config = clip.pod_config(clip.base_config(False), SO400M, args, loss="siglip",
                             context_length=64, vocab_size=32000)
    config.model.text.causal, config.model.text.pool = False, "mean"
  elif preset in clip.POD_SIZES:
    config = clip.pod_config(clip.base_config(False), clip.POD_SIZES[preset], args,
                             loss="siglip")
  else:
    config = clip.recipe_base(preset)
    config.loss.name = "siglip"
  config.model.logit_bias_init = -10.0  # Turns on the model's learnable bias.
  config.model.logit_scale_init = math.log(10.0)
  return config
