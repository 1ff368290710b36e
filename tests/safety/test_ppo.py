"""PPO on a language model: the rollout sampled in the step, its rewards and advantages against
numpy, the loss head against its formula, the rollout kept for ``epochs`` steps, and PPO
raising a known reward on a toy policy through the real train step while the KL stays bounded.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmie.losses import alignment, build_loss
from mmie.models import layers, ppo_policy
from mmie.tasks import get_task, ppo
from mmie.train import param_rules
from mmie.train.optimizer import build_optimizer
from mmie.train.state import TrainState
from mmie.train.step import make_train_step
from tests.tolerance import float32_sum_atol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAD, BOS, EOS = 0, 1, 2
RULES = (("reference/.*", "frozen"), ("reward/.*", "frozen"), ("policy/.*", 1.0))


def _section(vocab_size, context_length):
  return dict(vocab_size=vocab_size, context_length=context_length, width=16, depth=1,
              num_heads=2, mlp_dim=32, positions="rope")


def _model(vocab_size=16, context_length=12, cls=ppo_policy.PPOPolicy):
  section = _section(vocab_size, context_length)
  base = ppo_policy.build_ppo_policy({"name": "ppo_policy", "policy": section,
                                      "reward": section})
  return cls(policy=base.policy, reference=base.reference, reward=base.reward)


def test_response_mask_by_hand():
  tokens = np.array([[BOS, 7, 5, 6, EOS, PAD, PAD],   # prompt 2, EOS at 4
                     [BOS, 3, 4, 8, 9, 5, 6],         # prompt 3, no EOS: 4 generated
                     [BOS, EOS, PAD, PAD, PAD, PAD, PAD]])  # prompt 1, EOS first
  want = np.array([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0, 0]])
  got = ppo_policy.response_mask(jnp.asarray(tokens), jnp.array([2, 3, 1]), 4, EOS)
  np.testing.assert_array_equal(got, want)


def test_sample_forces_each_prompt_then_stops_at_eos():
  """Ragged prompts are kept token for token; after the first generated EOS only PAD and a
  zero mask follow; no row generates more than response_length tokens."""
  model = _model(vocab_size=6, context_length=10)  # 6 ids: EOS is sampled often.
  b, p, r = 24, 4, 6
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, p + 1, size=b).astype(np.int32)
  prompt = np.where(np.arange(p)[None] < lengths[:, None],
                    rng.integers(3, 6, size=(b, p)), PAD).astype(np.int32)
  prompt[:, 0] = BOS
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(prompt))["params"]
  tokens, mask = jax.jit(lambda k: model.apply(
      {"params": params}, prompt, lengths, k, method="sample", response_length=r))(
          jax.random.PRNGKey(1))
  tokens, mask = np.asarray(tokens), np.asarray(mask)
  assert tokens.shape == mask.shape == (b, p + r)
  ended_early = 0
  for row, n in enumerate(lengths):
    np.testing.assert_array_equal(tokens[row, :n], prompt[row, :n])
    generated = np.nonzero(mask[row])[0]
    assert generated[0] == n and np.all(np.diff(generated) == 1) and len(generated) <= r
    eos = [t for t in generated if tokens[row, t] == EOS]
    if eos:
      assert eos == [generated[-1]]
      assert np.all(tokens[row, generated[-1] + 1:] == PAD)
      ended_early += len(generated) < r
    else:
      assert len(generated) == r
    assert np.all(mask[row, n + r:] == 0)
  assert 0 < ended_early < b, "the seed must give rows that stop at EOS and rows that do not"


def _numpy_rollout(token_mask, lp, ref, values, scalars, kl_coef, gamma, lam):
  """Shaped rewards, GAE and whitening written as the papers' loops, in float64."""
  mask = token_mask[:, 1:].astype(np.float64)
  b, t_len = lp.shape
  rewards, adv = np.zeros((b, t_len)), np.zeros((b, t_len))
  for row in range(b):
    steps = np.nonzero(mask[row])[0]
    for t in steps:
      rewards[row, t] = -kl_coef * (lp[row, t] - ref[row, t])
    rewards[row, steps[-1]] += scalars[row, np.nonzero(token_mask[row])[0][-1]]
    carry = 0.0
    for t in steps[::-1]:
      next_value = values[row, t + 1] if t + 1 in steps else 0.0
      carry = rewards[row, t] + gamma * next_value - values[row, t] + gamma * lam * carry
      adv[row, t] = carry
  returns = (adv + values) * mask
  real = mask > 0
  whitened = (adv - adv[real].mean()) / np.sqrt(adv[real].var() + 1e-8) * mask
  return rewards, whitened, returns


