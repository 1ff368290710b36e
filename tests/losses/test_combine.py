"""combine: schedules, weightings, input renames; state carry-over and checkpoint round-trip."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmie import losses

from . import reference as ref


@pytest.fixture(autouse=True, scope="module")
def x64():
  with jax.enable_x64(True):
    yield


RNG = jax.random.key(0)


def _inputs(seed=0, n=6, d=4):
  rng = np.random.default_rng(seed)
  return {"image_emb": jnp.asarray(ref.normalize(rng.normal(size=(n, d)))),
          "image_emb_aug": jnp.asarray(ref.normalize(rng.normal(size=(n, d)))),
          "text_emb": jnp.asarray(ref.normalize(rng.normal(size=(n, d)))),
          "logit_scale": jnp.float64(5.0)}


HYBRID = {
    "terms": {
        "ntxent": {"name": "ntxent(temperature=0.5)",
                   "weight": "linear_schedule(init_value=1.0, end_value=0.0, transition_steps=10)",
                   "inputs": {"z_a": "image_emb", "z_b": "image_emb_aug"}},
        "vicreg": {"name": "vicreg",
                   "weight": "linear_schedule(init_value=0.0, end_value=1.0, transition_steps=10)",
                   "inputs": {"z_a": "image_emb", "z_b": "image_emb_aug"}},
    },
}


def test_hybrid_contrastive_to_vicreg_schedule():
  loss_fn = losses.build_loss(HYBRID)
  x = _inputs()
  a, b = np.asarray(x["image_emb"]), np.asarray(x["image_emb_aug"])
  nt, vi = ref.ntxent(a, b, 0.5), ref.vicreg(a, b)
  apply = jax.jit(loss_fn.apply)
  for step, w in ((0, 0.0), (5, 0.5), (10, 1.0), (20, 1.0)):
    loss, metrics, _ = apply(x, {}, step=jnp.int32(step), rng=RNG)
    # optax evaluates schedules in float32, hence the tolerance on the total.
    np.testing.assert_allclose(loss, (1 - w) * nt + w * vi, rtol=1e-6)
    np.testing.assert_allclose(metrics["vicreg/weight"], w, atol=1e-7)
    np.testing.assert_allclose(metrics["ntxent/loss"], nt, rtol=1e-10)
  assert {"loss", "ntxent/accuracy", "vicreg/variance"} <= set(metrics)


def test_multimodal_mixed_terms_with_their_own_state():
  cfg = {"terms": {
      "clip": {"name": "clip", "transforms": ["memory_queue(size=12)"]},
      "image_ssl": {"name": "barlow_twins", "weight": 0.1,
                    "inputs": {"z_a": "image_emb", "z_b": "image_emb_aug"}}}}
  loss_fn = losses.build_loss(cfg)
  x = _inputs()
  state = loss_fn.init(x)
  assert list(state) == ["terms"] and list(state["terms"]) == ["clip"]
  loss, _, state = jax.jit(loss_fn.apply)(x, state, step=jnp.int32(0), rng=RNG)
  a, b = np.asarray(x["image_emb"]), np.asarray(x["image_emb_aug"])
  want = ref.clip(a, np.asarray(x["text_emb"]), 5.0) + 0.1 * ref.barlow_twins(a, b)
  np.testing.assert_allclose(loss, want, rtol=1e-10)
  assert int(state["terms"]["clip"]["memory_queue"]["text_emb"]["filled"]) == 6


def _two_terms(weighting):
  return losses.build_loss({"weighting": weighting, "terms": {
      "clip": {"name": "clip", "weight": 2.0},
      "siglip": {"name": "siglip(logit_bias=-1.0)"}}})


def test_inverse_running_loss_weighting():
  loss_fn = _two_terms("inverse_running_loss(decay=0.5)")
  x1, x2 = _inputs(1), _inputs(2)
  refs = [(ref.clip(*[np.asarray(x[k]) for k in ("image_emb", "text_emb")], 5.0),
           ref.siglip(*[np.asarray(x[k]) for k in ("image_emb", "text_emb")], 5.0, -1.0))
          for x in (x1, x2)]
  state = loss_fn.init(x1)
  apply = jax.jit(loss_fn.apply)
  # Step 1: the running means are the losses themselves; each term contributes w * mean level.
  (c1, s1), (c2, s2) = refs
  loss, m, state = apply(x1, state, step=jnp.int32(0), rng=RNG)
  level = (c1 + s1) / 2
  np.testing.assert_allclose(loss, 2.0 * level + 1.0 * level, rtol=1e-6)
  # Step 2: bias-corrected EMA with decay 0.5: (0.25 L1 + 0.5 L2) / 0.75.
  loss, m, state = apply(x2, state, step=jnp.int32(1), rng=RNG)
  rc, rs = (0.25 * c1 + 0.5 * c2) / 0.75, (0.25 * s1 + 0.5 * s2) / 0.75
  mean = (rc + rs) / 2
  np.testing.assert_allclose(m["clip/weight"], 2.0 * mean / rc, rtol=1e-6)
  np.testing.assert_allclose(loss, 2.0 * mean / rc * c2 + mean / rs * s2, rtol=1e-6)


def test_uncertainty_weighting_update_and_fixed_point():
  loss_fn = _two_terms("uncertainty(learning_rate=0.1)")
  x = _inputs(3)
  img, txt = np.asarray(x["image_emb"]), np.asarray(x["text_emb"])
  c, s = ref.clip(img, txt, 5.0), ref.siglip(img, txt, 5.0, -1.0)
  state = loss_fn.init(x)
  loss, m, state = jax.jit(loss_fn.apply)(x, state, step=jnp.int32(0), rng=RNG)
  np.testing.assert_allclose(loss, 2.0 * c + s, rtol=1e-6)  # s_k = 0: plain weighted sum
  log_var = state["weighting"]["log_variance"]
  np.testing.assert_allclose(log_var["clip"], -0.1 * (1 - 2.0 * c), rtol=1e-5)
  np.testing.assert_allclose(log_var["siglip"], -0.1 * (1 - s), rtol=1e-5)
  # At exp(s_k) = w_k L_k the gradient vanishes: the log-variances stay put.
  fixed = {"weighting": {"log_variance": {"clip": jnp.float32(math.log(2.0 * c)),
                                          "siglip": jnp.float32(math.log(s))}}}
  _, m, after = jax.jit(loss_fn.apply)(x, fixed, step=jnp.int32(0), rng=RNG)
  for k in ("clip", "siglip"):
    np.testing.assert_allclose(after["weighting"]["log_variance"][k],
                               fixed["weighting"]["log_variance"][k], rtol=1e-5)
  # Model gradients are scaled by the precision exp(-s_k).
  np.testing.assert_allclose(m["clip/weight"], 1.0 / c, rtol=1e-5)


@pytest.mark.parametrize("cfg,error,match", [
    ({"name": "clip", "terms": {"a": {"name": "clip"}}}, KeyError, "leave name unset"),
    ({"terms": {"a": {"name": "clip"}}, "transforms": ["chunked"]}, KeyError, "its own"),
    ({"terms": {"a": {"head": "clip"}}}, KeyError, r"terms.a has unknown key.*'head'"),
    ({"terms": {"a": {"name": "clip", "weight": "linear(1)"}}}, KeyError, "linear_schedule"),
    ({"terms": {"a": {"name": "clip", "weight": [1]}}}, TypeError, "number or a schedule"),
    ({"terms": {"a": {"name": "clip"}}, "weighting": "kendall"}, KeyError, "uncertainty"),
])
def test_combine_config_errors(cfg, error, match):
  with pytest.raises(error, match=match):
    losses.build_loss(cfg)


def test_rename_of_missing_input_is_clear():
  loss_fn = losses.build_loss(HYBRID)
  with pytest.raises(KeyError, match="renames missing input.*image_emb_aug"):
    loss_fn.init({"image_emb": jnp.ones((4, 3))})


def test_stage_that_adds_a_transform_keeps_the_others_state():
  """A stage may change the head's options and add transforms; states carry by name."""
  stage1 = losses.build_loss({"name": "clip", "transforms": ["memory_queue(size=8)",
                                                             "dynamic_temperature"]})
  stage2 = losses.build_loss({"name": "clip(hard_negatives={'beta': 0.5}, block_size=2)",
                              "transforms": ["memory_queue(size=8)", "dynamic_temperature"]})
  x = _inputs()
  state1 = stage1.init(x)
  _, _, state1 = jax.jit(stage1.apply)(x, state1, step=jnp.int32(0), rng=RNG)
  carried = losses.carry_over(state1, stage2.init(x))
  assert set(carried) == {"memory_queue", "dynamic_temperature"}
  jax.tree.map(np.testing.assert_array_equal, carried, state1)
  # A changed queue size cannot be carried: that entry starts fresh.
  stage3 = losses.build_loss({"name": "clip", "transforms": ["memory_queue(size=16)"]})
  fresh = losses.carry_over(state1, stage3.init(x))
  assert int(fresh["memory_queue"]["image_emb"]["filled"]) == 0


