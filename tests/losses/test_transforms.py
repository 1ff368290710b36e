"""Transforms (queue, momentum keys, temperatures) and head options (hard negatives,
chunked == dense)."""

import math

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


def _unit(seed, shape):
  return ref.normalize(np.random.default_rng(seed).normal(size=shape))


STEP, RNG = jnp.int32(0), jax.random.key(0)


def _clip_inputs(seed, n=4, d=3):
  return {"image_emb": jnp.asarray(_unit(seed, (n, d))),
          "text_emb": jnp.asarray(_unit(seed + 1, (n, d))), "logit_scale": jnp.float64(4.0)}


def test_memory_queue_fifo_and_negatives():
  loss_fn = losses.build_loss({"name": "clip", "transforms": ["memory_queue(size=6)"]})
  batches = [_clip_inputs(10 * i) for i in range(3)]
  state = loss_fn.init(batches[0])
  assert set(state) == {"memory_queue"}
  assert state["memory_queue"]["text_emb"]["entries"].shape == (6, 3)
  apply = jax.jit(loss_fn.apply)
  seen = []  # keys enqueued so far, oldest first
  for batch in batches:
    loss, _, state = apply(batch, state, step=STEP, rng=RNG)
    img_q = np.concatenate([b["image_emb"] for b in seen])[-6:] if seen else None
    txt_q = np.concatenate([b["text_emb"] for b in seen])[-6:] if seen else None
    expected = ref.clip(np.asarray(batch["image_emb"]), np.asarray(batch["text_emb"]), 4.0,
                        txt_extra=txt_q, img_extra=img_q)
    np.testing.assert_allclose(loss, expected, rtol=1e-10)
    seen.append(batch)
  q = state["memory_queue"]["image_emb"]
  assert int(q["filled"]) == 6 and int(q["ptr"]) == 0  # 12 keys through 6 slots
  # Batch 0 -> slots 0-3; batch 1 -> 4, 5, 0, 1; batch 2 -> 2-5 (the oldest slots).
  np.testing.assert_allclose(q["entries"][2:], batches[2]["image_emb"])
  np.testing.assert_allclose(q["entries"][:2], batches[1]["image_emb"][2:])


def test_memory_queue_stores_detached_keys():
  loss_fn = losses.build_loss({"name": "clip", "transforms": ["memory_queue(size=8)"]})
  batch = _clip_inputs(0)
  state = loss_fn.init(batch)

  def stored(emb):
    new_state = jax.jit(loss_fn.apply)({**batch, "image_emb": emb}, state, step=STEP, rng=RNG)[2]
    return jnp.sum(new_state["memory_queue"]["image_emb"]["entries"])

  assert np.all(np.asarray(jax.grad(stored)(batch["image_emb"])) == 0)


def test_momentum_keys_are_the_candidates():
  loss_fn = losses.build_loss({"name": "clip", "transforms": ["momentum_keys"]})
  batch = _clip_inputs(0)
  mom = {"image_emb_momentum": jnp.asarray(_unit(7, (4, 3))),
         "text_emb_momentum": jnp.asarray(_unit(8, (4, 3)))}
  loss, _, _ = jax.jit(loss_fn.apply)({**batch, **mom}, {}, step=STEP, rng=RNG)
  # i2t: images vs momentum texts; t2i: texts vs momentum images.
  img, txt = np.asarray(batch["image_emb"]), np.asarray(batch["text_emb"])
  mi, mt = np.asarray(mom["image_emb_momentum"]), np.asarray(mom["text_emb_momentum"])
  half = lambda a, c: -np.mean(np.diag(ref.log_softmax(4.0 * a @ c.T, 1)))
  np.testing.assert_allclose(loss, 0.5 * (half(img, mt) + half(txt, mi)), rtol=1e-10)
  grads = jax.grad(lambda m: jax.jit(loss_fn.apply)({**batch, **m}, {}, step=STEP, rng=RNG)[0])(mom)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))
  with pytest.raises(KeyError, match="image_emb_momentum.*ema_params"):
    jax.jit(loss_fn.apply)(batch, {}, step=STEP, rng=RNG)


@pytest.mark.parametrize("head,select", [
    ("clip(hard_negatives={'mode': 'top_fraction', 'fraction': 0.5})",
     lambda negs, pos: np.argsort(-negs)[:math.ceil(0.5 * 6)]),
    ("clip(hard_negatives={'mode': 'semi_hard', 'margin': 0.3})",
     lambda negs, pos: (lambda band: band if band.any() else np.ones_like(band))(
         (negs < pos) & (negs > pos - 0.3 * 2.0))),
])
def test_hard_negative_selection_modes(head, select):
  """Hard negatives are a head option, set in the head's call-string."""
  loss_fn = losses.build_loss({"name": head})
  batch = {**_clip_inputs(3, n=6, d=2), "logit_scale": jnp.float64(2.0)}
  loss, _, _ = jax.jit(loss_fn.apply)(batch, {}, step=STEP, rng=RNG)
  expected = ref.clip_selected_negatives(np.asarray(batch["image_emb"]),
                                         np.asarray(batch["text_emb"]), 2.0, select)
  np.testing.assert_allclose(loss, expected, rtol=1e-10)


