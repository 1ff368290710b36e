"""Negatives over a mesh axis (the heads' axis_name option) on 8 fake CPU devices == the dense
loss on the gathered batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mmie import losses

from . import reference as ref

BATCH, DIM = 16, 4
LABELS = jnp.asarray(np.random.default_rng(0).integers(0, 3, BATCH))

HEADS = {
    "clip": lambda a, b, s, **kw: losses.clip(a, b, logit_scale=s, label_smoothing=0.1, **kw),
    "siglip": lambda a, b, s, **kw: losses.siglip(a, b, logit_scale=s, logit_bias=-2.0, **kw),
    "ntxent": lambda a, b, s, **kw: losses.ntxent(a, b, temperature=1.0 / s, **kw),
    "dcl": lambda a, b, s, **kw: losses.dcl(a, b, temperature=1.0 / s, **kw),
    "supcon": lambda a, b, s, **kw: losses.supcon(jnp.stack([a, b], 1), LABELS,
                                                  temperature=1.0 / s, **kw),
}


@pytest.fixture(autouse=True, scope="module")
def x64():
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8, "tests/conftest.py must provide 8 fake CPU devices"
  return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


@pytest.fixture(scope="module")
def data(mesh):
  rng = np.random.default_rng(1)
  a, b = ref.normalize(rng.normal(size=(BATCH, DIM))), ref.normalize(rng.normal(size=(BATCH, DIM)))
  shard = NamedSharding(mesh, P("data"))
  return jax.device_put(jnp.asarray(a), shard), jax.device_put(jnp.asarray(b), shard)


def _value_and_grads(fn):
  return jax.jit(jax.value_and_grad(lambda a, b, s: fn(a, b, s)[0], argnums=(0, 1, 2)))


def _assert_same(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_global_negatives_match_dense(name, mesh, data):
  fn = HEADS[name]
  scale = jnp.float64(4.0)
  dense = _value_and_grads(fn)(*data, scale)
  with jax.set_mesh(mesh):
    sharded = _value_and_grads(lambda a, b, s: fn(a, b, s, axis_name="data"))(*data, scale)
    chunked = _value_and_grads(lambda a, b, s: fn(a, b, s, axis_name="data", block_size=1)
                               )(*data, scale)
  _assert_same(sharded, dense)
  _assert_same(chunked, dense)


def test_inside_a_user_shard_map(mesh, data):
  """A hand-written sharded step: grads taken per device equal the dense grads' shards."""
  fn = HEADS["clip"]
  dense = _value_and_grads(fn)(*data, jnp.float64(4.0))

  def local_step(a, b):
    return jax.value_and_grad(lambda x, y: fn(x, y, 4.0, axis_name="data")[0],
                              argnums=(0, 1))(a, b)

  step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P("data"), P("data")),
                               out_specs=(P(), (P("data"), P("data")))))
  value, grads = step(*data)
  _assert_same((value, grads), (dense[0], dense[1][:2]))


def test_metrics_match_dense(mesh, data):
  for name in ("clip", "siglip"):
    dense = jax.jit(lambda a, b, n=name: HEADS[n](a, b, 4.0)[1])(*data)
    with jax.set_mesh(mesh):
      sharded = jax.jit(lambda a, b, n=name: HEADS[n](a, b, 4.0, axis_name="data")[1])(*data)
    for k in dense:
      np.testing.assert_allclose(sharded[k], dense[k], rtol=1e-10)


def test_loss_protocol_with_global_negatives_and_queue(mesh, data):
  cfg = {"name": "clip(axis_name='data', block_size=2)", "transforms": ["memory_queue(size=32)"]}
  loss_fn, plain = losses.build_loss(cfg), losses.build_loss(
      {"name": "clip", "transforms": ["memory_queue(size=32)"]})
  inputs = {"image_emb": data[0], "text_emb": data[1], "logit_scale": jnp.float64(3.0)}
  state = loss_fn.init(inputs)
  step, rng = jnp.int32(0), jax.random.key(0)
  for _ in range(2):  # second step has 16 queued negatives per modality
    with jax.set_mesh(mesh):
      loss, _, new_state = jax.jit(loss_fn.apply)(inputs, state, step=step, rng=rng)
    want, _, want_state = jax.jit(plain.apply)(inputs, state, step=step, rng=rng)
    np.testing.assert_allclose(loss, want, rtol=1e-10)
    _assert_same(new_state, want_state)
    state = new_state


def test_without_mesh_is_a_clear_error(data):
  with pytest.raises(ValueError, match="jax.set_mesh"):
    losses.clip(*data, logit_scale=1.0, axis_name="data")
