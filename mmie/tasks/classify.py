"""Image classification (``ImageEncoder`` with ``num_classes``), with mixup and CutMix.

Batch (the ``labelled_image`` data view): ``image`` [B, H, W, 3], ``label`` [B]. Outputs:
``logits`` [B, C], ``targets`` [B] (the labels) and ``soft_targets`` [B, C], the one-hot
labels mixed as the images were. ``cross_entropy`` reads the first two (no mixing);
``soft_cross_entropy`` the soft targets (with mixup / CutMix, and label smoothing there).

Options (``task = "classify(mixup=0.8, cutmix=1.0)"``), as timm's ``Mixup``: ``mixup`` and
``cutmix`` are the Beta(alpha, alpha) concentrations (0 = off); with both on, each batch uses
one of them with probability 1/2; ``mix_prob`` is the chance that a batch is mixed at all.
Every example is mixed with its mirror in the batch (``x[::-1]``), with one ratio per batch,
and CutMix's ratio is corrected to the pasted box's real area. Only training batches mix.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mmie.tasks.base import Task
from mmie.tasks.ssl import image_example


def _cutmix_mask(rng: jax.Array, lam: jax.Array, height: int, width: int
                 ) -> tuple[jax.Array, jax.Array]:
  """A box of area ~(1 - lam) at a uniform centre, clipped: (mask [H, W] True inside, the
  kept fraction 1 - box area)."""
  cy_rng, cx_rng = jax.random.split(rng)
  cut = jnp.sqrt(1.0 - lam)
  h, w = cut * height, cut * width
  cy = jax.random.uniform(cy_rng, (), minval=0, maxval=height)
  cx = jax.random.uniform(cx_rng, (), minval=0, maxval=width)
  top, bottom = jnp.clip(jnp.round(cy - h / 2), 0, height), jnp.clip(jnp.round(cy + h / 2), 0,
                                                                     height)
  left, right = jnp.clip(jnp.round(cx - w / 2), 0, width), jnp.clip(jnp.round(cx + w / 2), 0,
                                                                    width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  mask = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  return mask, 1.0 - (bottom - top) * (right - left) / (height * width)


def mix(images: jax.Array, one_hot: jax.Array, rng: jax.Array, *, mixup: float,
        cutmix: float, mix_prob: float) -> tuple[jax.Array, jax.Array]:
  """Mixup / CutMix of a batch with its mirror: (mixed images, mixed soft targets)."""
  if mixup <= 0 and cutmix <= 0:
    return images, one_hot
  use_rng, choose_rng, lam_rng, box_rng = jax.random.split(rng, 4)
  mirrored, mirrored_targets = images[::-1], one_hot[::-1]
  use_cutmix = (jax.random.bernoulli(choose_rng) if mixup > 0 and cutmix > 0
                else jnp.asarray(cutmix > 0))
  alpha = jnp.where(use_cutmix, max(cutmix, 1e-6), max(mixup, 1e-6))
  lam = jax.random.beta(lam_rng, alpha, alpha)
  mask, cut_lam = _cutmix_mask(box_rng, lam, images.shape[1], images.shape[2])
  mixed_up = lam * images + (1 - lam) * mirrored
  cut = jnp.where(mask[None, :, :, None], mirrored, images)
  lam = jnp.where(use_cutmix, cut_lam, lam)
  mixed = jnp.where(use_cutmix, cut, mixed_up)
  apply = jax.random.bernoulli(use_rng, mix_prob)
  lam = jnp.where(apply, lam, 1.0)
  return (jnp.where(apply, mixed, images).astype(images.dtype),
          lam * one_hot + (1 - lam) * mirrored_targets)


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool, ema_params: Any = None, mixup: float = 0.0,
            cutmix: float = 0.0, mix_prob: float = 1.0) -> dict[str, jax.Array]:
  """Class logits of (mixed, when training) images; ``ema_params`` is accepted and unused."""
  del ema_params
  if mixup < 0 or cutmix < 0 or not 0 <= mix_prob <= 1:
    raise ValueError(f"classify: mixup={mixup} and cutmix={cutmix} must be >= 0 and "
                     f"mix_prob={mix_prob} in [0, 1].")
  if "classifier" not in params:
    raise ValueError("classify: the model has no classifier; set config.model.num_classes "
                     "(an image_encoder with num_classes > 0).")
  dropout_rng, mix_rng = jax.random.split(rng)
  images = batch["image"]
  num_classes = params["classifier"]["kernel"].shape[-1]
  soft = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
  if train:
    images, soft = mix(images, soft, mix_rng, mixup=mixup, cutmix=cutmix, mix_prob=mix_prob)
  out = apply_fn({"params": params}, images, train=train, rngs={"dropout": dropout_rng})
  return {"logits": out["logits"], "targets": batch["label"], "soft_targets": soft}


TASK = Task(name="classify", forward=forward, batch_keys=("image",),
            example_batch=lambda config, n: image_example(config, n, ("image",)),
            init_args=lambda batch: (batch["image"],), data_view="labelled_image",
            default_evals={"eval": {"type": "classification", "prefix": "eval/"}})
