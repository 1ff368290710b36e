"""PPO: the language model tuned against the reward model, with a KL penalty to its frozen copy
(Ouyang et al. 2022), its rollouts sampled inside the jitted train step.

Presets (``--config=configs/ppo.py:PRESET``):
  default  policy and reference from the KJV language model's run (``runs/kjv_lm``), the
           reward model from its run (``runs/kjv_reward_model``), prompts from
           ``runs/kjv_prompts.jsonl`` (one ``{"prompt": ...}`` per line) in the LM's
           vocabulary.
  tiny     a seconds-long run from scratch (random policy and reward model) on the synthetic
           pairs' prompts of configs/reward_model.py: a smoke test of the whole loop.

The ``ppo`` task (mmie/tasks/ppo.py) reads the ``prompts`` view; the loss is the ``ppo`` head
behind the ``ppo_rollout`` transform, whose ``epochs`` reuses one rollout for that many
consecutive steps (docs/safety.md, PPO). ``reference/`` and ``reward/`` are frozen.
"""

import ml_collections

from mmie.configs import reward_model

PRESETS = ("default", "tiny")
REWARD_RUN = "runs/kjv_reward_model"  # The reward model's workdir (configs/reward_model.py).
PROMPTS = "runs/kjv_prompts.jsonl"  # Training prompts, {"prompt": ...} per line.


def _section(tiny: bool) -> ml_collections.ConfigDict:
  """The LM's architecture as a ``model.policy`` / ``model.reward`` section (no name)."""
  section = reward_model.lm_model(tiny)
  del section["name"]
  section.dropout_rate = 0.0  # The policy runs without dropout: it would perturb the ratio.
  section.head_init_std = 0.0  # A zero value head: every value starts at 0.
  return section


def init_from(lm_run: str, reward_run: str, policy: ml_collections.ConfigDict
              ) -> dict[str, str]:
  """The policy's backbone and the reference from the LM run, the reward model from its run;
  the value head starts fresh. Subtree paths (``'policy/decoder'``) name where each goes."""
  lm = f"mmie:{lm_run}"
  return {**{f"policy/{name}": lm for name in reward_model.backbone(policy)}, "reference": lm,
          "reward": f"mmie:{reward_run}"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the PPO config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"configs/ppo.py: unknown preset {preset!r}; choose one of {PRESETS}.")
  tiny = preset == "tiny"

  config = ml_collections.ConfigDict()
  # Rollouts: 8 (tiny) or 32 tokens after each prompt, sampled at temperature 1.
  # docs/safety.md measured kl_coef 0.05 and 0.2: the reward model (which learned that clean
  # answers are shorter) was won by ending early and the policy drifted (perplexity on clean
  # text x11 and x4). EOS banned for 16 tokens and kl_coef 1.0-1.5 hold it near the LM.
  config.task = ("ppo(response_length=8, kl_coef=0.05)" if tiny else
                 "ppo(response_length=32, temperature=1.0, kl_coef=1.25, gamma=1.0, lam=0.95, "
                 "min_response_length=16)")
  config.seed = 0
  config.batch_size = 8 if tiny else 32
  config.total_steps = 8 if tiny else 400
  config.log_every = 2 if tiny else 10
  config.eval_every = 8 if tiny else 100
  config.checkpoint_every = 4 if tiny else 100
  config.keep_checkpoints = 2

  config.model = ml_collections.ConfigDict()
  config.model.name = "ppo_policy"
  config.model.policy = _section(tiny)
  config.model.reward = _section(tiny)
  if tiny:  # A random reward model (head N(0, 1)): scores that differ, so PPO has a signal.
    config.model.reward.head_init_std = 1.0
  if not tiny:
    config.init_from = ml_collections.ConfigDict(
        init_from(reward_model.LM_RUN, REWARD_RUN, config.model.policy))
  config.param_rules = (("reference/.*", "frozen"), ("reward/.*", "frozen"), ("policy/.*", 1.0))

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "ppo(clip_eps=0.2, value_clip=0.2, value_coef=0.5, entropy_coef=0.0)"
  config.loss.transforms = ("ppo_rollout(epochs=2)" if tiny else "ppo_rollout(epochs=4)",)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3 if tiny else 1e-5
  config.optimizer.warmup_steps = 2 if tiny else 20
  config.optimizer.end_learning_rate_ratio = 1.0  # Constant after warm-up, as RLHF runs are.
  config.optimizer.weight_decay = 0.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 1.0

  config.data = ml_collections.ConfigDict()
  if tiny:
    path = reward_model.synthetic_pairs_file()
    config.data.name = (f"jsonl(path='{path}', validation_fraction=0.2, "
                        f"vocab_size={config.model.policy.vocab_size})")
    config.data.tokenizer = ""
  else:
    config.data.name = f"jsonl(path='{PROMPTS}', validation_fraction=0.1)"
    config.data.tokenizer = f"{reward_model.LM_RUN}/tokenizer.json"
  config.data.data_dir = ""
  config.data.context_length = config.model.policy.get_ref("context_length")
  config.data.prompt_length = 8 if tiny else 32  # + response_length <= context_length.
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.evals = ml_collections.ConfigDict()  # PPO's figures are the red-team harness's.
  return config
