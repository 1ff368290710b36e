"""CLIP dual encoder trained from scratch on the embedded emoji image-caption set.

Presets (``--config=configs/clip.py:PRESET[,key=value...]``):
  default  the README run: minutes on 2 CPU cores, with the settings that generalise best to
           emoji it never saw (``generalising``; docs/experiments.md).
  base     the default before those settings (the emoji set's own BPE, no augmentation, 500
           steps): what the recipes built on CLIP start from, and the experiments' baseline.
  tiny     a seconds-long smoke run used by the tests.
  b16, l14 pod scale: CLIP ViT-B/16 and ViT-L/14 (Radford et al. 2021) at 224 pixels, text
           context 77, bfloat16 compute on float32 weights, rematerialised scanned blocks, the
           contrastive loss over the whole global batch (negatives gathered across the batch
           axes, in row blocks), and a (data, fsdp, model) mesh. Arguments (defaults in
           POD_ARGUMENTS): batch, data, fsdp, model, remat, scan, block_size, steps, e.g.
           ``configs/clip.py:b16,batch=32768,fsdp=16``. Point ``data.name`` at your data
           (README, "Train on your own image-caption data"); ``python -m mmie.train.aot``
           checks that a preset fits before launch (docs/scaling.md has the figures).
"""

import math

import ml_collections

from mmie.configs import presets

POD_ARGUMENTS = {"batch": 32768, "data": -1, "fsdp": 8, "model": 1, "remat": "full",
                 "scan": True, "block_size": 2048, "steps": 20000}
# (image: patch, width, depth, heads, mlp; text: width, depth, heads, mlp; embedding).
POD_SIZES = {"b16": ((16, 768, 12, 12, 3072), (512, 12, 8, 2048), 512),
             "l14": ((14, 1024, 24, 16, 4096), (768, 12, 12, 3072), 768)}
PRESETS = {"default": {}, "base": {}, "tiny": {},
           **{name: POD_ARGUMENTS for name in POD_SIZES}}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the CLIP config; ``arg`` names a preset and its arguments (module docstring)."""
  preset, args = presets.parse(arg, "configs/clip.py", PRESETS)
  if preset in POD_SIZES:
    return pod_config(base_config(False), POD_SIZES[preset], args)
  if preset == "default":
    return generalising(base_config(False))
  return base_config(preset == "tiny")


def recipe_base(preset: str) -> ml_collections.ConfigDict:
  """What the recipes built on CLIP (SigLIP, MoCo, GradCache, ...) start from: ``get_config``
  with ``base`` for ``default``, so each recipe's measured figures hold."""
  return get_config("base" if preset == "default" else preset)


def generalising(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with the settings that won on emoji it never saw (docs/experiments.md).

  The shipped general-English WordPiece vocabulary keeps an unseen name's words whole where
  a BPE trained on the training names splits them into bytes; random resized crops keep the
  image tower from memorising the 1,717 pictures, which lets it use twice the steps. The
  ``tiny`` preset keeps the emoji set's own BPE: its runs are the tests' export and
  conversion fixtures, whose token ids are pinned to it.
  """
  config.data.tokenizer = "bert_uncased"  # mmie/assets/vocab/bert_uncased (Apache-2.0).
  config.model.text.vocab_size = 30522
  config.model.text.eos_id = 102  # [SEP]; [CLS] = 101 begins each caption, [PAD] = 0.
  config.data.augment.random_resized_crop = True
  config.data.augment.crop_scale = (0.6, 1.0)
  config.total_steps = 1000
  config.eval_every = 500
  return config


def pod_config(config: ml_collections.ConfigDict, sizes: tuple, args: dict,
               loss: str = "clip", context_length: int = 77, vocab_size: int = 49408,
               image_size: int = 224) -> ml_collections.ConfigDict:
  """``config`` at pod scale: the tower ``sizes`` and the preset arguments ``args``."""
  (patch, width, depth, heads, mlp), (t_width, t_depth, t_heads, t_mlp), embed = sizes
  image, text = config.model.image, config.model.text
  image.image_size, image.patch_size, image.width, image.depth = image_size, patch, width, depth
  image.num_heads, image.mlp_dim = heads, mlp
  text.width, text.depth, text.num_heads, text.mlp_dim = t_width, t_depth, t_heads, t_mlp
  text.context_length, text.vocab_size = context_length, vocab_size
  config.model.embed_dim = embed
  config.model.dtype, config.model.param_dtype = "bfloat16", "float32"
  # remat: a policy of mmie/models/remat.py; true / false stand for full / none.
  remat = {"true": "full", "false": "none"}.get(args["remat"].lower(), args["remat"])
  config.model.remat, config.model.scan_layers = remat, args["scan"]
  config.mesh = {"data": args["data"], "fsdp": args["fsdp"], "model": args["model"]}
  config.batch_size, config.total_steps = args["batch"], args["steps"]
  config.log_every, config.eval_every, config.checkpoint_every = 100, 2000, 1000
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 5e-4, 2000
  config.loss.name = (f"{loss}(axis_name=('data', 'fsdp'), block_size={args['block_size']})")
  return config


def base_config(tiny: bool) -> ml_collections.ConfigDict:
  """The emoji-scale config: the README run, or with ``tiny`` the tests' smoke run."""

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
      # With the emoji set's own BPE (tiny), only words of training captions stay whole.
      "{}",
      "the {}",
      "{} symbol",
      "{} sign",
  )
  # Evaluators: the contrastive task's default (retrieval, zero-shot and representation
  # diagnostics on data.eval_split, as eval/...); see docs/evaluation.md for config.evals.
  return config