def test_importance_with_beta_zero_is_plain_loss():
  plain = losses.build_loss({"name": "ntxent(temperature=0.5)"})
  hard = losses.build_loss({"name": "ntxent(temperature=0.5, hard_negatives={'beta': 0.0})"})
  batch = {"z_a": jnp.asarray(_unit(1, (5, 3))), "z_b": jnp.asarray(_unit(2, (5, 3)))}
  a = jax.jit(plain.apply)(batch, {}, step=STEP, rng=RNG)[0]
  b = jax.jit(hard.apply)(batch, {}, step=STEP, rng=RNG)[0]
  np.testing.assert_allclose(a, b, rtol=1e-12)


def test_dynamic_temperature_rule():
  loss_fn = losses.build_loss({"name": "clip", "transforms": [
      "dynamic_temperature(min_temperature=0.05, max_temperature=0.25, target_gap=1.0, "
      "momentum=0.5)"]})
  img = jnp.eye(3)
  batch = {"image_emb": img, "text_emb": img, "logit_scale": jnp.float64(1.0)}
  # Matched cosine 1, unmatched 0: gap 1 -> bias-corrected EMA 1 -> min temperature.
  state = loss_fn.init(batch)
  _, m, state = jax.jit(loss_fn.apply)(batch, state, step=STEP, rng=RNG)
  np.testing.assert_allclose(m["logit_scale"], 1 / 0.05, rtol=1e-6)
  # Now a batch with gap 0 (all rows equal): EMA (0.5*0.5*1 + 0.5*0) / (1 - 0.25) = 1/3.
  same = jnp.ones((3, 3)) / math.sqrt(3)
  flat = {**batch, "image_emb": same, "text_emb": same}
  _, m, state = jax.jit(loss_fn.apply)(flat, state, step=STEP, rng=RNG)
  np.testing.assert_allclose(m["logit_scale"], 1 / (0.25 - 0.2 / 3), rtol=1e-6)
  assert int(state["dynamic_temperature"]["count"]) == 2


def test_learnable_temperature_parameterisation():
  loss_fn = losses.build_loss({"name": "ntxent", "transforms": ["learnable_temperature"]})
  batch = {"z_a": jnp.asarray(_unit(1, (4, 3))), "z_b": jnp.asarray(_unit(2, (4, 3)))}
  for raw, temp in ((math.log(10.0), 0.1), (math.log(500.0), 0.01)):  # clamp at 100
    inputs = {**batch, "log_logit_scale": jnp.float64(raw)}
    _, m, _ = jax.jit(loss_fn.apply)(inputs, {}, step=STEP, rng=RNG)
    np.testing.assert_allclose(m["temperature"], temp, rtol=1e-10)
  g = jax.grad(lambda r: jax.jit(loss_fn.apply)({**batch, "log_logit_scale": r}, {}, step=STEP,
                                       rng=RNG)[0])(jnp.float64(1.0))
  assert g != 0  # the temperature is learned through the model parameter


def test_transform_output_unused_by_head_is_an_error():
  loss_fn = losses.build_loss({"name": "vicreg", "transforms": ["memory_queue(size=8)"]})
  batch = {"z_a": jnp.ones((4, 3)), "z_b": jnp.ones((4, 3))}
  with pytest.raises(KeyError, match="memory_queue needs input 'image_emb'"):
    loss_fn.init(batch)
  loss_fn = losses.build_loss({"name": "vicreg", "transforms": [
      "memory_queue(size=8, inputs=('z_a', 'z_b'))"]})
  state = loss_fn.init(batch)
  with pytest.raises(ValueError, match="'negatives'.*does not take"):
    jax.jit(loss_fn.apply)(batch, state, step=STEP, rng=RNG)


def test_negatives_for_an_input_the_head_does_not_have():
  loss_fn = losses.build_loss({"name": "ntxent", "transforms": ["memory_queue(size=8)"]})
  batch = {"z_a": jnp.ones((4, 3)), "z_b": jnp.ones((4, 3)), "image_emb": jnp.ones((4, 3)),
           "text_emb": jnp.ones((4, 3))}
  with pytest.raises(ValueError, match=r"ntxent: negatives for \['image_emb', 'text_emb'\]"):
    jax.jit(loss_fn.apply)(batch, loss_fn.init(batch), step=STEP, rng=RNG)


