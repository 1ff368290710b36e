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
  split = {"known_r5": 0.4, "known_n": 2, "new_r5": 0.1, "new_n": 1}
  rows = [{"variant": "default", "heldout_r5": 0.1}, {"variant": "base", "heldout_r5": 0.2},
          {"variant": "default", "heldout_r5": 0.3, **split}]
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


def test_a_row_from_before_the_novelty_split_gets_it_without_retraining(script, tmp_path,
                                                                        monkeypatch):
  (tmp_path / "results.jsonl").write_text(json.dumps({"variant": "base", "heldout_r5": 0.2})
                                          + "\n")
  (tmp_path / "base").mkdir()
  calls = []
  split = {"known_r5": 0.5, "known_n": 3, "new_r5": 0.0, "new_n": 1}
  monkeypatch.setattr(script, "novelty_recall", lambda *a: calls.append(a) or split)
  monkeypatch.setattr(script, "_main_py", lambda args: pytest.fail("must not train"))
  row = script.run_variant("base", "unused", "HELD", str(tmp_path))
  assert row == {"variant": "base", "heldout_r5": 0.2, **split}
  assert calls == [(str(tmp_path / "base"), "HELD")]
  assert script._earlier_row("base", str(tmp_path)) == row  # Stored: the next call reads it.


def test_names_with_a_new_token_and_their_recalls(script):
  import numpy as np
  tokens = np.array([[101, 7, 102, 0], [101, 9, 102, 0], [101, 102, 0, 0]])
  new = script.new_word_rows(tokens, {0, 7, 101, 102})
  assert new.tolist() == [False, True, False]
  # 0-based ranks. Known rows 0 and 2: i2t hits @1 [yes, no], t2i @1 [no, no] -> 0.25;
  # @5 i2t [yes, no], t2i [yes, no] -> 0.5. New row 1: i2t rank 3, t2i rank 0 -> 0.5, 1.0.
  i2t, t2i = np.array([0, 3, 7]), np.array([1, 0, 5])
  assert script.group_recalls(i2t, t2i, new) == {
      "known_n": 2, "known_r1": 0.25, "known_r5": 0.5, "new_n": 1, "new_r1": 0.5, "new_r5": 1.0}
