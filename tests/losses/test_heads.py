"""Every head against an independent numpy implementation: values and gradients, float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmie import losses

from . import reference as ref


@pytest.fixture(autouse=True, scope="module")
def x64():
  with jax.enable_x64(True):
    yield


def _rand(seed, shape, unit=False):
  x = np.random.default_rng(seed).normal(size=shape)
  return ref.normalize(x) if unit else x


def _labels(seed, n, classes):
  return np.random.default_rng(seed).integers(0, classes, n)


# name -> (jax loss of the array args, numpy loss of the same args, args builder(batch, dim))
CASES = {
    "siglip": (lambda a, b: losses.siglip(a, b, logit_scale=7.0, logit_bias=-3.0)[0],
               lambda a, b: ref.siglip(a, b, 7.0, -3.0),
               lambda n, d: (_rand(1, (n, d), True), _rand(2, (n, d), True))),
    "ntxent": (lambda a, b: losses.ntxent(a, b, temperature=0.3)[0],
               lambda a, b: ref.ntxent(a, b, 0.3),
               lambda n, d: (_rand(3, (n, d)), _rand(4, (n, d)))),
    "dcl": (lambda a, b: losses.dcl(a, b, temperature=0.2)[0],
            lambda a, b: ref.dcl(a, b, 0.2),
            lambda n, d: (_rand(5, (n, d)), _rand(6, (n, d)))),
    "dclw": (lambda a, b: losses.dclw(a, b, temperature=0.4, sigma=0.5)[0],
             lambda a, b: ref.dcl(a, b, 0.4, sigma=0.5),
             lambda n, d: (_rand(7, (n, d)), _rand(8, (n, d)))),
    "supcon": (lambda f: losses.supcon(f, jnp.asarray(_labels(0, f.shape[0], 3)),
                                       temperature=0.5)[0],
               lambda f: ref.supcon(f, _labels(0, f.shape[0], 3), 0.5),
               lambda n, d: (_rand(9, (n, 2, d), True),)),
    "vicreg": (lambda a, b: losses.vicreg(a, b)[0], ref.vicreg,
               lambda n, d: (_rand(10, (n, d)) * 0.7, _rand(11, (n, d)) * 1.3)),
    "vicreg_coeffs": (lambda a, b: losses.vicreg(a, b, sim_coeff=2.0, std_coeff=3.0,
                                                 cov_coeff=0.5)[0],
                      lambda a, b: ref.vicreg(a, b, 2.0, 3.0, 0.5),
                      lambda n, d: (_rand(12, (n, d)) * 0.5, _rand(13, (n, d)))),
    "barlow_twins": (lambda a, b: losses.barlow_twins(a, b, lambda_=0.05)[0],
                     lambda a, b: ref.barlow_twins(a, b, 0.05),
                     lambda n, d: (_rand(14, (n, d)), _rand(15, (n, d)))),
    "decorrelation": (lambda z: losses.decorrelation(z, eps=0.0)[0], ref.decorrelation,
                      lambda n, d: (_rand(16, (n, d)),)),
    "ntxent_hard": (lambda a, b: losses.ntxent(
        a, b, temperature=0.5, hard_negatives=losses.HardNegatives("importance", 1.5, 0.1))[0],
                    lambda a, b: ref.robinson_ntxent(a, b, 0.5, 1.5, 0.1),
                    lambda n, d: (_rand(17, (n, d)), _rand(18, (n, d)))),
}


@functools.cache
def _jitted(name):
  fn = CASES[name][0]
  return jax.jit(jax.value_and_grad(fn, argnums=tuple(range(fn.__code__.co_argcount))))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch,dim", [(4, 3), (7, 5)])
def test_head_matches_numpy(name, batch, dim):
  _, np_fn, make = CASES[name]
  args = make(batch, dim)
  value, grads = _jitted(name)(*[jnp.asarray(a) for a in args])
  np.testing.assert_allclose(value, np_fn(*args), rtol=1e-5)
  for i, g in enumerate(grads):
    def f(x, i=i):
      return np_fn(*[x if j == i else a for j, a in enumerate(args)])
    np.testing.assert_allclose(g, ref.numeric_grad(f, args[i]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_with_smoothing_and_padding(eps):
  logits = _rand(20, (3, 5, 7))
  targets = _labels(21, 15, 7).reshape(3, 5)
  mask = np.ones((3, 5))
  mask[0, 3:] = mask[2, 1:] = 0.0
  fn = jax.jit(jax.value_and_grad(lambda x: losses.cross_entropy(
      x, jnp.asarray(targets), mask=jnp.asarray(mask), label_smoothing=eps)[0]))
  value, grad = fn(jnp.asarray(logits))
  np.testing.assert_allclose(value, ref.cross_entropy(logits, targets, mask, eps), rtol=1e-5)
  num = ref.numeric_grad(lambda x: ref.cross_entropy(x, targets, mask, eps), logits)
  np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
  assert np.all(np.asarray(grad)[mask == 0] == 0)  # padding gets no gradient


def test_cross_entropy_metrics():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]]))
  _, m = jax.jit(losses.cross_entropy)(logits, jnp.array([0, 1, 1]), mask=jnp.array([1, 1, 0]))
  np.testing.assert_allclose(m["accuracy"], 0.5)
  np.testing.assert_allclose(m["nll"], -(np.log(0.7) + np.log(0.1)) / 2)
  assert m["num_targets"] == 2


@pytest.mark.parametrize("kind,expected", [("mse", (1 + 1 + 4) / 4), ("l1", (1 + 1 + 2) / 4),
                                           ("cosine", (1 - 0.0 + 1 - 1.0) / 2)])
def test_feature_consistency_hand_computed(kind, expected):
  z = jnp.array([[1.0, 0.0], [0.0, 3.0]])
  z_ref = jnp.array([[0.0, 1.0], [0.0, 1.0]])
  loss, _ = losses.feature_consistency(z, z_ref, kind=kind)
  np.testing.assert_allclose(loss, expected)
  grad_ref = jax.grad(lambda r: losses.feature_consistency(z, r, kind=kind)[0])(z_ref)
  assert np.all(np.asarray(grad_ref) == 0)  # the reference is a fixed target


def test_supcon_anchor_without_positive_contributes_zero():
  # Single view, labels [0, 0, 1]: anchor 2 has no positive, and adds 0 to the mean of 3.
  f = _rand(22, (3, 1, 4), True)
  labels = np.array([0, 0, 1])
  loss, _ = jax.jit(losses.supcon)(jnp.asarray(f), jnp.asarray(labels), temperature=0.5)
  np.testing.assert_allclose(loss, ref.supcon(f, labels, 0.5), rtol=1e-10)


@pytest.mark.parametrize("call,match", [
    (lambda: losses.siglip(jnp.ones((2, 3)), jnp.ones((3, 3)), logit_scale=1.0, logit_bias=0.0),
     r"\(2, 3\) and \(3, 3\)"),
    (lambda: losses.supcon(jnp.ones((4, 3)), jnp.zeros(4, int)), r"\[batch, views, dim\]"),
    (lambda: losses.vicreg(jnp.ones((1, 3)), jnp.ones((1, 3))), "batch >= 2"),
    (lambda: losses.feature_consistency(jnp.ones(2), jnp.ones(2), kind="kl"), "unknown kind 'kl'"),
    (lambda: losses.cross_entropy(jnp.ones((2, 3)), jnp.zeros(3, int)), "plus a classes axis"),
    (lambda: losses.cross_entropy(jnp.ones((2, 3)), jnp.zeros(2)), "integer class ids"),
])
def test_bad_inputs_are_clear(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()
