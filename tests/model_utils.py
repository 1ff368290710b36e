"""Helpers shared by model and task tests."""

import jax
import numpy as np

from mmie.models import unbox


def random_params(model, *args, seed=0):
  """Random parameters from the model's shapes alone (``eval_shape``: no init compile);
  LayerNorm scales near 1, everything else N(0, 0.2^2), so every weight and bias matters."""
  shapes = unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
  rng = np.random.default_rng(seed)

  def fill(path, s):
    noise = rng.normal(size=s.shape).astype(s.dtype)
    return 1.0 + 0.1 * noise if str(path[-1].key) == "scale" else 0.2 * noise

  return jax.tree_util.tree_map_with_path(fill, shapes)