@pytest.mark.parametrize("text,error,match", [
    ("memory_queue(size=-1)", ValueError, "positive int"),
    ("memory_qeue(size=4)", KeyError, "Did you mean 'memory_queue'"),
    ("dynamic_temperature(output='tau')", ValueError, "logit_scale"),
    ("chunked(block_size=4)", ValueError, r"option of the head.*clip\(block_size=1024\)"),
    ("global_negatives()", ValueError, r"clip\(axis_name='data'\)"),
    ("hard_negatives(beta=0.5)", ValueError, r"clip\(hard_negatives="),
])
def test_transform_config_errors(text, error, match):
  with pytest.raises(error, match=match):
    losses.build_loss({"name": "clip", "transforms": [text]})


@pytest.mark.parametrize("head,error,match", [
    ("clip(hard_negatives={'mode': 'hardest'})", ValueError, "unknown mode 'hardest'.*importance"),
    ("clip(hard_negatives={'tau_plus': 1.0})", ValueError, r"tau_plus=1.0 must be in \[0, 1\)"),
    ("clip(hard_negatives={'bta': 1.0})", ValueError, r"unknown field\(s\) \['bta'\]"),
    ("clip(block_size=0)", ValueError, "block_size must be a positive int"),
    ("ntxent(axis_name='')", ValueError, "axis_name must name a mesh axis"),
    ("vicreg(block_size=4)", TypeError, "unexpected keyword argument 'block_size'"),
])
def test_head_option_errors(head, error, match):
  with pytest.raises(error, match=match):
    losses.build_loss({"name": head})


def test_hard_negatives_option_spellings_agree():
  as_dict = losses.build_loss({"name": "clip(hard_negatives={'mode': 'importance', 'beta': 0.7})"})
  as_mode = losses.build_loss({"name": "clip(hard_negatives='importance')"})
  batch = {**_clip_inputs(4, n=6, d=3), "logit_scale": jnp.float64(2.0)}
  direct = losses.clip(batch["image_emb"], batch["text_emb"], logit_scale=2.0,
                       hard_negatives=losses.HardNegatives("importance", beta=0.7))[0]
  np.testing.assert_allclose(jax.jit(as_dict.apply)(batch, {}, step=STEP, rng=RNG)[0], direct,
                             rtol=1e-12)
  default = losses.clip(batch["image_emb"], batch["text_emb"], logit_scale=2.0,
                        hard_negatives=losses.HardNegatives())[0]
  np.testing.assert_allclose(jax.jit(as_mode.apply)(batch, {}, step=STEP, rng=RNG)[0], default,
                             rtol=1e-12)


_LABELS = jnp.array([0, 1, 0, 2, 1, 1, 0])
_HARD = losses.HardNegatives("importance", beta=0.7, tau_plus=0.05)
CHUNKABLE = {
    "clip": lambda a, b, **kw: losses.clip(a, b, logit_scale=3.0, label_smoothing=0.1, **kw),
    "clip_top_fraction": lambda a, b, **kw: losses.clip(
        a, b, logit_scale=3.0, hard_negatives=losses.HardNegatives("top_fraction", fraction=0.4),
        **kw),
    "siglip": lambda a, b, **kw: losses.siglip(a, b, logit_scale=3.0, logit_bias=-1.0, **kw),
    "ntxent_hard": lambda a, b, **kw: losses.ntxent(a, b, temperature=0.3, hard_negatives=_HARD,
                                                    **kw),
    "dclw": lambda a, b, **kw: losses.dclw(a, b, temperature=0.3, **kw),
    "supcon": lambda a, b, **kw: losses.supcon(jnp.stack([a, b], 1), _LABELS, temperature=0.3,
                                               **kw),
}


@pytest.mark.parametrize("name", sorted(CHUNKABLE))
def test_chunked_equals_dense(name):
  fn = CHUNKABLE[name]
  a, b = jnp.asarray(_unit(1, (7, 4))), jnp.asarray(_unit(2, (7, 4)))
  def run(block):
    return jax.jit(jax.value_and_grad(lambda x, y: fn(x, y, block_size=block), argnums=(0, 1),
                                      has_aux=True))(a, b)

  (dense, dense_m), dense_g = run(None)
  for block in (1, 3):  # 3 does not divide 7 (and 14 rows): exercises the padding
    (chunk, chunk_m), chunk_g = run(block)
    np.testing.assert_allclose(chunk, dense, rtol=1e-12)
    for g, h in zip(chunk_g, dense_g):
      np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-14)
  for k in dense_m:
    np.testing.assert_allclose(chunk_m[k], dense_m[k], rtol=1e-12)
