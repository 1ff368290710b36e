"""``main.py --workdir=RUN --mode=evaluate --eval_data=SOURCE``: a trained run evaluated on
another folder, read whole, with the run's own config and tokenizer, in one line.

The same evaluation spelled out by hand (the folder with ``validation_fraction=0.0``, its
``train`` split, the run's ``tokenizer.json``) is the independent reference. Slow: it trains
the tiny CLIP through ``main.py`` (about a minute on 2 cores).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/clip.py:tiny"
N_IMAGES = 24


def _folder(path) -> str:
  """Captioned images the run never saw, in the folder layout of README's own-data section."""
  rng = np.random.default_rng(1)
  os.makedirs(path / "img")
  rows = []
  for i in range(N_IMAGES):
    image = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(image).save(path / "img" / f"{i:03d}.png")
    rows.append({"file": f"img/{i:03d}.png", "caption": f"a speckled tile number {i}"})
  with open(path / "captions.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


def _main(tmp_path, workdir, *args, config=(TINY,)):
  env = {**os.environ, "MMIE_DATA_DIR": str(tmp_path / "data")}
  result = subprocess.run([sys.executable, "main.py", *config, f"--workdir={workdir}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_eval_data_evaluates_another_folder_whole_with_the_runs_tokenizer(tmp_path):
  """In one line: no --config either, since the run's own config.json (with the override it
  was trained with) is what the checkpoint needs."""
  workdir = tmp_path / "run"
  override = "--config.model.embed_dim=16"  # Not the preset's: a bare --config would refuse.
  _main(tmp_path, workdir, override)
  folder = _folder(tmp_path / "held_out")
  before = (workdir / "metrics.jsonl").read_text()

  stdout = _main(tmp_path, workdir, "--mode=evaluate", f"--eval_data=folder(path='{folder}')",
                 config=())
  # Every image was evaluated: a random ranking's median rank over N items is (N + 1) / 2.
  assert f"median_rank {(N_IMAGES + 1) / 2:.2f}" in stdout, stdout[-2000:]
  assert (workdir / "metrics.jsonl").read_text() == before, "the run's own curves stay its own"
  [record] = _lines(workdir / "evaluations.jsonl")
  assert record["data"] == f"folder(path='{folder}')"
  assert record["step"] == max(r["step"] for r in _lines(workdir / "metrics.jsonl"))

  # The same evaluation spelled out key by key, recorded in metrics.jsonl as any evaluation.
  _main(tmp_path, workdir, "--mode=evaluate", override,
        f"--config.data.name=folder(path='{folder}', validation_fraction=0.0)",
        "--config.data.eval_split=train", f"--config.data.tokenizer={workdir}/tokenizer.json")
  by_hand = _lines(workdir / "metrics.jsonl")[-1]
  metrics = {k: v for k, v in record.items() if k.startswith("eval/")}
  assert metrics and "eval/i2t_recall@5" in metrics, sorted(record)
  assert metrics == {k: by_hand[k] for k in metrics}
