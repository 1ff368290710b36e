"""Loop hooks: early stopping (logic and in a run, across resume) and the profiler window."""

import json
import os

import pytest

from mmie.configs import clip as clip_config
from mmie import config as config_lib
from mmie.config import ConfigError
from mmie.train import hooks, loop


def test_early_stopping_counts_evaluations_without_improvement():
  es = hooks.EarlyStopping(metric="acc", mode="max", patience=2, min_delta=0.5)
  assert not es.update({"acc": 1.0})        # First value: best.
  assert not es.update({"acc": 1.4})        # Not better by min_delta: 1 bad evaluation.
  assert not es.update({"acc": 2.0})        # Better: the count resets.
  assert not es.update({"other": 9.0})      # Missing metric: ignored.
  assert not es.update({"acc": 2.0})
  assert es.update({"acc": 1.0})            # Second bad evaluation in a row: stop.
  restored = hooks.EarlyStopping(metric="acc", mode="max", patience=2)
  restored.load(es.state())
  assert (restored.best, restored.bad_evals, restored.stopped) == (2.0, 2, True)
  low = hooks.EarlyStopping(metric="loss", mode="min", patience=1)
  assert not low.update({"loss": 3.0}) and not low.update({"loss": 2.0})
  assert low.update({"loss": 2.5})


@pytest.mark.parametrize("spec,message", [
    ({"mode": "min"}, "needs a metric"),
    ({"metric": "a", "mode": "up"}, "expected 'max' or 'min'"),
    ({"metric": "a", "patience": 0}, "patience must be >= 1"),
    ({"metric": "a", "patiense": 2}, "Unknown config key train.early_stopping.patiense"),
])
def test_early_stopping_config_errors(spec, message):
  with pytest.raises(ConfigError, match=message):
    hooks.EarlyStopping.from_config(spec)


def test_profiler_window_rejects_bad_range(tmp_path):
  with pytest.raises(ConfigError, match="0 <= start < end"):
    hooks.ProfilerWindow((3, 3), str(tmp_path))


def test_run_stops_early_and_profiles_a_window(tmp_path, capsys, monkeypatch):
  cfg = clip_config.get_config("tiny")
  cfg.eval_every = 1
  cfg.train = {
      # Nothing improves by 1000 points: the second evaluation is already "bad".
      "early_stopping": {"metric": "eval/i2t_recall@10", "mode": "max", "patience": 1,
                         "min_delta": 1000.0},
      "profile_steps": (1, 2),
  }
  config = config_lib.validate(cfg)
  monkeypatch.chdir(tmp_path)
  workdir = "run"  # Relative, as README's command gives it.
  loop.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "Early stopping at step 2" in out
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "2"
  assert any(files for _, _, files in os.walk(os.path.join(workdir, "profile")))
  # Re-running the same command does not train past the early stop.
  loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert max(steps) == 2


def test_workdir_lock_refuses_a_second_live_run(tmp_path):
  with hooks.WorkdirLock(str(tmp_path)):
    with pytest.raises(RuntimeError, match=rf"Another run \(pid {os.getpid()}\) is using"):
      with hooks.WorkdirLock(str(tmp_path)):
        pass
  with hooks.WorkdirLock(str(tmp_path)):  # Released on exit: the next run may start.
    pass
