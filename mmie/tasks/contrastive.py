"""Contrastive image-text task (CLIP, SigLIP, LiT): a batch becomes the loss's named inputs."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from mmie.tasks.base import Task


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool) -> dict[str, jax.Array]:
  """Embeds both modalities; returns ``image_emb``, ``text_emb``, ``logit_scale`` (+ bias)."""
  outputs = apply_fn({"params": params}, batch["image"], batch["text"], train=train,
                     rngs={"dropout": rng})
  return dict(outputs)


TASK = Task(name="contrastive", forward=forward, batch_keys=("image", "text"))
