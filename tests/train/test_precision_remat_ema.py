"""Mixed precision, rematerialisation and EMA, each switched on by config alone."""

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import ad_checkpoint

from mmie.configs import clip
from mmie import config as config_lib
from mmie import sharding
from mmie.losses import build_loss
from mmie.models import build_model, unbox
from mmie.tasks import get_task
from mmie.train import accumulate, loop, setup
from tests.tolerance import assert_trees_close, float32_sum_atol

EMA_DECAY = 0.9
REMAT_BATCH = 8


def _batch(batch_size, seed=0):
  rng = np.random.default_rng(seed)
  text = rng.integers(3, 1000, size=(batch_size, 16)).astype(np.int32)
  text[:, 9] = 2  # End-of-text token.
  return {"image": rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32), "text": text}


@pytest.fixture(scope="module")
def bf16_ema_step():
  """One train step of tiny CLIP with bfloat16 compute, float32 params, and EMA 0.9."""
  cfg = clip.get_config("tiny")
  cfg.model.dtype = "bfloat16"
  cfg.model.param_dtype = "float32"
  cfg.train = ml_collections.ConfigDict({"ema_decay": EMA_DECAY})
  config = config_lib.validate(cfg)
  run = setup.build_run(config, mesh=sharding.make_mesh({"data": 1},
                                                        devices=jax.devices()[:1]))
  stage_run = setup.build_stage(run, run.stages[0])
  state = setup.init_state(run, stage_run)
  before = jax.device_get(state)  # The step donates its input state.
  step_fn = setup.jit_train_step(run, stage_run)
  batch = setup.to_global(run, _batch(config.batch_size))
  for _ in range(2):  # Step 0 has learning rate 0 (warmup); step 1 moves the params.
    previous_ema = jax.device_get(state.ema_params)
    state, metrics = step_fn(state, batch)
  return run, before, previous_ema, jax.device_get(state), jax.device_get(metrics)


def test_mixed_precision_keeps_float32_state(bf16_ema_step):
  _, _, _, after, metrics = bf16_ema_step
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
  for name, tree in (("params", after.params), ("ema_params", after.ema_params)):
    dtypes = {x.dtype for x in jax.tree.leaves(tree)}
    assert dtypes == {np.dtype(np.float32)}, (name, dtypes)
  float_moments = [x for x in jax.tree.leaves(after.opt_state)
                   if np.issubdtype(x.dtype, np.floating)]
  assert float_moments and {x.dtype for x in float_moments} == {np.dtype(np.float32)}


def test_mixed_precision_computes_in_bfloat16(bf16_ema_step):
  """The matmuls of the forward pass really run in bfloat16 (not just declared)."""
  run, before, _, _, _ = bf16_ema_step
  batch = {k: jnp.asarray(v) for k, v in _batch(2).items()}
  jaxpr = str(jax.make_jaxpr(lambda p: run.task.forward(
      run.model.apply, p, batch, rng=jax.random.PRNGKey(0), train=True))(before.params))
  # Printed as "h:bf16[2,17,32] = dot_general[...] f g", nested jaxprs included. Attention
  # logits (one product per attention layer) accumulate in float32 for a stable softmax.
  dots = re.findall(r"\b\w+:(\w+)\[[^\]]*\] = dot_general", jaxpr)
  attention_layers = run.config.model.image.depth + run.config.model.text.depth
  assert dots.count("bf16") >= 4 * attention_layers, dots
  assert dots.count("f32") <= attention_layers, dots


