"""The reward-model and DPO tasks: their pure helpers and forwards against numpy, the scalar
head on the LM (an LM's weights load into its backbone unchanged), and both tasks learning a
known preference through the real training loop."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmie import config as config_lib
from mmie.configs import dpo as dpo_config
from mmie.configs import reward_model as rm_config
from mmie.evaluate.context import EvalContext
from mmie.evaluate.registry import build_from_specs
from mmie.losses import alignment
from mmie.models import builder, lm_heads, pretrained, seq2seq
from mmie.tasks import get_task
from mmie.tasks import preference
from tests.model_utils import random_params
from tests.tolerance import FLOAT32_EPS, float32_sum_atol

V, L, W = 13, 8, 16
ARCH = dict(vocab_size=V, width=W, num_heads=2, mlp_dim=32, context_length=L, depth=2)
BOS, EOS = 1, 2


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _pair_rows(rng, batch):
  """Preference rows by hand: BOS, 1-2 prompt tokens, 1-3 response tokens, EOS, PAD; the
  response mask on response and EOS; and each row's EOS position."""
  rows, masks, eos = (np.zeros((batch, L), np.int32), np.zeros((batch, L), np.int32),
                      np.zeros(batch, np.int64))
  for i in range(batch):
    prompt = rng.integers(3, V, size=rng.integers(1, 3))
    response = rng.integers(3, V, size=rng.integers(1, 4))
    ids = [BOS, *prompt, *response, EOS]
    rows[i, :len(ids)] = ids
    masks[i, 1 + len(prompt):len(ids)] = 1
    eos[i] = len(ids) - 1
  return rows, masks, eos


def _pair_batch(seed, batch=5):
  rng = np.random.default_rng(seed)
  chosen, chosen_mask, chosen_eos = _pair_rows(rng, batch)
  rejected, rejected_mask, rejected_eos = _pair_rows(rng, batch)
  out = {"chosen": chosen, "rejected": rejected, "chosen_mask": chosen_mask,
         "rejected_mask": rejected_mask}
  return out, chosen_eos, rejected_eos


def test_response_logps_is_the_masked_sum_of_target_log_probs():
  rng = np.random.default_rng(0)
  batch, _, _ = _pair_batch(0)
  row, mask = batch["chosen"], batch["chosen_mask"]
  logits = rng.normal(0, 3, size=(row.shape[0], L - 1, V)).astype(np.float32)
  got = jax.jit(preference.response_logps)(logits, row, mask)
  log_p = _log_softmax(logits)
  want = np.array([sum(log_p[b, t - 1, row[b, t]] for t in range(1, L) if mask[b, t])
                   for b in range(row.shape[0])])
  # Each term: a float32 log-softmax over V logits; L of them summed.
  np.testing.assert_allclose(got, want, rtol=0, atol=float32_sum_atol(np.abs(log_p).max(),
                                                                      L * V))
  assert np.all(want < 0)  # Something was summed: every row has a response.
  with pytest.raises(ValueError, match="logits \\[B, L-1, V\\]"):
    preference.response_logps(logits[:, :-1], row, mask)


