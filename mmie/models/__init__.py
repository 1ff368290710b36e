"""Models: transformer layers, image and text towers, the two-tower dual encoder.

Public entry points: ``build_model(config.model)`` (the config edge), ``count_params``,
``example_inputs`` and ``unbox``. See docs/models.md for every model and config key.
"""

from mmie.models.builder import IMAGE_TOWERS
from mmie.models.builder import MODELS
from mmie.models.builder import TEXT_TOWERS
from mmie.models.builder import build_image_tower
from mmie.models.builder import build_model
from mmie.models.builder import build_text_tower
from mmie.models.builder import build_tower
from mmie.models.builder import count_params
from mmie.models.builder import example_inputs
from mmie.models.layers import LOGICAL_AXES
from mmie.models.layers import SUGGESTED_AXIS_RULES
from mmie.models.layers import unbox
from mmie.models.text import TextTransformer
from mmie.models.two_towers import TwoTower
from mmie.models.two_towers import l2_normalize
from mmie.models.vit import VisionTransformer

__all__ = [
    "IMAGE_TOWERS", "LOGICAL_AXES", "MODELS", "SUGGESTED_AXIS_RULES", "TEXT_TOWERS", "TextTransformer", "TwoTower",
    "VisionTransformer", "build_image_tower", "build_model", "build_text_tower",
    "build_tower", "count_params", "example_inputs", "l2_normalize", "unbox",
]