def test_rollout_rewards_and_gae_equal_numpy():
  token_mask = np.array([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0, 0]],
                        np.float32)
  rng = np.random.default_rng(3)
  lp, ref = (rng.normal(-2.0, 0.5, size=(3, 6)).astype(np.float32) for _ in range(2))
  values = rng.normal(size=(3, 6)).astype(np.float32)
  scalars = rng.normal(size=(3, 7)).astype(np.float32)
  kl_coef, gamma, lam = 0.1, 0.9, 0.8
  out = jax.jit(lambda *a: ppo.rollout_targets(*a, kl_coef=kl_coef, gamma=gamma, lam=lam))(
      np.zeros((3, 7), np.int32), token_mask, lp, ref, values, scalars)
  rewards, adv, returns = _numpy_rollout(token_mask, lp.astype(np.float64), ref, values,
                                         scalars, kl_coef, gamma, lam)
  atol = float32_sum_atol(np.abs(returns).max() + np.abs(values).max(), 6)
  got_rewards, _ = alignment.kl_shaped_rewards(
      jnp.asarray([scalars[0, 4], scalars[1, 6], scalars[2, 1]]), lp, ref, token_mask[:, 1:],
      kl_coef=kl_coef)
  np.testing.assert_allclose(got_rewards, rewards, rtol=0, atol=atol)
  np.testing.assert_allclose(out["returns"], returns, rtol=0, atol=atol)
  np.testing.assert_allclose(out["advantages"], adv, rtol=0, atol=float32_sum_atol(adv, 18))
  np.testing.assert_array_equal(out["mask"], token_mask[:, 1:])
  scores = np.array([scalars[0, 4], scalars[1, 6], scalars[2, 1]])
  np.testing.assert_allclose(out["metrics"]["reward"], scores.mean(), rtol=1e-6)
  kl = (lp.astype(np.float64) - ref) * token_mask[:, 1:]
  np.testing.assert_allclose(out["metrics"]["kl_per_token"], kl.sum() / 8, rtol=0,
                             atol=float32_sum_atol(np.abs(kl).max(), 8))
  np.testing.assert_allclose(out["metrics"]["response_length"], 8 / 3, rtol=1e-6)


@pytest.mark.parametrize("value_clip", [None, 0.2])
def test_ppo_head_is_the_papers_loss(value_clip):
  rng = np.random.default_rng(4)
  shape = (4, 5)
  lp, old = (rng.normal(-1.5, 0.3, size=shape).astype(np.float32) for _ in range(2))
  adv, values, old_values, returns = (rng.normal(size=shape).astype(np.float32)
                                      for _ in range(4))
  entropy = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
  mask = (rng.uniform(size=shape) < 0.7).astype(np.float32)
  eps, vc, ec = 0.2, 0.5, 0.01
  loss, metrics = jax.jit(lambda *a: alignment.ppo(
      *a[:5], old_values=a[5], mask=a[6], entropy=a[7], rollout_metrics={"reward": a[8]},
      clip_eps=eps, value_clip=value_clip, value_coef=vc, entropy_coef=ec))(
          lp, old, adv, values, returns, old_values, mask, entropy, np.float32(0.25))
  f = lambda x: x.astype(np.float64)
  mean = lambda x: np.sum(x * mask) / np.sum(mask)
  ratio = np.exp(f(lp) - old)
  policy = -mean(np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv))
  sq = (f(values) - returns) ** 2
  if value_clip is not None:
    clipped = old_values + np.clip(f(values) - old_values, -value_clip, value_clip)
    sq = np.maximum(sq, (clipped - returns) ** 2)
  want = policy + vc * 0.5 * mean(sq) - ec * mean(entropy)
  atol = float32_sum_atol(np.abs(sq).max() + np.abs(adv).max() * 2, 20)
  np.testing.assert_allclose(loss, want, rtol=0, atol=atol)
  np.testing.assert_allclose(metrics["value_loss"], 0.5 * mean(sq), rtol=0, atol=atol)
  np.testing.assert_allclose(metrics["clip_fraction"], mean(np.abs(ratio - 1) > eps), rtol=1e-6)
  assert float(metrics["reward"]) == 0.25


