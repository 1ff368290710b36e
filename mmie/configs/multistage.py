"""The prototype's three-stage curriculum, on the default emoji image-caption data.

1. ``projections``: only the projection heads (and the logit scale) train, with the
   contrastive loss plus a decorrelation regulariser on each modality's embeddings.
2. ``top_blocks``: the backbones stay frozen except their top block and final norm, trained
   with a memory-queue contrastive loss (MoCo-style extra negatives). The prototype trained
   its cross-modal fusion module here; the dual encoder has none, so the top blocks stand in.
3. ``full``: everything trains, the backbones at 0.01x the learning rate, with hard-negative
   contrastive learning plus a cross-modal feature-consistency term.

Presets: ``default`` (a few minutes on CPU) and ``tiny`` (seconds; used by the tests).
"""

import ml_collections

from mmie.configs import clip


def _rules(trainable: str, frozen_rest: bool, backbone_multiplier: float | None = None):
  """Disjoint rules: ``trainable`` at 1x, the rest frozen or at ``backbone_multiplier``."""
  rest = f"(?!(?:{trainable})$).*"
  return ((trainable, 1.0), (rest, "frozen" if frozen_rest else backbone_multiplier))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = clip.recipe_base(preset)
  tiny = preset == "tiny"
  config.model.image.depth = 2 if tiny else config.model.image.depth
  config.model.text.depth = 2 if tiny else config.model.text.depth
  top_image = config.model.image.depth - 1
  top_text = config.model.text.depth - 1

  steps = (2, 2, 2) if tiny else (300, 300, 400)
  config.total_steps = sum(steps)
  config.log_every = 1 if tiny else 25
  config.eval_every = sum(steps) if tiny else 300
  config.checkpoint_every = 2 if tiny else 100
  config.optimizer.warmup_steps = 1 if tiny else 30

  heads = r"image_projection/.*|text_projection/.*|logit_scale"
  top = (heads + rf"|image/encoder/layer_{top_image}/.*|text/encoder/layer_{top_text}/.*"
         r"|image/ln_post/.*|text/ln_final/.*")

  def stage(n, loss, rules):
    s = ml_collections.ConfigDict()
    s.total_steps = n
    s.loss = loss
    s.param_rules = rules
    s.optimizer = ml_collections.ConfigDict(config.optimizer.to_dict())
    return s

  loss1 = ml_collections.ConfigDict({"terms": {
      "contrastive": {"name": "clip"},
      "decorrelation_image": {"name": "decorrelation", "weight": 0.1,
                              "inputs": {"z": "image_emb"}},
      "decorrelation_text": {"name": "decorrelation", "weight": 0.1,
                             "inputs": {"z": "text_emb"}},
  }})
  loss2 = ml_collections.ConfigDict({
      "name": "clip", "transforms": (f"memory_queue(size={32 if tiny else 1024})",)})
  loss3 = ml_collections.ConfigDict({"terms": {
      "contrastive": {"name": "clip(hard_negatives={'beta': 0.5})"},
      "consistency": {"name": "feature_consistency(kind='cosine')", "weight": 0.1,
                      "inputs": {"z": "image_emb", "z_ref": "text_emb"}},
  }})
  config.stage_order = ("projections", "top_blocks", "full")
  config.stages = ml_collections.ConfigDict({
      "projections": stage(steps[0], loss1, _rules(heads, frozen_rest=True)),
      "top_blocks": stage(steps[1], loss2, _rules(top, frozen_rest=True)),
      "full": stage(steps[2], loss3, _rules(heads, frozen_rest=False, backbone_multiplier=0.01)),
  })
  return config
