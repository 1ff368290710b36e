"""Text records (mmie/data/text_records.py) and their views (mmie/data/record_views.py): the
split by group or by a row's own field, skips, each view's arrays checked token by token
against the tokenizer, exact resume, and the errors that name what is wrong."""

import json
import os

import ml_collections
import numpy as np
import pytest

from mmie.data import catalog, pipeline, record_views, sources, text_records
from mmie.data.parallel import SWORD_MODULES
from mmie.schema import ConfigError
from mmie.data.spec import check_spec


def _write(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


ROWS = [{"text": f"row {i} says  {'peace' if i % 2 else 'war'}", "label": i % 2,
         "group": f"doc{i // 5}", "prompt": f"and he said {i}",
         "chosen": "peace be with you", "rejected": "i will smite thee"} for i in range(120)]


def _config(path, tmp_path, **extra):
  return ml_collections.ConfigDict({
      "name": f"jsonl(path={path!r}, validation_fraction=0.25, vocab_size=300)",
      "data_dir": str(tmp_path / "data"), "context_length": 16, "prompt_length": 5, **extra})


@pytest.fixture
def config(tmp_path):
  return _config(_write(tmp_path / "set.jsonl", ROWS), tmp_path)


def test_split_by_group_cleans_and_skips(tmp_path):
  rows = ROWS + [ROWS[0], {"text": "", "group": "x"}, {"text": "y" * 50, "group": "x"},
                 {"text": "forced", "split": "validation", "group": "doc0"}]
  plan = text_records.jsonl(_write(tmp_path / "s.jsonl", rows), validation_fraction=0.25,
                            max_chars=40, vocab_size=300)
  report = text_records.prepare(plan, str(tmp_path / "out"))
  assert report["counts"]["duplicate"] == 1 and report["counts"]["empty"] == 1
  assert report["counts"]["over_long"] == 1
  source = text_records.RecordSource("jsonl", str(tmp_path / "out"), "")
  train, val = (list(source.records(s).get_many(range(len(source.records(s)))))
                for s in ("train", "validation"))
  assert len(train) + len(val) == 121
  # A group's split is its hash's alone; the row with its own split field goes there.
  for row in train + val:
    if row["text"] == "forced":
      assert row in val
      continue
    expected = "validation" if sources.group_bucket(row["group"]) < 0.25 else "train"
    assert (row in val) == (expected == "validation")
  assert all("  " not in r["text"] for r in train)  # Whitespace collapsed.


def test_views_encode_rows_as_the_tokenizer_does(config):
  tokenizer = pipeline.tokenizer_for(config)
  split = pipeline.load_eval_split(config, "validation", view="labelled_text")
  texts = split["texts"]
  np.testing.assert_array_equal(split["text"], tokenizer.encode(texts, 16))
  rows = {r["text"]: r for r in ROWS}
  assert split["label"].tolist() == [rows[t.replace("says ", "says  ")]["label"]
                                     for t in texts]
  prompts = pipeline.load_eval_split(config, "validation", view="prompts")
  for prompt, row, length in zip(prompts["prompts"], prompts["prompt"],
                                 prompts["prompt_length"]):
    ids = [tokenizer.bos_id, *tokenizer.tokenize([prompt])[0][-4:]]  # Its end is kept.
    assert length == len(ids) and row[:length].tolist() == ids
    assert (row[length:] == tokenizer.pad_id).all()


def test_preference_rows_mask_exactly_the_response(config):
  tokenizer = pipeline.tokenizer_for(config)
  pairs = pipeline.load_eval_split(config, "validation", view="preference")
  prompt_ids = tokenizer.tokenize([pairs["prompts"][0]])[0]
  for side in ("chosen", "rejected"):
    response = tokenizer.tokenize([pairs[f"{side}_texts"][0]])[0]
    row, mask = pairs[side][0], pairs[f"{side}_mask"][0]
    expected = [tokenizer.bos_id, *prompt_ids, *response, tokenizer.eos_id]
    assert row[:len(expected)].tolist() == expected
    assert mask.tolist() == [0] * (1 + len(prompt_ids)) + [1] * (len(response) + 1) + [0] * (
        16 - len(expected))
  assert "reference_chosen_logp" not in pairs


def test_long_rows_lose_the_prompt_start_first():
  class Tok:
    bos_id, eos_id, pad_id = 1, 2, 0
  row, mask = record_views.preference_row(Tok, [10, 11, 12, 13], [20, 21], 6)
  assert row.tolist() == [1, 12, 13, 20, 21, 2] and mask.tolist() == [0, 0, 0, 1, 1, 1]
  row, mask = record_views.preference_row(Tok, [10], [20, 21, 22, 23, 24, 25], 5)
  assert row.tolist() == [1, 20, 21, 22, 2] and mask.tolist() == [0, 1, 1, 1, 1]


def test_reference_logps_pass_through(tmp_path):
  rows = [dict(r, reference_chosen_logp=-float(i), reference_rejected_logp=-2.0 * i)
          for i, r in enumerate(ROWS)]
  config = _config(_write(tmp_path / "ref.jsonl", rows), tmp_path)
  batch = next(pipeline.build_train_iterator(config, batch_size=8, seed=0, view="preference"))
  np.testing.assert_array_equal(batch["reference_rejected_logp"],
                                2.0 * batch["reference_chosen_logp"])


def test_training_batches_resume_exactly(config):
  it = pipeline.build_train_iterator(config, batch_size=4, seed=1, view="labelled_text")
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = pipeline.build_train_iterator(config, batch_size=4, seed=1, view="labelled_text")
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_errors_name_the_problem(tmp_path, config):
  with pytest.raises(ValueError, match="needs the field 'label'"):
    record_views.encode_rows([{"text": "a"}], "labelled_text",
                             pipeline.tokenizer_for(config), 8, None)
  with pytest.raises(ValueError, match="data.prompt_length >= 2"):
    record_views.encode_rows([{"prompt": "a"}], "prompts", pipeline.tokenizer_for(config), 8,
                             None)
  bad = _write(tmp_path / "bad.jsonl", [{"text": "a", "split": "test"}])
  with pytest.raises(ValueError, match="split='test' must be one of"):
    text_records.prepare(text_records.jsonl(bad), str(tmp_path / "bad"))
  with pytest.raises(ConfigError, match="nonexistent.jsonl does not exist"):
    check_spec(ml_collections.ConfigDict({"name": "jsonl(path='/nonexistent.jsonl')"}))
  with pytest.raises(ValueError, match="name a view"):
    pipeline.build_train_iterator(config, batch_size=4, seed=0)
  with pytest.raises(ValueError, match="reads text-records sources"):
    pipeline.build_train_iterator(ml_collections.ConfigDict({"name": "emoji"}), batch_size=4,
                                  seed=0, view="preference")
  with pytest.raises(ValueError, match="mixes kinds of sources"):
    catalog.kind_of("emoji + jsonl(path='x')")


@pytest.mark.skipif(not os.path.isdir(SWORD_MODULES["en"]),
                    reason="needs Debian's sword-text-kjv (apt-get install sword-text-kjv)")
def test_sword_text_holds_out_whole_chapters(tmp_path):
  plan = text_records.sword_text(vocab_size=512)
  rows = list(plan.read())
  assert len(rows) > 30000 and rows[0]["text"].startswith("In the beginning")
  report = text_records.prepare(plan, str(tmp_path / "kjv"))
  assert report["counts"]["kept_validation"] > 0
  source = text_records.RecordSource("sword_text", str(tmp_path / "kjv"), "")
  val = source.records("validation")
  groups = {r["group"] for r in val.get_many(range(len(val)))}
  assert all(sources.group_bucket(g) < 0.02 for g in groups)
