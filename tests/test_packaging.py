"""``pip install .`` alone gives a package that trains: its runtime dependencies, the shipped
configs, the embedded emoji set, the shipped vocabulary and the ``mmie-train`` console script,
used from outside the checkout (no ``PYTHONPATH``, no repository files on the path).

Slow (a fresh venv installs every dependency from the package index or pip's cache).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Build outputs and local state that a clean checkout does not have.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "runs", ".jax_cache", "build", "dist",
                                     "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.mark.slow
def test_pip_install_alone_gives_a_console_script_that_trains(tmp_path):
  # A copy of the checkout, so the build's in-tree outputs never land in the repository.
  source = tmp_path / "src"
  shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)], env=env,
                           capture_output=True, text=True, timeout=1500)
  assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env["MMIE_DATA_DIR"] = str(tmp_path / "data")  # Prepared from the package's own emoji set.
  where = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import mmie, mmie.configs; print(mmie.__file__)"],
                         cwd=outside, env=env, capture_output=True, text=True, check=True)
  assert str(venv) in where.stdout and str(source) not in where.stdout
  # The default CLIP's vocabulary is package data too (configs/clip.py, ADR 0020).
  vocab = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "from mmie.data import tokenizer as t; p = t.resolve_alias("
                          "'bert_uncased'); print(p, t.load_tokenizer(p).vocab_size)"],
                         cwd=outside, env=env, capture_output=True, text=True, check=True)
  assert str(venv) in vocab.stdout and vocab.stdout.split()[-1] == "30522"

  workdir = outside / "run"
  run = subprocess.run([str(venv / "bin" / "mmie-train"), "--config=clip:tiny",
                        f"--workdir={workdir}"], cwd=outside, env=env, capture_output=True,
                       text=True, timeout=900)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "loss" in r]
  config = json.loads((workdir / "config.json").read_text())
  assert steps and steps[-1] == config["total_steps"]
  assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)  # Finite, not NaN.
  assert any(k.startswith("eval/") for r in rows for k in r)
  assert (workdir / "checkpoints").is_dir()
  assert os.listdir(tmp_path / "data")  # The emoji set was prepared from the installed assets.

  # A name that is not shipped fails with the list of names, before anything heavy runs.
  bad = subprocess.run([str(venv / "bin" / "mmie-train"), "--config=clipp",
                        f"--workdir={outside / 'bad'}"], cwd=outside, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "shipped configs: barlow_twins" in bad.stderr