def test_last_token_value_reads_each_rows_last_masked_position():
  scalars = jnp.arange(12.0).reshape(2, 6)
  mask = jnp.array([[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
  np.testing.assert_array_equal(preference.last_token_index(mask), [2, 5])
  np.testing.assert_array_equal(preference.last_token_value(scalars, mask), [2.0, 11.0])


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("tie", [True, False])
def test_scalar_head_lm_keeps_the_lms_parameter_names(positions, tie):
  tokens = jnp.zeros((1, L), jnp.int32)
  arch = dict(ARCH, positions=positions, tie_embeddings=tie)
  lm = jax.eval_shape(seq2seq.DecoderLM(**arch).init, jax.random.key(0), tokens)["params"]
  model = lm_heads.ScalarHeadLM(**arch)
  rm = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]
  assert set(rm) == set(lm) | {lm_heads.HEAD}
  assert set(lm) == set(lm_heads.backbone_init_from("mmie:x", model))
  assert set(lm) == set(rm_config.backbone(ml_collections.ConfigDict(arch)))
  for name in lm:
    assert jax.tree.map(lambda x: x.shape, rm[name]) == jax.tree.map(lambda x: x.shape, lm[name])


def test_scalar_head_lm_generates_as_its_lm():
  prompt = jnp.asarray([[BOS, 5, 6], [BOS, 7, 3]], jnp.int32)
  model = lm_heads.ScalarHeadLM(**ARCH, head_init_std=0.5)
  params = random_params(model, prompt, seed=7)
  lm_params = {k: v for k, v in params.items() if k != lm_heads.HEAD}
  want = seq2seq.DecoderLM(**ARCH).apply({"params": lm_params}, prompt, max_length=L,
                                         method="generate")
  got = model.apply({"params": params}, prompt, max_length=L, method="generate")
  np.testing.assert_array_equal(got, want)
  assert model.language_model() == seq2seq.DecoderLM(**ARCH)


def _hidden(params, rows):
  """The LM backbone's final-normed hidden states, one row at a time (no batch-mates)."""
  lm = seq2seq.DecoderLM(**ARCH)
  backbone = {k: v for k, v in params.items() if k != lm_heads.HEAD}
  return np.stack([np.asarray(lm.apply({"params": backbone}, r[None], return_hidden=True)[1][0],
                              np.float64) for r in rows])


def test_reward_forward_reads_the_head_at_each_rows_eos():
  model = lm_heads.ScalarHeadLM(**ARCH)
  batch, chosen_eos, rejected_eos = _pair_batch(1)
  params = random_params(model, jnp.asarray(batch["chosen"]), seed=1)
  out = jax.jit(lambda p, b: preference.reward_forward(model.apply, p, b, rng=jax.random.key(0),
                                                       train=False))(params, batch)
  kernel = np.asarray(params[lm_heads.HEAD]["kernel"], np.float64)[:, 0]
  bias = float(params[lm_heads.HEAD]["bias"][0])
  for key, eos in (("chosen", chosen_eos), ("rejected", rejected_eos)):
    hidden = _hidden(params, batch[key])
    want = hidden[np.arange(len(eos)), eos] @ kernel + bias
    atol = float32_sum_atol(np.abs(hidden).max() * np.abs(kernel).max(), W * W)
    np.testing.assert_allclose(out[f"reward_{key}"], want, rtol=0, atol=atol)
  loss, metrics = alignment.bradley_terry(**out)
  assert np.isfinite(float(loss)) and 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_dpo_forward_and_head_equal_the_papers_formula_in_numpy():
  model = seq2seq.DecoderLM(**ARCH)
  batch, _, _ = _pair_batch(2)
  rng = np.random.default_rng(2)
  batch["reference_chosen_logp"] = rng.normal(-10, 2, size=5).astype(np.float32)
  batch["reference_rejected_logp"] = rng.normal(-10, 2, size=5).astype(np.float32)
  params = random_params(model, jnp.asarray(batch["chosen"][:, :-1]), seed=2)
  beta = 0.3
  task = get_task("dpo")

  @jax.jit
  def loss_fn(p, b):
    out = task.forward(model.apply, p, b, rng=jax.random.key(0), train=False)
    return alignment.dpo(**out, beta=beta)[0], out

  loss, out = loss_fn(params, batch)
  logps, scale = {}, 0.0
  for key in ("chosen", "rejected"):
    row, mask = batch[key], batch[f"{key}_mask"]
    log_p = _log_softmax(np.concatenate([model.apply({"params": params}, r[None, :-1])
                                         for r in row]))
    scale = max(scale, np.abs(log_p).max())
    targets = np.take_along_axis(log_p, row[:, 1:, None], -1)[..., 0]
    logps[key] = (targets * mask[:, 1:]).sum(-1)
  h = beta * ((logps["chosen"] - batch["reference_chosen_logp"])
              - (logps["rejected"] - batch["reference_rejected_logp"]))
  want = np.mean(-_log_sigmoid(h))
  atol = float32_sum_atol(scale, L * V)
  np.testing.assert_allclose(out["policy_chosen_logps"], logps["chosen"], rtol=0, atol=atol)
  np.testing.assert_allclose(out["policy_rejected_logps"], logps["rejected"], rtol=0, atol=atol)
  # |d loss / d h| <= 1, and h carries beta times the log-probs' rounding (4 of them).
  np.testing.assert_allclose(loss, want, rtol=0, atol=beta * 4 * atol + 10 * FLOAT32_EPS)


def test_missing_inputs_are_named():
  model = seq2seq.DecoderLM(**ARCH)
  batch, _, _ = _pair_batch(3)
  params = random_params(model, jnp.asarray(batch["chosen"][:, :-1]))
  with pytest.raises(ValueError, match="reference_chosen_logp.*reference_rejected_logp"):
    preference.dpo_forward(model.apply, params, batch, rng=jax.random.key(0), train=False)
  with pytest.raises(ValueError, match=r"lacks \['rejected_mask'\]"):
    preference.reward_forward(model.apply, params, {k: v for k, v in batch.items()
                                                    if k != "rejected_mask"},
                              rng=jax.random.key(0), train=False)


def test_backbone_init_from_loads_an_lms_weights_and_keeps_the_head():
  tokens = jnp.asarray(_pair_batch(4)[0]["chosen"])
  lm = seq2seq.DecoderLM(**ARCH)
  lm_params = random_params(lm, tokens, seed=4)
  model = lm_heads.ScalarHeadLM(**ARCH, head_init_std=0.5)
  fresh = random_params(model, tokens, seed=5)
  loaded = pretrained.load_pretrained(fresh, lm_heads.backbone_init_from("mmie:lm_run", model),
                                      loader=lambda source: lm_params)
  for name in lm_heads.BACKBONE:
    jax.tree.map(np.testing.assert_array_equal, loaded[name], lm_params[name])
  jax.tree.map(np.testing.assert_array_equal, loaded[lm_heads.HEAD], fresh[lm_heads.HEAD])
  scalars, logits = model.apply({"params": loaded}, tokens, return_logits=True)
  want_logits, hidden = lm.apply({"params": lm_params}, tokens, return_hidden=True)
  np.testing.assert_array_equal(logits, want_logits)  # The same computation, the same bits.
  kernel = np.asarray(loaded[lm_heads.HEAD]["kernel"], np.float64)
  want = np.asarray(hidden, np.float64) @ kernel[:, 0] + float(loaded[lm_heads.HEAD]["bias"][0])
  np.testing.assert_allclose(scalars, want, rtol=0, atol=float32_sum_atol(
      np.abs(hidden).max() * np.abs(kernel).max(), W))


def test_builder_makes_the_reward_model_and_checks_its_keys():
  section = ml_collections.ConfigDict(dict(name="reward_model", **ARCH))
  model = builder.build_model(section)
  assert isinstance(model, lm_heads.ScalarHeadLM) and model.head_init_std == 0.0
  assert "head_init_std" in builder.model_schema(section)
  section.head_init_std = -1.0
  with pytest.raises(ValueError, match="head_init_std=-1.0 must be >= 0"):
    builder.build_model(section)


def test_default_presets_load_the_kjv_lm_they_are_built_on():
  """The defaults' architecture is configs/lm.py:kjv's, and init_from covers exactly the LM's
  parameters (the reward model's head is the one subtree left to its initialiser)."""
  from mmie.configs import lm as lm_config  # pylint: disable=g-import-not-at-top
  kjv = lm_config.get_config("kjv").model.to_dict()
  for module in (rm_config, dpo_config):
    config = config_lib.validate(module.get_config("default"))
    assert {k: v for k, v in config.model.items() if k in kjv and k != "name"} == {
        k: v for k, v in kjv.items() if k != "name"}
    assert config.data.tokenizer == os.path.join(rm_config.LM_RUN, "tokenizer.json")
  rm = config_lib.validate(rm_config.get_config("default"))
  model = builder.build_model(rm.model)
  tokens = jnp.zeros((1, rm.data.context_length), jnp.int32)
  names = set(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])
  assert set(rm.init_from) == names - {lm_heads.HEAD}
  assert dict(rm.init_from) == lm_heads.backbone_init_from(f"mmie:{rm_config.LM_RUN}", model)
  assert config_lib.validate(dpo_config.get_config("default")).init_from == (
      f"mmie:{rm_config.LM_RUN}")
  with pytest.raises(ValueError, match="unknown preset"):
    dpo_config.get_config("huge")


def test_the_evaluator_counts_pairs_ranked_right():
  """Held-out accuracy over a split whose size the batch does not divide (padded last batch)."""
  config = config_lib.validate(rm_config.get_config("tiny"))
  model = builder.build_model(config.model)
  split = {k: np.concatenate([_pair_batch(s, 7)[0][k] for s in range(3)])
           for k in preference.PAIR_KEYS}  # 21 pairs; context 8 < the model's 32.
  params = random_params(model, jnp.asarray(split["chosen"]), seed=6)
  ctx = EvalContext(config, model, load_split=lambda name: split,
                    encode_prompts=lambda *a: None, decode=lambda ids: "")
  [(_, _, evaluate)] = build_from_specs({"eval": {"type": "preference", "batch_size": 8,
                                                   "prefix": "eval/"}}, config, ctx)
  metrics = evaluate(params)
  scalars = {k: np.asarray(model.apply({"params": params}, split[k])) for k in ("chosen",
                                                                               "rejected")}
  margin = (np.asarray(preference.last_token_value(scalars["chosen"], split["chosen_mask"]))
            - np.asarray(preference.last_token_value(scalars["rejected"],
                                                      split["rejected_mask"])))
  # The same rows in other batches: float32 sums through the width and the MLP, reordered.
  atol = float32_sum_atol(np.abs(margin).max(), config.model.width + config.model.mlp_dim)
  assert np.abs(margin).min() > 10 * atol  # So no pair's sign can differ between the two.
  assert metrics["eval/accuracy"] == pytest.approx(np.mean(margin > 0), abs=1e-12)
  assert metrics["eval/margin"] == pytest.approx(float(margin.mean()), abs=atol)
  # |d bt_loss / d margin| <= 1.
  assert metrics["eval/bt_loss"] == pytest.approx(float(np.mean(np.logaddexp(0, -margin))),
                                                  abs=atol)


def _train(module, tmp_path, **overrides):
  """A tiny preset through the real loop on synthetic pairs written under ``tmp_path``."""
  from mmie.train import loop  # pylint: disable=g-import-not-at-top
  os.environ["MMIE_DATA_DIR"] = str(tmp_path / "data")
  config = module.get_config("tiny")
  config.log_every = 1
  for key, value in overrides.items():
    config[key] = value
  workdir = tmp_path / "run"
  final = loop.train_and_evaluate(config_lib.validate(config), str(workdir))
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  return final, records


@pytest.mark.slow  # Prepares the pairs, compiles and trains 40 steps: ~20 s on 2 cores.
def test_the_reward_model_learns_a_known_preference(tmp_path, monkeypatch):
  """Chosen responses say "gently" where rejected ones say "violently" (else equal): the rule
  is one token, so a model that learns it ranks every held-out pair right. A model that learned
  nothing ranks each of the ~80 held-out pairs right with probability 1/2: 0.9 accuracy then
  has probability < 1e-12 (binomial tail), so passing says the preference was learned."""
  monkeypatch.setenv("MMIE_DATA_DIR", str(tmp_path / "data"))
  final, records = _train(rm_config, tmp_path)
  first = next(r for r in records if "loss" in r)
  # A zero-initialised head gives every reward 0: the first loss is exactly -log sigmoid(0).
  assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2.0), abs=1e-6)
  assert final["eval/accuracy"] >= 0.9, final
  assert final["eval/margin"] > 0 and final["eval/bt_loss"] < math.log(2.0)


