"""CLIP dual encoder trained from scratch on the embedded emoji image-caption set.

Presets (``--config=configs/clip.py:PRESET``):
  default  the README run: a few minutes on 2 CPU cores, clearly above chance.
  tiny     a seconds-long smoke run used by the tests.
"""

import math

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the CLIP config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  if preset not in ("default", "tiny"):
    raise ValueError(f"configs/clip.py: unknown preset {preset!r}; choose 'default' or 'tiny'.")
  tiny = preset == "tiny"

  config = ml_collections.ConfigDict()
  config.task = "contrastive"
  config.seed = 0
  config.batch_size = 16 if tiny else 128
  config.total_steps = 6 if tiny else 500
  config.log_every = 2 if tiny else 25
  config.eval_every = 6 if tiny else 250
  config.checkpoint_every = 3 if tiny else 100
  config.keep_checkpoints = 2

  config.model = ml_collections.ConfigDict()
  config.model.name = "two_tower"
  config.model.embed_dim = 32 if tiny else 64
  config.model.logit_scale_init = math.log(1 / 0.07)
  config.model.logit_scale_max = 100.0
  config.model.logit_bias_init = None  # A float turns on SigLIP's learnable bias.
  config.model.dtype = "float32"

  config.model.image = ml_collections.ConfigDict()
  config.model.image.name = "vit"
  config.model.image.image_size = 32
  config.model.image.patch_size = 8 if tiny else 4
  config.model.image.width = 32 if tiny else 64
  config.model.image.depth = 1 if tiny else 4
  config.model.image.num_heads = 2
  config.model.image.mlp_dim = 64 if tiny else 256
  config.model.image.pool = "cls"

  config.model.text = ml_collections.ConfigDict()
  config.model.text.name = "text_transformer"
  config.model.text.vocab_size = 1024
  config.model.text.context_length = 16
  config.model.text.width = 32 if tiny else 128
  config.model.text.depth = 1 if tiny else 2
  config.model.text.num_heads = 2 if tiny else 4
  config.model.text.mlp_dim = 64 if tiny else 512
  config.model.text.causal = True
  config.model.text.pool = "eos"
  config.model.text.eos_id = 2
  config.model.text.pad_id = 0

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "clip"
  config.loss.transforms = ()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 2 if tiny else 50
  config.optimizer.end_learning_rate_ratio = 0.0
  config.optimizer.weight_decay = 0.2
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.98
  config.optimizer.eps = 1e-6
  config.optimizer.grad_clip_norm = 1.0

  config.data = ml_collections.ConfigDict()
  config.data.name = "emoji"
  config.data.data_dir = ""  # Empty: $MMIE_DATA_DIR or ~/.cache/mmie/tensorflow_datasets.
  config.data.image_size = config.model.image.get_ref("image_size")
  config.data.context_length = config.model.text.get_ref("context_length")
  config.data.tokenizer = ""  # Empty: the source's own; or a tokenizer.json / HF directory.
  config.data.cache_mb = 1024
  config.data.worker_count = 0
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.random_flip = False  # Flipping changes "arrow pointing left" emoji.
  config.data.augment.random_resized_crop = False
  config.data.augment.crop_scale = (0.5, 1.0)
  config.data.augment.color_jitter = 0.0
  config.data.prompt_templates = (
      # Words the tokenizer saw in training captions; unseen words split into bytes.
      "{}",
      "the {}",
      "{} symbol",
      "{} sign",
  )
  # Evaluators: the contrastive task's default (retrieval, zero-shot and representation
  # diagnostics on data.eval_split, as eval/...); see docs/evaluation.md for config.evals.
  return config