def test_memory_queue_state_survives_a_checkpoint_round_trip(tmp_path):
  loss_fn = losses.build_loss({"name": "clip", "transforms": ["memory_queue(size=12)"]})
  apply = jax.jit(loss_fn.apply)
  batches = [_inputs(i) for i in range(3)]
  state = loss_fn.init(batches[0])
  state = apply(batches[0], state, step=jnp.int32(0), rng=RNG)[2]
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "loss_state", state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "loss_state", jax.eval_shape(lambda: state))
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  # Resumed == straight: the next two steps give the same losses and final state.
  straight, resumed = state, restored
  for i, batch in enumerate(batches[1:], start=1):
    l1, _, straight = apply(batch, straight, step=jnp.int32(i), rng=RNG)
    l2, _, resumed = apply(batch, resumed, step=jnp.int32(i), rng=RNG)
    np.testing.assert_array_equal(l1, l2)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_carry_over_of_combined_state_matches_terms_by_name():
  stage1 = losses.build_loss({"weighting": "uncertainty", "terms": {
      "clip": {"name": "clip", "transforms": ["memory_queue(size=8)"]},
      "ssl": {"name": "vicreg", "inputs": {"z_a": "image_emb", "z_b": "image_emb_aug"}}}})
  stage2 = losses.build_loss({"weighting": "uncertainty", "terms": {
      "clip": {"name": "clip(block_size=2)", "transforms": ["memory_queue(size=8)"]},
      "ssl": {"name": "vicreg", "inputs": {"z_a": "image_emb", "z_b": "image_emb_aug"}}}})
  x = _inputs()
  state1 = jax.jit(stage1.apply)(x, stage1.init(x), step=jnp.int32(0), rng=RNG)[2]
  carried = losses.carry_over(state1, stage2.init(x))
  jax.tree.map(np.testing.assert_array_equal, carried, state1)
  # A term that is new in the stage gets its weighting entry fresh: shapes differ, so the
  # whole weighting state restarts.
  stage3 = losses.build_loss({"weighting": "uncertainty", "terms": {
      "clip": {"name": "clip", "transforms": ["memory_queue(size=8)"]},
      "siglip": {"name": "siglip(logit_bias=0.0)"}}})
  fresh = losses.carry_over(state1, stage3.init(x))
  jax.tree.map(np.testing.assert_array_equal, fresh["terms"], state1["terms"])
  assert float(fresh["weighting"]["log_variance"]["siglip"]) == 0.0


def test_registries_list_every_head_and_transform():
  assert set(losses.HEADS) == {
      "clip", "siglip", "ntxent", "dcl", "dclw", "supcon", "vicreg", "barlow_twins",
      "decorrelation", "feature_consistency", "cross_entropy", "soft_cross_entropy",
      "bradley_terry", "dpo", "ppo_clip", "ppo"}
  assert set(losses.TRANSFORMS) == {
      "memory_queue", "momentum_keys", "dynamic_temperature", "learnable_temperature",
      "ppo_rollout"}
  assert set(losses.WEIGHTINGS) == {"static", "inverse_running_loss", "uncertainty"}
