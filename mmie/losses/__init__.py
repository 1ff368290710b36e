"""Loss library: pure heads composed through optax-style stateful transforms.

The train step only sees `Loss` (``init``/``apply``) built by `build_loss(config.loss)`;
see docs/losses.md for every head, transform and recipe.
"""

from mmie.registry import Call, Registry, parse_call
from mmie.losses.classification import cross_entropy
from mmie.losses.contrastive import clip, dcl, dclw, ntxent, siglip, supcon
from mmie.losses.core import Loss, Transform, call_head, carry_over, chain, make_loss, stateless
from mmie.losses.pairwise import Candidates, HardNegatives, hard_negatives_option
from mmie.losses.queue import memory_queue, momentum_keys
from mmie.losses.redundancy import barlow_twins, decorrelation, feature_consistency, vicreg
from mmie.losses.registry import HEADS, SCHEDULES, TRANSFORMS, WEIGHTINGS, build_loss
from mmie.losses.weighting import (Term, Weighting, combine, inverse_running_loss, static,
                                   uncertainty)
from mmie.losses.transforms import dynamic_temperature, learnable_temperature

__all__ = [
    "Call", "Candidates", "HEADS", "HardNegatives", "Loss", "Registry", "SCHEDULES",
    "TRANSFORMS", "Term", "Transform", "WEIGHTINGS", "Weighting", "barlow_twins", "build_loss",
    "call_head", "carry_over", "chain", "clip", "combine", "cross_entropy", "dcl", "dclw",
    "decorrelation", "dynamic_temperature", "feature_consistency", "hard_negatives_option",
    "inverse_running_loss", "learnable_temperature", "make_loss",
    "memory_queue", "momentum_keys", "ntxent", "parse_call", "siglip", "stateless", "static",
    "supcon", "uncertainty", "vicreg",
]
