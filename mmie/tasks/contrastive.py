"""Contrastive image-text task (CLIP, SigLIP, LiT): a batch becomes the loss's named inputs."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from mmie.tasks.base import Task


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool, ema_params: Any = None) -> dict[str, jax.Array]:
  """Embeds both modalities; returns ``image_emb``, ``text_emb``, ``logit_scale`` (+ bias).

  With ``ema_params`` (a momentum encoder, ``train.ema_decay``) it also returns the momentum
  encoder's ``image_emb_momentum`` / ``text_emb_momentum``, detached, for MoCo-style keys.
  """
  outputs = dict(apply_fn({"params": params}, batch["image"], batch["text"], train=train,
                          rngs={"dropout": rng}))
  if ema_params is not None:
    momentum = apply_fn({"params": jax.lax.stop_gradient(ema_params)}, batch["image"],
                        batch["text"], train=train, rngs={"dropout": rng})
    outputs["image_emb_momentum"] = momentum["image_emb"]
    outputs["text_emb_momentum"] = momentum["text_emb"]
  return outputs


TASK = Task(name="contrastive", forward=forward, batch_keys=("image", "text"),
            default_evals={"eval": {"type": "contrastive", "prefix": "eval/"}})