def _fake_source(version, rows=2):
  """A RolloutSource whose experience is all ``version``, and an evaluate that echoes it."""
  def collect():
    full = lambda: jnp.full((rows, 3), version, jnp.float32)
    return {"tokens": jnp.zeros((rows, 4), jnp.int32), "mask": jnp.ones((rows, 3)),
            "log_probs": full(), "values": full(), "advantages": full(), "returns": full(),
            "metrics": {"reward": jnp.float32(version)}}
  evaluate = lambda r: {"log_probs": r["log_probs"], "values": r["values"],
                        "entropy": r["values"]}
  return alignment.RolloutSource(collect, evaluate)


def test_ppo_rollout_keeps_a_rollout_for_epochs_steps():
  transform = alignment.ppo_rollout(epochs=3)
  state = transform.init({"rollout": _fake_source(0.0)})
  np.testing.assert_array_equal(state["log_probs"], 0.0)
  apply = jax.jit(lambda version, state, step: transform.apply(
      {"rollout": _fake_source(version)}, state, step=step, rng=jax.random.PRNGKey(0)))
  seen = []
  for step in range(7):  # Step s offers experience version s; only s % 3 == 0 is collected.
    inputs, state = apply(float(step), state, step)
    seen.append(float(inputs["old_log_probs"][0, 0]))
    assert "rollout" not in inputs and float(inputs["rollout_metrics"]["reward"]) == seen[-1]
  assert seen == [0, 0, 0, 3, 3, 3, 6]
  assert alignment.ppo_rollout(epochs=1).init({"rollout": _fake_source(0.0)}) == ()
  with pytest.raises(ValueError, match="positive int"):
    alignment.ppo_rollout(epochs=0)
  with pytest.raises(KeyError, match="RolloutSource"):
    transform.apply({"logits": 0}, state, step=0, rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="grad_accum_steps=1"):  # A micro-batch's rollout.
    transform.apply({"rollout": _fake_source(0.0, rows=1)}, state, step=0,
                    rng=jax.random.PRNGKey(0))


MARK, RESPONSE = 5, 6  # The toy reward: the fraction of MARK among RESPONSE sampled tokens.


class _CountingReward(ppo_policy.PPOPolicy):
  """The reward 'model' is known exactly: at every position, the count of MARK so far / R."""

  def reward_scalars(self, tokens):
    return jnp.cumsum(tokens == MARK, axis=1).astype(jnp.float32) / RESPONSE


def test_ppo_raises_a_known_reward_while_kl_stays_bounded():
  """Through ``make_train_step``: a random policy learns to say MARK.

  The bound: PPO maximises J(pi) = E_pi[r] - kl_coef * KL(pi || ref). Any policy with J(pi)
  >= J(ref) = E_ref[r] has KL(pi || ref) <= (E_pi[r] - E_ref[r]) / kl_coef (<= 1 / kl_coef, as
  r is in [0, 1]): the penalty keeps the KL paid for by reward. The KL-optimal policy tilts
  each token by exp(r_token / kl_coef) = exp(1 / (6 * 0.05)) = 28x towards MARK, so the optimum
  takes reward from p to at least 28p / (28p + 1 - p); we ask for half the way to 1.
  """
  kl_coef, epochs, steps, b = 0.05, 2, 40, 32
  model = _model(vocab_size=16, context_length=3 + RESPONSE, cls=_CountingReward)
  task = get_task(f"ppo(response_length={RESPONSE}, kl_coef={kl_coef})")
  loss = build_loss({"name": "ppo", "transforms": [f"ppo_rollout(epochs={epochs})"]})
  prompt = np.array([[BOS, 3, 4], [BOS, 6, PAD], [BOS, PAD, PAD], [BOS, 7, 8]] * (b // 4),
                    np.int32)
  batch = {"prompt": prompt, "prompt_length": (prompt > 0).sum(1).astype(np.int32)}
  params = layers.unbox(model.init(jax.random.PRNGKey(0), jnp.asarray(prompt))["params"])
  jax.tree.map(np.testing.assert_array_equal, params["reference"],
               {k: params["policy"][k] for k in params["reference"]})  # ref = initial policy
  opt = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=3e-3, warmup_steps=0, end_learning_rate_ratio=1.0,
      weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8, grad_clip_norm=1.0))
  tx, schedule = build_optimizer(opt, steps, params, RULES)
  example = task.forward(model.apply, params, batch, rng=jax.random.PRNGKey(1), train=True)
  state = TrainState.create(params=params, tx=tx, apply_fn=model.apply,
                            loss_state=loss.init(example), rng=jax.random.PRNGKey(2))
  trainable = param_rules.trainable_mask(param_rules.parse_rules(RULES), params)
  step = jax.jit(make_train_step(task, loss, schedule, trainable=trainable))
  history = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  reward = np.array([m["reward"] for m in history])
  kl = np.array([m["kl_per_sequence"] for m in history])
  start, end = reward[0], reward[-10:].mean()  # reward[0]: the policy is still the reference.
  assert end >= start + 0.5 * (1.0 - start), reward
  assert 0.0 < kl[-10:].mean() <= (end - start) / kl_coef, (kl, reward)
  # A fresh rollout's first step has ratio 1 exactly; the reused one's has moved (the clip's
  # business), so epochs=2 really optimises twice on one rollout.
  fresh, reused = history[::epochs], history[1::epochs]
  assert all(abs(float(m["approx_kl"])) < 1e-6 and float(m["clip_fraction"]) == 0 for m in fresh)
  assert sum(float(m["approx_kl"]) > 1e-6 for m in reused) >= len(reused) // 2
  assert max(float(m["clip_fraction"]) for m in reused) > 0
  for name in ("reference", "reward"):  # Frozen: bit for bit.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params[name]),
                 params[name])
  assert not np.array_equal(state.params["policy"]["decoder"]["layer_0"]["mlp"]["fc1"]["kernel"],
                            params["policy"]["decoder"]["layer_0"]["mlp"]["fc1"]["kernel"])


