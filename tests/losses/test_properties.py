"""Hypothesis properties: batch permutation, symmetry, temperature limits, fixed points."""

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmie import losses

from . import reference as ref

N, D = 6, 4
LABELS = np.array([0, 1, 0, 2, 1, 2])
SETTINGS = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**31 - 1)


@pytest.fixture(autouse=True, scope="module")
def x64():
  with jax.enable_x64(True):
    yield


def _pair(seed, unit=True):
  rng = np.random.default_rng(seed)
  a, b = rng.normal(size=(N, D)), rng.normal(size=(N, D))
  return (ref.normalize(a), ref.normalize(b)) if unit else (a, b)


PAIR_HEADS = {
    "clip": jax.jit(lambda a, b: losses.clip(a, b, logit_scale=5.0)[0]),
    "siglip": jax.jit(lambda a, b: losses.siglip(a, b, logit_scale=5.0, logit_bias=-1.0)[0]),
    "ntxent": jax.jit(lambda a, b: losses.ntxent(a, b, temperature=0.2)[0]),
    "dcl": jax.jit(lambda a, b: losses.dcl(a, b, temperature=0.2)[0]),
    "dclw": jax.jit(lambda a, b: losses.dclw(a, b, temperature=0.2)[0]),
    "vicreg": jax.jit(lambda a, b: losses.vicreg(a, b)[0]),
    "barlow_twins": jax.jit(lambda a, b: losses.barlow_twins(a, b)[0]),
}
_supcon = jax.jit(lambda f, y: losses.supcon(f, y, temperature=0.3)[0])


@pytest.mark.parametrize("name", sorted(PAIR_HEADS))
@SETTINGS
@given(seed=seeds)
def test_batch_permutation_invariance(name, seed):
  a, b = _pair(seed, unit=name not in ("vicreg", "barlow_twins"))
  perm = np.random.default_rng(seed + 1).permutation(N)
  fn = PAIR_HEADS[name]
  np.testing.assert_allclose(fn(a[perm], b[perm]), fn(a, b), rtol=1e-10)


@SETTINGS
@given(seed=seeds)
def test_supcon_permutation_invariance(seed):
  f = ref.normalize(np.random.default_rng(seed).normal(size=(N, 2, D)))
  perm = np.random.default_rng(seed + 1).permutation(N)
  np.testing.assert_allclose(_supcon(f[perm], LABELS[perm]), _supcon(f, LABELS), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(PAIR_HEADS))
@SETTINGS
@given(seed=seeds)
def test_symmetric_in_the_two_inputs(name, seed):
  a, b = _pair(seed, unit=name not in ("vicreg", "barlow_twins"))
  fn = PAIR_HEADS[name]
  np.testing.assert_allclose(fn(b, a), fn(a, b), rtol=1e-10)


_clip_scaled = jax.jit(lambda a, b, s: losses.clip(a, b, logit_scale=s)[0])
_ntxent_t = jax.jit(lambda a, b, t: losses.ntxent(a, b, temperature=t)[0])
_siglip_sb = jax.jit(lambda a, b, s, c: losses.siglip(a, b, logit_scale=s, logit_bias=c)[0])


@SETTINGS
@given(seed=seeds)
def test_infinite_temperature_is_uniform(seed):
  a, b = _pair(seed)
  np.testing.assert_allclose(_clip_scaled(a, b, 1e-9), math.log(N), rtol=1e-6)
  np.testing.assert_allclose(_ntxent_t(a, b, 1e9), math.log(2 * N - 1), rtol=1e-6)
  np.testing.assert_allclose(_siglip_sb(a, b, 0.0, 0.0), N * math.log(2), rtol=1e-12)


@SETTINGS
@given(seed=seeds, scale=st.floats(50.0, 500.0))
def test_zero_temperature_limit_when_pairs_are_separated(seed, scale):
  # Orthonormal matched pairs: every positive beats every negative by 1 in cosine.
  q = np.linalg.qr(np.random.default_rng(seed).normal(size=(N, N)))[0]
  assert _clip_scaled(q, q, scale) < N * math.exp(-scale) + 1e-12
  assert _ntxent_t(q, q, 1.0 / scale) < 2 * N * math.exp(-scale) + 1e-12


def _whitened(seed, gain):
  """Centred columns with unbiased variance gain**2 and zero covariance."""
  basis = np.linalg.qr(np.random.default_rng(seed).normal(size=(N, N)))[0]
  ones = np.ones((N, 1)) / math.sqrt(N)
  centred = basis[:, :D] - ones @ (ones.T @ basis[:, :D])
  q = np.linalg.qr(centred)[0]
  return gain * math.sqrt(N - 1) * q


@SETTINGS
@given(seed=seeds, gain=st.floats(1.0, 3.0))
def test_vicreg_zero_at_whitened_identical_views(seed, gain):
  z = _whitened(seed, gain)
  assert abs(float(PAIR_HEADS["vicreg"](z, z))) < 1e-12


_barlow_exact = jax.jit(lambda a, b: losses.barlow_twins(a, b, eps=0.0)[0])


@SETTINGS
@given(seed=seeds, gains=st.lists(st.floats(0.1, 10.0), min_size=D, max_size=D))
def test_barlow_zero_at_decorrelated_identical_views(seed, gains):
  # Per-dimension scale and offset do not matter: standardisation removes them (eps=0 so
  # that the fixed point is exact).
  z = _whitened(seed, 1.0) * np.asarray(gains) + 3.0
  assert float(_barlow_exact(z, z)) < 1e-20
