"""ViT classification from scratch on Fashion-MNIST: the convolutional-stem ViT of
configs/vision.py, label smoothing 0.1, flips, AdamW (lr 2e-3) with cosine decay over 6,000
steps of 128 (12.8 epochs): 91.8% top-1 in 11.6 minutes on 2 CPU cores at 1,135 images/s
(README, "Vision recipes"). Top-1 / top-5 on the official test split. Presets as
configs/vision.py.

Mixup and CutMix are the task's options, ``task="classify(mixup=0.8, cutmix=1.0,
mix_prob=0.5)"`` (timm's DeiT recipe); like random resized crops they pay off over hundreds
of epochs and cost accuracy over the 8-13 epochs here (README, "Vision recipes", has the
measured runs).
"""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = vision.check_preset(arg, "vit_classify")
  config = vision.base(preset, task="classify", batch_size=128, total_steps=6000,
                       learning_rate=2e-3, weight_decay=0.05)
  config.model.num_classes = 9 if preset == "tiny" else 10  # Emoji categories / clothes.
  config.data.augment.random_flip = True
  config.loss = ml_collections.ConfigDict({
      "name": "soft_cross_entropy(label_smoothing=0.1)"})
  return config
