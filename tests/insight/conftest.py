"""One tiny two-tower model (the tiny preset's shapes, two ViT layers) shared by insight tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmie.configs import clip as clip_config
from mmie.models import build_model, unbox


@pytest.fixture(scope="session")
def tiny_model():
  config = clip_config.get_config("tiny")
  config.model.image.depth = 2  # Rollout needs more than one layer to mean anything.
  model = build_model(config.model)
  images = jnp.zeros((1, 32, 32, 3))
  tokens = jnp.zeros((1, 16), jnp.int32)
  params = unbox(model.init(jax.random.PRNGKey(0), images, tokens)["params"])
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
           "text": jnp.asarray(rng.integers(3, 1000, size=(2, 16)), jnp.int32)}
  return model, params, batch
