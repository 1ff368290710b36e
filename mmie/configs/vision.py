"""Blocks shared by the vision recipes (``simclr``, ``moco_ssl``, ``vicreg``, ``barlow_twins``,
``dcl``, ``supcon``, ``ssl_hybrid``, ``vit_classify``, ``classify_multitask``).

Fashion-MNIST (Debian's ``dataset-fashion-mnist``: 60k train / the official 10k test split
as ``validation``) at 28 px, a small ViT sized for 2 CPU cores (a 3-conv stem to a 4x4 map:
16 tokens + a class token; width 96, 4 layers; about 44 MFLOP per image per train step),
AdamW with warmup and cosine decay. The SSL recipes add a projector and a two-view preset; the
classifier a linear head. ``preset`` is ``default`` (minutes on 2 CPU cores) or ``tiny``
(seconds; the tests, on the embedded emoji set and its category labels).
"""

from __future__ import annotations

import ml_collections

PRESETS = ("default", "tiny")


def check_preset(arg: str | None, recipe: str) -> str:
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"configs/{recipe}.py: unknown preset {preset!r}; choose 'default' or "
                     "'tiny'.")
  return preset


def base(preset: str, *, task: str, batch_size: int, total_steps: int,
         learning_rate: float, weight_decay: float) -> ml_collections.ConfigDict:
  """Everything but the loss, the heads and the augmentation."""
  tiny = preset == "tiny"
  config = ml_collections.ConfigDict()
  config.task = task
  config.seed = 0
  config.batch_size = 16 if tiny else batch_size
  config.total_steps = 4 if tiny else total_steps
  # References, so `--config.total_steps=N` also moves the evaluations and the warmup.
  steps = config.get_ref("total_steps")
  config.log_every = 2 if tiny else 50
  config.eval_every = 4 if tiny else (steps + 3) // 4  # Four evaluations, the last at the end.
  config.checkpoint_every = 2 if tiny else config.get_ref("eval_every")
  config.keep_checkpoints = 2

  config.model = ml_collections.ConfigDict()
  config.model.name = "image_encoder"
  # A convolutional stem (3x3 stride-2 convs) then 1-px patches: 28 -> 14 -> 7 -> 4, so 16
  # tokens as 7-px patches would give, but trained to a higher accuracy in the same minutes
  # (docs/adr/0011-conv-stem-for-small-images.md).
  config.model.image = ml_collections.ConfigDict({
      "name": "vit", "image_size": 32 if tiny else 28, "patch_size": 4 if tiny else 1,
      "stem_channels": (8, 16) if tiny else (32, 64, 96),
      "width": 32 if tiny else 96, "depth": 1 if tiny else 4, "num_heads": 2 if tiny else 4,
      "mlp_dim": 64 if tiny else 192, "pool": "cls"})

  config.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": learning_rate, "weight_decay": weight_decay,
      "warmup_steps": 1 if tiny else (steps + 19) // 20, "schedule": "cosine",
      "end_learning_rate_ratio": 0.0, "b1": 0.9, "b2": 0.999, "grad_clip_norm": 1.0})

  config.data = ml_collections.ConfigDict()
  # tiny: the embedded emoji set, labelled by its 9 Unicode categories (seconds to prepare).
  config.data.name = "emoji" if tiny else "fashion_mnist"
  config.data.image_size = config.model.image.get_ref("image_size")
  # Greyscale replicated to RGB: statistics of Fashion-MNIST's pixels, on every channel.
  config.data.mean = (0.2860, 0.2860, 0.2860)
  config.data.std = (0.3530, 0.3530, 0.3530)
  config.data.augment = ml_collections.ConfigDict()
  return config


def ssl(preset: str, *, projector: tuple[int, ...] = (512, 128), views: str = "simclr",
        total_steps: int = 1000, batch_size: int = 256, learning_rate: float = 1e-3,
        weight_decay: float = 0.05) -> ml_collections.ConfigDict:
  """A two-view SSL run: ``ssl`` task, projector head, the ``views`` augmentation preset.

  The default evaluators (kNN k=20/200, logistic probe, collapse diagnostics) run on the
  official test split with the whole 60k training split as the probe's training set.
  """
  tiny = preset == "tiny"
  config = base(preset, task="ssl", batch_size=batch_size, total_steps=total_steps,
                learning_rate=learning_rate, weight_decay=weight_decay)
  config.model.projector = (64, 32) if tiny else projector
  config.data.augment.views = views
  train_size = 256 if tiny else 60_000
  config.evals = ml_collections.ConfigDict({
      "knn": {"type": "knn", "prefix": "eval/", "k": (20, 200), "max_train": train_size},
      "probe": {"type": "linear_probe", "prefix": "eval/", "max_train": train_size},
      "health": {"type": "collapse", "prefix": "eval/"}})
  return config
