"""Config validation: every mistake stops the run with one message naming the key."""

import ml_collections
import pytest

from mmie.configs import clip as clip_config
from mmie import config as config_lib

@pytest.fixture
def cfg():
  return clip_config.get_config("tiny")


def test_presets_validate_and_freeze():
  for preset in ("tiny", "default"):
    frozen = config_lib.validate(clip_config.get_config(preset))
    assert isinstance(frozen, ml_collections.FrozenConfigDict)
    with pytest.raises(AttributeError):
      frozen.batch_size = 3  # Frozen: nothing below the config edge can change it.


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    clip_config.get_config("huge")


def test_unknown_top_level_key(cfg):
  cfg.batch_sise = 4
  with pytest.raises(config_lib.ConfigError, match=r"Unknown config key batch_sise.*batch_size"):
    config_lib.validate(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("batch_size", 0, r"batch_size=0 is not allowed; expected a positive integer"),
    ("batch_size", True, r"batch_size=True has type bool; expected int"),
    ("total_steps", 2.5, r"total_steps=2.5 has type float; expected int"),
    ("eval_every", 100, r"eval_every=100 exceeds total_steps=6"),
])
def test_bad_top_level_values(cfg, key, value, message):
  # As a user's own config file would write it (a ConfigDict refuses later type changes).
  as_written = cfg.to_dict()
  as_written[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(ml_collections.ConfigDict(as_written))


def test_bad_optimizer(cfg):
  cfg.optimizer.name = "adam_typo"
  with pytest.raises(config_lib.ConfigError, match=r"optimizer.name='adam_typo'.*'adamw'"):
    config_lib.validate(cfg)
  cfg.optimizer.name = "adamw"
  cfg.optimizer.warmup_steps = 6
  with pytest.raises(config_lib.ConfigError, match=r"optimizer.warmup_steps=6 must be below"):
    config_lib.validate(cfg)


def test_missing_key(cfg):
  del cfg["task"]
  with pytest.raises(config_lib.ConfigError, match="Missing config key task"):
    config_lib.validate(cfg)


def test_defaults_are_filled_from_the_schemas(cfg):
  """Keys the file never wrote exist after filling, each with its owning schema's default."""
  from mmie import cli  # pylint: disable=g-import-not-at-top
  del cfg["seed"]
  assert config_lib.validate(cfg).seed == 0  # The engine's own sections.
  frozen = config_lib.validate(cli.fill_all_defaults(cfg))  # Model and evaluators too.
  assert frozen.seed == 0
  assert frozen.train.ema_decay is None and frozen.train.accumulation == "mean"
  assert frozen.mesh.data == -1 and frozen.data.augment.color_jitter == 0.0
  assert frozen.model.image.positions == "learned"  # mmie/models/builder.py's VIT_KEYS.
  assert frozen.evals.eval.type == "contrastive"  # The task's default evaluators.
  assert frozen.evals.eval.batch_size == 256


def test_unknown_key_inside_data_is_rejected_with_suggestion(cfg):
  cfg.data.augment.random_flipp = True
  with pytest.raises(config_lib.ConfigError,
                     match=r"data.augment.random_flipp. Did you mean 'random_flip'"):
    config_lib.validate(cfg)


def test_the_old_eval_section_points_to_evals(cfg):
  cfg.eval = ml_collections.ConfigDict({"batch_size": 3})
  with pytest.raises(config_lib.ConfigError, match="merged into config.evals"):
    config_lib.validate(cfg)


def test_bad_evaluator_spec_is_caught_by_the_up_front_build(cfg):
  from mmie.train import setup  # pylint: disable=g-import-not-at-top
  cfg.evals = {"val": {"type": "retrieval", "ks": (1, 5), "every": 2, "blokc": 64}}
  with pytest.raises(config_lib.ConfigError, match="Unknown config key evals.val.blokc"):
    setup.build_run(config_lib.validate(cfg))
  cfg.evals = {"val": {"type": "retrieval", "every": 2}}
  assert config_lib.validate(cfg).evals.val.every == 2


def test_vision_recipes_schedule_follows_a_total_steps_override():
  """``--config.total_steps=N`` (config_flags assigns the field) moves the four evaluations
  and the 5% warmup with it: ceil(N / 4) and ceil(N / 20)."""
  from mmie.configs import simclr, vit_classify  # pylint: disable=g-import-not-at-top
  for module in (simclr, vit_classify):
    config = module.get_config()
    config.total_steps = 402
    assert (config.eval_every, config.optimizer.warmup_steps) == (101, 21)
    frozen = config_lib.validate(config)
    assert (frozen.eval_every, frozen.optimizer.warmup_steps) == (101, 21)


def test_ssl_hybrid_blend_follows_a_total_steps_override():
  """The hand-over from NT-Xent to VICReg covers the middle half of whatever run length the
  command line gives: begin N // 4, length ceil(N / 2)."""
  from mmie.configs import ssl_hybrid  # pylint: disable=g-import-not-at-top
  from mmie.losses import SCHEDULES  # pylint: disable=g-import-not-at-top
  config = ssl_hybrid.get_config()
  config.total_steps = 402
  frozen = config_lib.validate(config)
  contrastive = SCHEDULES.build(frozen.loss.terms.contrastive.weight)
  vicreg = SCHEDULES.build(frozen.loss.terms.vicreg.weight)
  assert float(contrastive(100)) == 1.0 and float(vicreg(100)) == 0.0
  assert float(contrastive(100 + 201)) == 0.0
  assert float(vicreg(100 + 201)) == pytest.approx(0.04, rel=1e-6)
  assert float(contrastive(100 + 67)) == pytest.approx(1 - 67 / 201, rel=1e-6)
