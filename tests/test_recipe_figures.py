"""scripts/recipe_figures.py: the table it builds from finished runs (``--reuse``)."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "recipe_figures.py")


def _load():
  spec = importlib.util.spec_from_file_location("recipe_figures", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fake_run(parent, recipe, records, run):
  workdir = os.path.join(parent, recipe)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(os.path.join(workdir, "recipe_run.json"), "w") as f:
    json.dump(run, f)
  return workdir


def test_reuse_reads_the_last_evaluation_the_mean_speed_and_the_command(tmp_path):
  records = [{"step": 10, "examples_per_second": 100.0},
             {"step": 10, "eval/top1": 50.0, "eval/top5": 90.0},
             {"step": 20, "examples_per_second": 300.0},
             {"step": 20, "eval/top1": 75.0}]
  run = {"wall_min": 2.5, "start": 0.0,
         "command": "python main.py --config=configs/vit_classify.py --config.total_steps=20"}
  _fake_run(tmp_path, "vit_classify", records, run)
  out = subprocess.run([sys.executable, SCRIPT, "--recipes=vit_classify", "--reuse",
                        f"--workdir={tmp_path}"], capture_output=True, text=True, check=True)
  row = out.stdout.strip().splitlines()[-1]
  # Last top-1 (75), top-5 kept from the step it was logged at, mean of 100 and 300 ex/s.
  assert row == ("| `configs/vit_classify.py` | 20 | 2.5 | 200 | `top1` 75.00, `top5` 90.00 | "
                 f"`{run['command']}` |")


def test_a_finished_run_without_reuse_is_refused(tmp_path):
  _fake_run(tmp_path, "lm", [{"step": 1}], {"wall_min": 1.0, "start": 0.0, "command": "x"})
  out = subprocess.run([sys.executable, SCRIPT, "--recipes=lm", f"--workdir={tmp_path}"],
                       capture_output=True, text=True)
  assert out.returncode != 0 and "--reuse" in out.stderr


def test_run_recipe_passes_overrides_as_config_flags(tmp_path, monkeypatch):
  module = _load()
  seen = {}

  def fake_run(command, **kwargs):
    seen["command"] = command
    workdir = command[3].removeprefix("--workdir=")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 3}) + "\n")
    return subprocess.CompletedProcess(command, 0, "", "")

  monkeypatch.setattr(module.subprocess, "run", fake_run)
  row = module.run_recipe("simclr", "tiny", str(tmp_path / "simclr"), ["total_steps=3"])
  assert seen["command"][2:] == ["--config=configs/simclr.py:tiny",
                                 f"--workdir={tmp_path / 'simclr'}", "--config.total_steps=3"]
  assert row["steps"] == 3
  assert row["command"] == ("python main.py --config=configs/simclr.py:tiny "
                            "--config.total_steps=3")
