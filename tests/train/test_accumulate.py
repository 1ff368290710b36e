"""Gradient accumulation: GradCache is exact for contrastive losses; 'mean' only for per-example ones.

'mean' averages the gradients of k micro-batches, each a loss over its own examples. For a loss
that is a mean over independent examples (MSE, cross-entropy) that is the full-batch gradient.
For CLIP each micro-batch sees only its own B/k negatives, so the loss itself changes (an
easier B/k-way classification) and so does its gradient: hence GradCache, which keeps every
negative and still only back-propagates one micro-batch at a time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmie.configs import clip
from mmie.losses import build_loss
from mmie.models import build_model, unbox
from mmie.tasks import get_task
from mmie.train import accumulate

K = 4
BATCH = 16


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  text = rng.integers(3, 1000, size=(BATCH, config.model.text.context_length)).astype(np.int32)
  text[:, 7] = 2  # End-of-text token.
  return {"image": jnp.asarray(rng.normal(size=(BATCH, 32, 32, 3)), jnp.float32),
          "text": jnp.asarray(text)}


def _clip_setup(loss_config):
  """Tiny two-tower model, its params, a batch, and the (forward, loss_apply) pair."""
  config = clip.get_config("tiny")
  model = build_model(config.model)
  batch = _batch(config)
  params = unbox(model.init(jax.random.PRNGKey(0), batch["image"][:1], batch["text"][:1])
                 ["params"])
  task = get_task(config.task)
  key = jax.random.PRNGKey(1)
  forward = lambda p, b, i=0: task.forward(model.apply, p, b, rng=key, train=True)
  loss = build_loss(loss_config)
  loss_state = loss.init(jax.lax.stop_gradient(forward(params, batch)))
  loss_apply = lambda inputs, ls: loss.apply(inputs, ls, step=jnp.zeros((), jnp.int32), rng=key)
  return params, batch, loss_state, forward, loss_apply


def _run(kind, setup, k=K):
  params, batch, loss_state, forward, loss_apply = setup
  fn = accumulate.whole if kind == "whole" else getattr(accumulate, kind)
  extra = {} if kind == "whole" else {"k": k}
  value, _, new_state, grads = jax.jit(
      lambda p, b, s: fn(p, b, s, forward, loss_apply, **extra))(params, batch, loss_state)
  return float(value), jax.device_get(new_state), jax.device_get(grads)


def _assert_tree_close(a, b, rtol, atol=1e-7):
  """Elementwise closeness, with float32 summation noise allowed relative to each leaf's
  largest entry (a near-zero entry of a large gradient differs by more than ``rtol`` of itself
  when the sum over examples is taken in a different order) and an absolute floor for
  gradients that are zero in exact arithmetic (attention key biases)."""
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    scale = float(np.max(np.abs(y))) if np.size(y) else 0.0
    np.testing.assert_allclose(x, y, rtol=rtol, atol=max(atol, rtol * scale),
                               err_msg=jax.tree_util.keystr(path))


def _max_rel_diff(a, b):
  num = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return num / max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a))


class _Lazy(dict):
  """Computes (and compiles) each accumulation kind only when a test first asks for it."""

  def __init__(self, setup):
    super().__init__()
    self.setup = setup

  def __missing__(self, kind):
    self[kind] = _run(kind, self.setup)
    return self[kind]


@pytest.fixture(scope="module")
def clip_results():
  return _Lazy(_clip_setup({"name": "clip", "transforms": ()}))


def test_gradcache_is_the_full_batch_gradient(clip_results):
  value, _, grads = clip_results["whole"]
  gc_value, _, gc_grads = clip_results["gradcache"]
  assert gc_value == pytest.approx(value, rel=1e-6)
  _assert_tree_close(gc_grads, grads, rtol=1e-5)
  assert all(np.any(g != 0) for g in jax.tree.leaves(grads)), "some gradient is all zero"


def test_mean_accumulation_is_not_the_clip_gradient(clip_results):
  """Documented limitation: each micro-batch loses the other micro-batches' negatives."""
  value, _, grads = clip_results["whole"]
  mean_value, _, mean_grads = clip_results["mean"]
  assert mean_value < value - 0.1  # B/k-way classification is easier than B-way.
  assert _max_rel_diff(grads, mean_grads) > 1e-2


@pytest.mark.slow
def test_gradcache_keeps_loss_state_exact():
  """A memory queue sees the same full-batch keys, and updates the same, under GradCache."""
  setup = _clip_setup({"name": "clip", "transforms": ("memory_queue(size=32)",)})
  value, state, grads = _run("whole", setup)
  gc_value, gc_state, gc_grads = _run("gradcache", setup)
  assert gc_value == pytest.approx(value, rel=1e-6)
  _assert_tree_close(gc_state, state, rtol=1e-5)
  _assert_tree_close(gc_grads, grads, rtol=1e-5)


def _mse_setup(n=BATCH):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  batch = {"x": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)}
  forward = lambda p, b, i=0: {"pred": b["x"] @ p["w"] + p["b"], "target": b["y"]}
  loss_apply = lambda inputs, ls: (jnp.mean((inputs["pred"] - inputs["target"]) ** 2), {}, ls)
  return params, batch, (), forward, loss_apply


def test_mean_and_gradcache_exact_for_per_example_loss():
  setup = _mse_setup()
  params, batch = jax.device_get(setup[0]), jax.device_get(setup[1])
  # Hand-derived: L = mean((xW + b - y)^2) over N*D entries.
  residual = batch["x"] @ params["w"] + params["b"] - batch["y"]
  scale = 2.0 / residual.size
  expected = {"w": scale * batch["x"].T @ residual, "b": scale * residual.sum(0)}
  for kind in ("whole", "mean", "gradcache"):
    value, _, grads = _run(kind, setup)
    assert value == pytest.approx(float(np.mean(residual ** 2)), rel=1e-5), kind
    _assert_tree_close(grads, expected, rtol=1e-5, atol=1e-6)


def test_batch_must_split_into_micro_batches():
  with pytest.raises(ValueError, match="does not split into 4 micro-batches"):
    _run("mean", _mse_setup(n=10))
