"""Self-supervised two-view task: both views of each image through one ``ImageEncoder``.

Batch (the ``two_views`` data view): ``view_a``, ``view_b`` [B, H, W, 3] and ``label`` [B]
(class ids, -1 when the source has none). The views run as one [2B] batch, so batch
statistics and compiled shapes are those of one pass. Outputs, named for the heads of
``docs/losses.md``:

  z_a, z_b        projections of each view (ntxent, dcl, vicreg, barlow_twins, memory queue)
  p_a, p_b        the predictor on each projection, when the model has one (BYOL / SimSiam)
  features        [B, 2, D] L2-normalised projections, labels [B]: ``supcon``'s inputs
  logits, targets view a's class logits and labels, when the model has a classifier (the
                  prototype's contrastive + classification multitask)
  z_a_momentum, z_b_momentum  the momentum encoder's projections, detached, with
                  ``train.ema_decay`` (MoCo's keys through the ``momentum_keys`` transform)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmie.tasks.base import Task


def _split(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  half = x.shape[0] // 2
  return x[:half], x[half:]


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def forward(apply_fn: Callable[..., Any], params: Any, batch: Mapping[str, jax.Array], *,
            rng: jax.Array, train: bool, ema_params: Any = None) -> dict[str, jax.Array]:
  """Both views -> the two-view heads' inputs (see the module docstring)."""
  views = jnp.concatenate([batch["view_a"], batch["view_b"]], axis=0)
  out = apply_fn({"params": params}, views, train=train, rngs={"dropout": rng})
  z_a, z_b = _split(out["z"])
  result = {"z_a": z_a, "z_b": z_b, "features": jnp.stack([_unit(z_a), _unit(z_b)], axis=1),
            "labels": batch["label"]}
  if "p" in out:
    result["p_a"], result["p_b"] = _split(out["p"])
  if "logits" in out:
    result["logits"] = _split(out["logits"])[0]
    result["targets"] = batch["label"]
  if ema_params is not None:
    momentum = apply_fn({"params": jax.lax.stop_gradient(ema_params)}, views, train=train,
                        rngs={"dropout": rng})
    result["z_a_momentum"], result["z_b_momentum"] = _split(momentum["z"])
  return result


def image_example(config: Any, batch_size: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  size = config.data.image_size
  batch = {k: np.zeros((batch_size, size, size, 3), np.float32) for k in keys}
  batch["label"] = np.zeros((batch_size,), np.int32)
  return batch


# Image-only evaluation: kNN (k = 20 and 200, as solo-learn and lightly report), the
# logistic-regression probe on the official test split, and collapse diagnostics.
SSL_EVALS = {
    "knn": {"type": "knn", "prefix": "eval/", "k": (20, 200)},
    "probe": {"type": "linear_probe", "prefix": "eval/"},
    "health": {"type": "collapse", "prefix": "eval/"},
}

TASK = Task(name="ssl", forward=forward, batch_keys=("view_a", "view_b"),
            example_batch=lambda config, n: image_example(config, n, ("view_a", "view_b")),
            init_args=lambda batch: (batch["view_a"],), data_view="two_views",
            default_evals=SSL_EVALS)
