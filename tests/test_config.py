"""Config validation: every mistake stops the run with one message naming the key."""

import os
import subprocess
import sys

import ml_collections
import pytest

from configs import clip as clip_config
from mmie import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    ("log_every", 100, r"log_every=100 exceeds total_steps=6"),
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
  del cfg["seed"]
  with pytest.raises(config_lib.ConfigError, match="Missing config key seed"):
    config_lib.validate(cfg)


def _main(*args):
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_cli_rejects_unknown_override_before_compiling(tmp_path):
  result = _main("--config=configs/clip.py:tiny", f"--workdir={tmp_path}", "--config.bogus=1")
  assert result.returncode != 0
  assert "bogus" in result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_cli_rejects_impossible_value(tmp_path):
  result = _main("--config=configs/clip.py:tiny", f"--workdir={tmp_path}",
                 "--config.optimizer.learning_rate=-1.0")
  assert result.returncode == 2
  assert "optimizer.learning_rate=-1.0 is not allowed" in result.stderr


def test_bad_evaluator_spec_is_caught_by_validate(cfg):
  cfg.evals = {"val": {"type": "retrieval", "ks": (1, 5), "every": 2, "blokc": 64}}
  with pytest.raises(config_lib.ConfigError, match="Unknown config key evals.val.blokc"):
    config_lib.validate(cfg)
  cfg.evals = {"val": {"type": "retrieval", "every": 2}}
  assert config_lib.validate(cfg).evals.val.every == 2