@pytest.mark.slow  # As above, for the policy: ~20 s.
def test_dpo_learns_a_known_preference(tmp_path, monkeypatch):
  """Against a reference indifferent between the two responses, DPO must make the chosen
  response likelier: at h = 0 (the first step) the loss is log 2 whatever the policy."""
  monkeypatch.setenv("MMIE_DATA_DIR", str(tmp_path / "data"))
  final, records = _train(dpo_config, tmp_path)
  losses = [r["loss"] for r in records if "loss" in r]
  assert losses[-1] < 0.5 * math.log(2.0), losses
  assert final["eval/accuracy"] >= 0.9, final


@pytest.mark.slow  # Trains configs/lm.py:tiny for 6 steps, then builds the reward model on it.
def test_a_reward_model_starts_from_a_real_lm_checkpoint(tmp_path, monkeypatch):
  from mmie.configs import lm as lm_config  # pylint: disable=g-import-not-at-top
  from mmie.train import loop, setup, trained  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("MMIE_DATA_DIR", str(tmp_path / "data"))
  lm_run = str(tmp_path / "lm")
  loop.train_and_evaluate(config_lib.validate(lm_config.get_config("tiny")), lm_run)
  _, lm, lm_params, _ = trained.load_trained(lm_run)
  config = lm_config.get_config("tiny")
  config.task, config.model.name = "reward_model", "reward_model"
  config.loss.name = "bradley_terry"
  config.init_from = ml_collections.ConfigDict(lm_heads.backbone_init_from(f"mmie:{lm_run}",
                                                                           lm))
  config.evals = ml_collections.ConfigDict()
  run = setup.build_run(config_lib.validate(config), check_data=False)
  params = jax.device_get(setup.init_state(run, run.stage_runs[0]).params)
  assert set(params) == set(lm_params) | {lm_heads.HEAD}
  for name in lm_params:
    jax.tree.map(np.testing.assert_array_equal, params[name], jax.device_get(lm_params[name]))
  tokens = np.tile(np.arange(1, 17, dtype=np.int32), (2, 1))
  _, logits = run.model.apply({"params": params}, tokens, return_logits=True)
  np.testing.assert_array_equal(logits, lm.apply({"params": lm_params}, tokens))