def test_ema_is_the_decayed_average(bf16_ema_step):
  _, before, previous_ema, after, _ = bf16_ema_step
  changed = 0
  for ema0, ema, p0, p in zip(jax.tree.leaves(previous_ema), jax.tree.leaves(after.ema_params),
                              jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
    expected = EMA_DECAY * np.asarray(ema0, np.float64) + (1 - EMA_DECAY) * np.asarray(p, np.float64)
    np.testing.assert_allclose(ema, expected, rtol=1e-6, atol=1e-7)
    changed += int(not np.array_equal(p, p0))
  assert changed > 0, "params never moved, so the EMA check would be vacuous"
  # At the very start the EMA is a copy of the params.
  for e, p in zip(jax.tree.leaves(before.ema_params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(e, p)


def test_evaluate_ema_hands_the_evaluators_the_ema_copy(bf16_ema_step, tmp_path):
  _, _, _, after, _ = bf16_ema_step
  cfg = clip.get_config("tiny")
  assert loop.evaluated_params(cfg, after) is after.params
  cfg.train = ml_collections.ConfigDict({"ema_decay": EMA_DECAY, "evaluate_ema": True})
  assert loop.evaluated_params(cfg, after) is after.ema_params
  with pytest.raises(config_lib.ConfigError, match="set train.ema_decay"):
    loop.evaluated_params(cfg, after.replace(ema_params=None))
  # A run that asks for it without an EMA stops before its first step.
  cfg.train = ml_collections.ConfigDict({"evaluate_ema": True})
  with pytest.raises(config_lib.ConfigError, match="set train.ema_decay"):
    loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.fixture(scope="module")
def remat_pair():
  """Loss and gradients of the same params with and without rematerialised blocks."""
  results = {}
  batch = {k: jnp.asarray(v) for k, v in _batch(REMAT_BATCH).items()}
  params = None
  for remat in (False, True, "dots"):
    cfg = clip.get_config("tiny")
    cfg.model.remat = remat
    model = build_model(cfg.model)
    if params is None:
      params = unbox(model.init(jax.random.PRNGKey(0), batch["image"][:1], batch["text"][:1])
                     ["params"])
    task, loss = get_task(cfg.task), build_loss(cfg.loss)
    key = jax.random.PRNGKey(1)
    forward = lambda p, b, i=0, model=model: task.forward(model.apply, p, b, rng=key,
                                                         train=True)
    loss_apply = lambda inputs, ls: loss.apply(inputs, ls, step=jnp.zeros((), jnp.int32), rng=key)
    fn = lambda p: accumulate.whole(p, batch, (), forward, loss_apply)
    value, _, _, grads = jax.jit(fn)(params)
    results[remat] = (float(value), jax.device_get(grads), str(jax.make_jaxpr(fn)(params)))
  return results


@pytest.mark.parametrize("policy", [True, "dots"])
def test_remat_changes_memory_not_numbers(remat_pair, policy):
  """Every policy of mmie/models/remat.py recomputes, and gives the loss and gradients of no
  remat up to reordered float32 sums."""
  value, grads, jaxpr = remat_pair[False]
  r_value, r_grads, r_jaxpr = remat_pair[policy]
  assert "checkpoint" in r_jaxpr or "remat" in r_jaxpr
  assert "checkpoint" not in jaxpr and "remat" not in jaxpr
  # Recomputing the blocks reorders float32 sums. Each gradient entry sums over the batch,
  # the positions and the widest layer (the MLP), so that is the term count of the rounding.
  cfg = clip.get_config("tiny")
  terms = REMAT_BATCH * cfg.model.text.context_length * max(cfg.model.image.mlp_dim,
                                                            cfg.model.text.mlp_dim)
  assert r_value == pytest.approx(value, rel=float32_sum_atol(1.0, terms))
  assert_trees_close(r_grads, grads, terms)


def _saved_residuals(remat) -> list[str]:
  """What the backward pass of the tiny CLIP keeps from its forward pass under ``remat``."""
  cfg = clip.get_config("tiny")
  cfg.model.remat = remat
  model = build_model(cfg.model)
  batch = _batch(REMAT_BATCH)
  variables = model.init(jax.random.PRNGKey(0), batch["image"][:1], batch["text"][:1])
  outputs = lambda v: jax.tree.leaves(model.apply(v, batch["image"], batch["text"]))
  total = lambda v: sum(jnp.sum(x) for x in outputs(v) if jnp.issubdtype(x.dtype, jnp.floating))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    ad_checkpoint.print_saved_residuals(total, variables)
  return [line for line in out.getvalue().splitlines() if line.strip()]


def test_remat_policies_keep_fewer_activations_in_order():
  """``none`` keeps every activation; ``dots`` the matmul outputs and block inputs; ``full``
  the block inputs alone: the saved residuals shrink in that order, and only ``dots`` keeps
  projections (DenseGeneral outputs) from inside the blocks."""
  saved = {remat: _saved_residuals(remat) for remat in ("none", "dots", "full")}
  assert len(saved["full"]) < len(saved["dots"]) < len(saved["none"])
  projections = {k: sum("DenseGeneral" in line for line in v) for k, v in saved.items()}
  assert projections["full"] == 0 < projections["dots"]
