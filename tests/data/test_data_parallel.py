"""Parallel text: the SWORD zText reader, pair preparation, and the translation pipeline.

The zText modules here are written by the test itself, straight from the format's
definition (struct-packed indices into zlib blocks), so the reader is checked against the
format, not against itself. With Debian's sword-text-kjv / sword-text-sparv installed, the
real Bibles are read too and checked against verses quoted by hand.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import ml_collections
import numpy as np
import pytest

from mmie.data import catalog, parallel, pipeline, sword
from mmie.train import loop

KJV, RV = parallel.SWORD_MODULES["en"], parallel.SWORD_MODULES["es"]


def _write_ztext(path, testaments: dict[str, list[list[str]]]) -> None:
  """A zText module: per testament, a list of blocks, each a list of slot markups."""
  os.makedirs(path, exist_ok=True)
  for testament in sword.TESTAMENTS:
    bzs, bzv, bzz = b"", b"", b""
    for block_index, block in enumerate(testaments.get(testament, [])):
      data = b""
      for markup in block:
        raw = markup.encode("utf-8")
        bzv += struct.pack("<IIH", block_index if raw else 0, len(data) if raw else 0, len(raw))
        data += raw
      packed = zlib.compress(data)
      bzs += struct.pack("<III", len(bzz), len(packed), len(data))
      bzz += packed
    for ext, content in (("bzs", bzs), ("bzv", bzv), ("bzz", bzz)):
      with open(os.path.join(path, f"{testament}.{ext}"), "wb") as f:
        f.write(content)


ENGLISH = {
    "ot": [["", "<milestone type=\"x-importer\"/>",
            "<div osisID=\"Gen\" sID=\"g1\" type=\"book\"/> <title type=\"main\">Genesis</title>",
            "<chapter n=\"1\" osisID=\"Gen.1\" sID=\"Gen.1\"/>",
            "In the <w lemma=\"strong:H7225\">beginning</w> God created.",
            "<note type=\"study\">A footnote.</note>And   the earth &amp; sea. "],
           ["<chapter n=\"2\" osisID=\"Gen.2\" sID=\"Gen.2\"/>",
            "\u00b6 Thus the heavens were finished. <chapter eID=\"Gen.2\"/>",
            "",
            "Only in English."]],
    "nt": [["", "", "<div osisID=\"John\" sID=\"g2\" type=\"book\"/>",
            "<chapter osisID=\"John.11\" sID=\"John.11\"/>", "Jesus wept."]],
}
SPANISH = {
    "ot": [["", "", "<div osisID=\"Gen\" sID=\"g1\" type=\"book\"/>",
            "<chapter n=\"1\" osisID=\"Gen.1\" sID=\"Gen.1\"/>",
            "<w lemma=\"strong:H7225\">EN el principio</w> crió Dios.",
            "Y la tierra y el mar."],
           ["<chapter n=\"2\" osisID=\"Gen.2\" sID=\"Gen.2\"/>",
            "Y fueron acabados los cielos.", "Sólo en español.", ""]],
    "nt": [["", "", "", "<chapter osisID=\"John.11\" sID=\"John.11\"/>", "Y lloró Jesús."]],
}


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
  root = tmp_path_factory.mktemp("sword")
  _write_ztext(str(root / "en"), ENGLISH)
  _write_ztext(str(root / "es"), SPANISH)
  return str(root / "en"), str(root / "es")


def test_ztext_reader_follows_the_format(modules):
  english, spanish = modules
  verses = sword.read_module(english)
  assert len(verses) == 10 + 5 and sword.slot_counts(english) == (10, 5)
  assert verses[4] == sword.Verse(4, "Gen.1", "In the beginning God created.")
  assert verses[5].text == "And the earth & sea."  # Note dropped, entity and spaces fixed.
  assert verses[7] == sword.Verse(7, "Gen.2", "Thus the heavens were finished.")
  assert sword.parallel_verses(english, spanish) == [
      ("Gen.1", "In the beginning God created.", "EN el principio crió Dios."),
      ("Gen.1", "And the earth & sea.", "Y la tierra y el mar."),
      ("Gen.2", "Thus the heavens were finished.", "Y fueron acabados los cielos."),
      ("John.11", "Jesus wept.", "Y lloró Jesús."),
  ]


def test_ztext_reader_rejects_bad_modules(modules, tmp_path):
  english, _ = modules
  with pytest.raises(FileNotFoundError, match="apt-get install sword-text-kjv"):
    sword.read_module(str(tmp_path))
  short = tmp_path / "short"
  _write_ztext(str(short), {"ot": ENGLISH["ot"][:1], "nt": ENGLISH["nt"]})
  with pytest.raises(ValueError, match="different versifications"):
    sword.parallel_verses(english, str(short))
  corrupt = tmp_path / "corrupt"
  _write_ztext(str(corrupt), ENGLISH)
  (corrupt / "nt.bzz").write_bytes(b"not zlib at all")
  with pytest.raises(ValueError, match="nt.bzz block 0 does not decompress"):
    sword.read_module(str(corrupt))


@pytest.mark.skipif(not (os.path.isdir(KJV) and os.path.isdir(RV)),
                    reason="apt-get install sword-text-kjv sword-text-sparv (.ci/run does)")
def test_real_bibles_align_verse_by_verse():
  pairs = sword.parallel_verses(KJV, RV)
  assert 31_000 < len(pairs) <= 31_102  # 31,102 verses in the KJV versification.
  assert len({chapter for chapter, _, _ in pairs}) == 1189  # Chapters of the Bible.
  assert pairs[0] == ("Gen.1", "In the beginning God created the heaven and the earth.",
                      "EN el principio crió Dios los cielos y la tierra.")
  assert ("John.11", "Jesus wept.", "Y lloró Jesús.") in pairs
  assert not any("<" in s or "<" in t or "\u00b6" in s for _, s, t in pairs)


def _pairs_file(tmp_path, rows: list[str], name="corpus.tsv") -> str:
  path = tmp_path / name
  path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
  return str(path)


def _corpus_rows(n_groups=40, per_group=5):
  return [f"the number {g * per_group + i}\tel número {g * per_group + i}\tgroup{g}"
          for g in range(n_groups) for i in range(per_group)]


def test_prepare_counts_skips_and_splits_by_group(tmp_path):
  rows = _corpus_rows() + ["the number 3\tduplicate source", "\tempty source",
                           "x" * 50 + "\tover long", "only one column"]
  path = _pairs_file(tmp_path, rows[:-1])
  plan = parallel.pairs(path, validation_fraction=0.25, max_chars=40, vocab_size=300)
  report = parallel.prepare(plan, str(tmp_path / "out"))
  counts = report["counts"]
  assert (counts["duplicate"], counts["empty"], counts["over_long"]) == (1, 1, 1)
  assert counts["kept_train"] + counts["kept_validation"] == 200
  assert 0 < counts["kept_validation"] < 200
  source = parallel.ParallelSource("pairs", str(tmp_path / "out"),
                                   str(tmp_path / "out" / "tokenizer.json"))
  split_rows = {s: [source.records(s)[i] for i in range(len(source.records(s)))]
                for s in parallel.SPLITS}
  groups = {s: {r["group"] for r in rs} for s, rs in split_rows.items()}
  assert not groups["train"] & groups["validation"]  # A group never straddles the split.
  read_back = sorted((r["source"], r["target"], r["group"])
                     for rs in split_rows.values() for r in rs)
  assert read_back == sorted(tuple(r.split("\t")) for r in _corpus_rows())
  with pytest.raises(ValueError, match="expected 2 or 3 tab-separated columns"):
    parallel.prepare(parallel.pairs(_pairs_file(tmp_path, rows, "bad.tsv")),
                     str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")  # Nothing half-written.


def test_jsonl_pairs_and_clear_errors(tmp_path):
  path = tmp_path / "corpus.jsonl"
  path.write_text("".join(json.dumps({"source": f"s{i}", "target": f"t{i}"}) + "\n"
                          for i in range(50)))
  report = parallel.prepare(parallel.pairs(str(path), validation_fraction=0.2),
                            str(tmp_path / "out"))
  assert report["counts"]["kept_train"] + report["counts"]["kept_validation"] == 50
  with pytest.raises(FileNotFoundError, match="not found"):
    parallel.pairs(str(tmp_path / "missing.tsv"))
  with pytest.raises(ValueError, match="validation_fraction"):
    parallel.pairs(str(path), validation_fraction=1.0)
  with pytest.raises(ValueError, match="mixes kinds of sources"):
    catalog.kind_of(f"emoji + pairs(path='{path}')")


@pytest.fixture(scope="module")
def translation_config(tmp_path_factory) -> ml_collections.ConfigDict:
  root = tmp_path_factory.mktemp("pairs")
  path = _pairs_file(root, _corpus_rows())
  return ml_collections.ConfigDict({
      "name": f"pairs(path='{path}', validation_fraction=0.25, vocab_size=300)",
      "data_dir": str(root / "data"), "context_length": 8,
      "train_split": "train", "eval_split": "validation"})


def _iterator(config, **kwargs):
  return pipeline.build_train_iterator(config, batch_size=kwargs.pop("batch_size", 8), seed=3,
                                       read_threads=1, **kwargs)


def test_pipeline_yields_token_pairs_that_decode_to_the_data(translation_config):
  tokenizer = pipeline.tokenizer_for(translation_config)
  batch = next(_iterator(translation_config))
  assert sorted(batch) == ["source", "target"]
  assert batch["source"].shape == batch["target"].shape == (8, 8)
  assert (batch["source"][:, 0] == tokenizer.bos_id).all()
  for source, target in zip(batch["source"], batch["target"]):
    english, spanish = tokenizer.decode(source), tokenizer.decode(target)
    assert english.startswith("the number ") and spanish == f"el número {english.split()[-1]}"
  split = pipeline.load_eval_split(translation_config)
  assert len(split["references"]) == len(split["source"]) == len(split["sources"])
  assert [tokenizer.decode(row) for row in split["target"]] == split["references"]


def test_hosts_read_disjoint_shards_and_resume_exactly(translation_config):
  def sources_seen(process_index):
    it = _iterator(translation_config, batch_size=4, process_index=process_index,
                   process_count=2)
    return {tuple(row) for _ in range(40) for row in next(it)["source"]}

  seen = [sources_seen(0), sources_seen(1)]
  train_size = len(parallel.sources_for(translation_config)[0][0].records("train"))
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == train_size

  straight = _iterator(translation_config)
  for _ in range(7):
    next(straight)
  resumed = _iterator(translation_config)
  resumed.set_state(json.loads(json.dumps(straight.get_state())))
  for _ in range(3):
    a, b = next(straight), next(resumed)
    np.testing.assert_array_equal(a["source"], b["source"])
    np.testing.assert_array_equal(a["target"], b["target"])


def test_a_model_smaller_than_the_tokenizer_is_refused(translation_config):
  config = ml_collections.ConfigDict({"model": {"vocab_size": 100}, "data": translation_config})
  with pytest.raises(Exception, match=r"model.vocab_size=100 is smaller than the tokenizer"):
    loop.check_vocabulary(config)
  config.model.vocab_size = 300
  loop.check_vocabulary(config)
