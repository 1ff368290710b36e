"""CLIP head and the Loss protocol against an independent numpy implementation (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmie import losses


@pytest.fixture(autouse=True, scope="module")
def x64():
  """float64 for this module only; the previous setting is restored afterwards."""
  with jax.enable_x64(True):
    yield


def _np_log_softmax(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_clip(img, txt, scale, eps):
  """Radford et al. 2021 symmetric InfoNCE, with smoothed targets (1-e)I + e/B; analytic grads."""
  b = img.shape[0]
  sim = img @ txt.T
  logits = scale * sim
  target = (1 - eps) * np.eye(b) + eps / b
  lr, lc = _np_log_softmax(logits, 1), _np_log_softmax(logits, 0)
  i2t = -(target * lr).sum(1).mean()
  t2i = -(target * lc).sum(0).mean()
  loss = 0.5 * (i2t + t2i)
  # dL/dlogits: each row's softmax minus target, and each column's, averaged over B and halves.
  g = 0.5 * ((np.exp(lr) - target) + (np.exp(lc) - target)) / b
  return loss, scale * g @ txt, scale * g.T @ img, (g * sim).sum()


def _unit(key, shape):
  x = jax.random.normal(key, shape, jnp.float64)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


_grad = jax.jit(jax.value_and_grad(
    lambda i, t, s, e: losses.clip(i, t, logit_scale=s, label_smoothing=e)[0], argnums=(0, 1, 2)))


@pytest.mark.parametrize("batch,dim,scale,eps", [(2, 3, 1.0, 0.0), (5, 8, 14.3, 0.0),
                                                 (7, 4, 30.0, 0.1), (16, 32, 0.5, 0.3)])
def test_values_and_grads_match_numpy(batch, dim, scale, eps):
  k1, k2 = jax.random.split(jax.random.key(batch))
  img, txt = _unit(k1, (batch, dim)), _unit(k2, (batch, dim))
  loss, (gi, gt, gs) = _grad(img, txt, jnp.float64(scale), jnp.float64(eps))
  ref = np_clip(np.asarray(img), np.asarray(txt), scale, eps)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(loss, ref[0], rtol=1e-5)
  np.testing.assert_allclose(gi, ref[1], rtol=1e-5, atol=1e-12)
  np.testing.assert_allclose(gt, ref[2], rtol=1e-5, atol=1e-12)
  np.testing.assert_allclose(gs, ref[3], rtol=1e-5, atol=1e-12)


_clip = jax.jit(losses.clip)


def test_hand_computed_two_pairs():
  # Orthogonal matched pairs: logits = s*I, each row's loss is log(1 + e^{-s}).
  e = jnp.eye(2, dtype=jnp.float64)
  loss, metrics = _clip(e, e, logit_scale=3.0)
  np.testing.assert_allclose(loss, np.log1p(np.exp(-3.0)), rtol=1e-12)
  assert metrics["i2t_accuracy"] == 1.0 and metrics["t2i_accuracy"] == 1.0


def test_accuracy_metrics_are_in_batch_top1():
  img = jnp.eye(3, dtype=jnp.float64)
  txt = img[jnp.array([0, 2, 1])]  # only pair 0 retrieves its partner
  _, m = _clip(img, txt, logit_scale=10.0)
  np.testing.assert_allclose(m["i2t_accuracy"], 1 / 3)
  np.testing.assert_allclose(m["t2i_accuracy"], 1 / 3)
  for key in ("loss", "i2t_accuracy", "t2i_accuracy"):
    assert m[key].shape == ()


def test_shape_mismatch_is_clear():
  with pytest.raises(ValueError, match=r"\(4, 3\) and \(4, 5\)"):
    losses.clip(jnp.ones((4, 3)), jnp.ones((4, 5)), logit_scale=1.0)


def test_build_loss_protocol_matches_head():
  cfg = {"name": "clip(label_smoothing=0.1)", "transforms": ()}
  loss_fn = losses.build_loss(cfg)
  k1, k2 = jax.random.split(jax.random.key(0))
  inputs = {"image_emb": _unit(k1, (6, 4)), "text_emb": _unit(k2, (6, 4)),
            "logit_scale": jnp.float64(5.0), "logit_bias": jnp.float64(-1.0)}
  state = loss_fn.init(inputs)
  assert state == {}
  loss, metrics, new_state = jax.jit(loss_fn.apply)(inputs, state, step=jnp.int32(3),
                                                    rng=jax.random.key(0))
  ref = np_clip(np.asarray(inputs["image_emb"]), np.asarray(inputs["text_emb"]), 5.0, 0.1)[0]
  np.testing.assert_allclose(loss, ref, rtol=1e-10)
  np.testing.assert_allclose(metrics["loss"], ref, rtol=1e-10)
  assert new_state == {}


def test_build_loss_from_configdict():
  import ml_collections  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict({"name": "clip", "transforms": ()})
  assert isinstance(losses.build_loss(cfg), losses.Loss)


@pytest.mark.parametrize("cfg,error,match", [
    ({"name": "clpi"}, KeyError, "Did you mean 'clip'.*Known loss heads: .*clip"),
    ({"name": "clip(temperature=0.1)"}, TypeError, "unexpected keyword.*accepts.*label_smoothing"),
    ({"name": "clip(0.1)"}, TypeError, "by keyword"),
    ({"name": "clip(label_smoothing=x)"}, ValueError, "not a python literal"),
    ({"name": "clip", "transform": ()}, KeyError, "unknown key.*transform"),
    ({"name": "clip", "transforms": "memory_queue"}, TypeError, "sequence of call-strings"),
])
def test_bad_config_errors_are_actionable(cfg, error, match):
  with pytest.raises(error, match=match):
    losses.build_loss(cfg)


def test_missing_input_names_what_exists():
  loss_fn = losses.build_loss({"name": "clip"})
  inputs = {"image_emb": jnp.ones((2, 2)), "text_emb": jnp.ones((2, 2))}
  with pytest.raises(KeyError, match="needs input 'logit_scale'.*image_emb"):
    loss_fn.apply(inputs, {}, step=0, rng=jax.random.key(0))


def test_config_and_input_conflict_is_an_error():
  loss_fn = losses.build_loss({"name": "clip(logit_scale=2.0)"})
  inputs = {"image_emb": jnp.ones((2, 2)), "text_emb": jnp.ones((2, 2)), "logit_scale": 1.0}
  with pytest.raises(ValueError, match="given by the config"):
    loss_fn.apply(inputs, {}, step=0, rng=jax.random.key(0))


def test_parse_call():
  assert losses.parse_call("memory_queue") == ("memory_queue", (), {})
  assert losses.parse_call(" f(1, a='x', b=(2, 3), c=None) ") == (
      "f", (1,), {"a": "x", "b": (2, 3), "c": None})
  for bad in ("", "f(", "a.b(1)", "f(**d)", "f(g(1))"):
    with pytest.raises(ValueError):
      losses.parse_call(bad)


@pytest.mark.parametrize("block_size", [1, 3, 4, 7])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_chunked_rows_give_both_directions_as_numpy(block_size, eps):
  """Chunked CLIP makes one pass for both directions: text->image comes from per-block column
  partials (log-sum-exp of log-sum-exps, sums, maxima). 3 and 4 do not divide 7: the last
  block's padding rows must reach neither the rows nor the columns."""
  k1, k2 = jax.random.split(jax.random.key(block_size))
  img, txt = _unit(k1, (7, 5)), _unit(k2, (7, 5))
  txt = txt.at[2].set(img[4])  # Text 2 retrieves image 4, not its own: accuracies below 1.
  fn = lambda i, t, s: losses.clip(i, t, logit_scale=s, label_smoothing=eps,
                                   block_size=block_size)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True))(
      img, txt, jnp.float64(9.0))
  ref = np_clip(np.asarray(img), np.asarray(txt), 9.0, eps)
  np.testing.assert_allclose(loss, ref[0], rtol=1e-10)
  for got, want in zip(grads, ref[1:]):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  sim = np.asarray(img) @ np.asarray(txt).T
  np.testing.assert_allclose(metrics["i2t_accuracy"], np.mean(sim.argmax(1) == np.arange(7)))
  np.testing.assert_allclose(metrics["t2i_accuracy"], np.mean(sim.argmax(0) == np.arange(7)))
  assert metrics["t2i_accuracy"] < 1.0
