"""ViT classification from scratch: label smoothing 0.1, mixup 0.8 / CutMix 1.0 (timm's
DeiT recipe, applied with probability 0.5 for this small model), random crops and flips,
AdamW with cosine decay. Top-1 / top-5 on the official test split. Presets as
configs/vision.py."""

import ml_collections

from configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = vision.check_preset(arg, "vit_classify")
  config = vision.base(preset, task="classify(mixup=0.8, cutmix=1.0, mix_prob=0.5)",
                       batch_size=128, total_steps=3000, learning_rate=1e-3,
                       weight_decay=0.05)
  config.model.num_classes = 9 if preset == "tiny" else 10  # Emoji categories / clothes.
  config.data.augment.random_flip = True
  config.data.augment.random_resized_crop = True
  config.data.augment.crop_scale = (0.8, 1.0)
  config.loss = ml_collections.ConfigDict({
      "name": "soft_cross_entropy(label_smoothing=0.1)"})
  return config