def test_model_config_errors_name_the_key():
  section = _section(16, 12)
  with pytest.raises(ValueError, match="eos_id=2 vs 3"):
    ppo_policy.build_ppo_policy({"name": "ppo_policy", "policy": section,
                                 "reward": {**section, "eos_id": 3}})
  with pytest.raises(Exception, match="model.policy.depthh"):
    ppo_policy.build_ppo_policy({"name": "ppo_policy", "policy": {**section, "depthh": 1},
                                 "reward": section})
  with pytest.raises(ValueError, match="top_p"):
    get_task("ppo(top_p=0.0)").forward(None, {}, {}, rng=None, train=True)


def _main(workdir, *flags):
  env = {**os.environ, "MMIE_DATA_DIR": str(workdir.parent / "data")}
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/ppo.py:tiny", f"--workdir={workdir}",
       "--config.log_every=1", "--config.checkpoint_every=3", "--config.eval_every=0", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_tiny_preset_trains_and_resumes_mid_rollout_through_main(tmp_path):
  """The tiny preset end to end; stopped after step 3 and resumed, the run (epochs=2: step 3
  reuses step 2's rollout, which only the checkpointed loss state holds) equals a straight
  one metric for metric."""
  straight = _main(tmp_path / "straight")
  for key in ("loss", "reward", "kl_per_token", "clip_fraction", "value_loss",
              "response_length", "approx_kl"):
    assert len([r for r in straight if key in r]) == 8, key
    assert all(math.isfinite(r[key]) for r in straight if key in r), key
  _main(tmp_path / "resumed", "--config.total_steps=3")
  resumed = _main(tmp_path / "resumed")
  assert [r["step"] for r in resumed] == list(range(1, 9))
  for a, b in zip(straight, resumed):
    for key in ("loss", "reward", "approx_kl", "kl_per_token", "value_loss"):
      assert a[key] == b[key], (a["step"], key)
  assert any(r["approx_kl"] != 0 for r in resumed[3:]), "the reused rollouts moved the ratio"


def test_min_response_length_bans_eos_until_reached():
  """A policy that puts all its mass on EOS still samples ``min_response_length`` tokens."""
  from mmie.models import decoding  # pylint: disable=g-import-not-at-top
  vocab, eos = 5, 2

  def step_fn(tokens, state):
    logits = jnp.full((tokens.shape[0], vocab), -30.0).at[:, eos].set(0.0)
    return logits, state

  prompt = jnp.asarray([[1, 3, 4, 0], [1, 0, 0, 0]], jnp.int32)
  out = decoding.sample_after_prompts(step_fn, None, prompt, jnp.asarray([3, 1]),
                                      jax.random.key(0), max_length=10, eos_id=eos,
                                      new_tokens=6, min_new_tokens=3)
  out = np.asarray(out)
  for row, length in zip(out, (3, 1)):
    generated = row[length:length + 6].tolist()
    assert eos not in generated[:3] and generated[3] == eos, row
