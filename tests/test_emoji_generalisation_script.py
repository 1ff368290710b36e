"""scripts/emoji_generalisation.py: what it reuses from earlier runs and the split it writes."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "emoji_generalisation.py")


@pytest.fixture(scope="module")
def script():
  spec = importlib.util.spec_from_file_location("emoji_generalisation", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_a_variant_is_reused_only_with_its_row_and_its_run_directory(script, tmp_path):
  rows = [{"variant": "default", "heldout_r5": 0.1}, {"variant": "base", "heldout_r5": 0.2},
          {"variant": "default", "heldout_r5": 0.3}]
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert script._earlier_row("default", str(tmp_path)) is None  # No run directory: re-run.
  (tmp_path / "default").mkdir()
  assert script._earlier_row("default", str(tmp_path))["heldout_r5"] == 0.3  # The newest row.
  (tmp_path / "lit_minilm").mkdir()
  assert script._earlier_row("lit_minilm", str(tmp_path)) is None  # A directory, no row.
  # run_variant returns the earlier row without calling main.py.
  assert script.run_variant("default", "unused", "unused", str(tmp_path))["heldout_r5"] == 0.3


def test_the_split_is_by_emoji_and_disjoint(script, tmp_path):
  train, heldout = script.write_split(str(tmp_path))
  read = lambda d: [json.loads(l) for l in open(os.path.join(d, "captions.jsonl"))]
  train_rows, held_rows = read(train), read(heldout)
  assert len(held_rows) == round(0.2 * (len(train_rows) + len(held_rows)))
  assert not {r["file"] for r in train_rows} & {r["file"] for r in held_rows}
  assert all(os.path.exists(os.path.join(heldout, r["file"])) for r in held_rows)
