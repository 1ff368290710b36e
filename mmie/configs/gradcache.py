"""CLIP with GradCache accumulation (Gao et al. 2021): a large contrastive batch whose
activations never live in memory at once.

Every micro-batch is embedded without keeping its activations, the loss and its gradient
with respect to the embeddings are computed over the whole batch (all B x B logits), and
each micro-batch is then re-run to backpropagate those embedding gradients. The update
equals the full-batch update (tests/train/test_accumulate.py), unlike the mean of
micro-batch losses, whose negatives are only the micro-batch's.

Presets: ``default`` (batch 512 in 4 micro-batches of 128) and ``tiny`` (seconds; the tests).
"""

import ml_collections

from mmie.configs import clip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the GradCache CLIP config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  config = clip.recipe_base(preset)
  tiny = preset == "tiny"
  config.train = ml_collections.ConfigDict()
  config.train.accumulation = "gradcache"
  config.train.grad_accum_steps = 2 if tiny else 4
  if not tiny:
    config.batch_size = 512
    config.total_steps = 250  # Twice the examples of configs/clip.py (250 x 512 = 128k).
    config.log_every, config.eval_every, config.checkpoint_every = 25, 125, 50
    config.optimizer.warmup_steps = 25
  return config
