"""The data views of text records (mmie/data/text_records.py): what a row becomes in a batch.

Token rows are the tokenizer's ``BOS tokens EOS PAD...`` of ``data.context_length``:

* ``text``: ``{"text": [B, L]}`` from the row's ``text`` (the language model's batches).
* ``labelled_text``: ``{"text": [B, L], "label": [B]}``, ``label`` an int class id.
* ``preference``: ``{"chosen", "rejected": [B, L], "chosen_mask", "rejected_mask": [B, L]}``
  from ``prompt``, ``chosen`` and ``rejected``. A row is BOS + prompt tokens + response tokens
  + EOS, the prompt and the response tokenised apart and joined, so the boundary is exact; a
  row too long loses the start of its prompt first (the response and EOS are what is scored).
  A mask is 1 exactly at the response's tokens and its EOS: with ``inputs = row[:, :-1]`` and
  ``targets = row[:, 1:]``, ``sum(mask[:, 1:] * log p(targets))`` is log p(response | prompt).
  When every row carries ``reference_chosen_logp`` and ``reference_rejected_logp`` (DPO's
  frozen reference, precomputed), they come as float32 [B].
* ``prompts``: ``{"prompt": [B, P], "prompt_length": [B]}``: BOS + the last ``P - 1`` tokens
  of ``prompt`` (its end is what a continuation follows), right-padded with PAD,
  ``P = data.prompt_length``; ``prompt_length`` counts BOS and the kept tokens (PPO samples
  its continuations from there).

Training batches read through the same index stream as every other view (records.py), so
they share its per-host sharding, shuffling, mixing and exact resume.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from mmie.data import text_records, text_views, tokenizer as tokenizer_lib
from mmie.data.records import read_batch
from mmie.data.schema import data_value
from mmie.data.spec import tokenizer_for

REFERENCE_FIELDS = ("reference_chosen_logp", "reference_rejected_logp")
# The string fields each view reads from a row (for the error that names a missing one).
VIEW_FIELDS = {"text": ("text",), "labelled_text": ("text", "label"),
               "preference": ("prompt", "chosen", "rejected"), "prompts": ("prompt",)}


def _field(row: dict[str, Any], name: str, view: str) -> Any:
  if name not in row:
    raise ValueError(f"data view {view!r} needs the field {name!r} in every row (it reads "
                     f"{list(VIEW_FIELDS[view])}); a row of group {row.get('group')!r} has "
                     f"{sorted(row)}.")
  return row[name]


def _label(row: dict[str, Any]) -> int:
  label = _field(row, "label", "labelled_text")
  if isinstance(label, bool) or not isinstance(label, int) or label < 0:
    raise ValueError(f"labelled_text: 'label' must be a class id (an int >= 0), got {label!r} "
                     f"in a row of group {row.get('group')!r}.")
  return label


def preference_row(tokenizer: tokenizer_lib.Tokenizer, prompt_ids: Sequence[int],
                   response_ids: Sequence[int], length: int) -> tuple[np.ndarray, np.ndarray]:
  """BOS + prompt + response + EOS in ``length`` slots, and its response mask (see above)."""
  response = list(response_ids)[:length - 2] + [tokenizer.eos_id]
  room = length - 1 - len(response)
  prompt = list(prompt_ids)[max(len(prompt_ids) - room, 0):] if room > 0 else []
  ids = [tokenizer.bos_id, *prompt, *response]
  row = np.full(length, tokenizer.pad_id, np.int32)
  mask = np.zeros(length, np.int32)
  row[:len(ids)] = ids
  mask[1 + len(prompt):len(ids)] = 1
  return row, mask


def encode_rows(rows: Sequence[dict[str, Any]], view: str, tokenizer: tokenizer_lib.Tokenizer,
                context_length: int, prompt_length: int | None) -> dict[str, np.ndarray]:
  """The batch arrays of ``view`` for ``rows`` (the module doc says what each holds)."""
  if view in ("text", "labelled_text"):
    out = {"text": np.stack([tokenizer.encode_one(_field(r, "text", view), context_length)
                             for r in rows])}
    if view == "labelled_text":
      out["label"] = np.asarray([_label(r) for r in rows], np.int32)
    return out
  if view == "prompts":
    if not prompt_length or prompt_length < 2:
      raise ValueError(f"data view 'prompts' needs data.prompt_length >= 2 (BOS and at least "
                       f"one prompt token), got {prompt_length!r}.")
    ids = tokenizer.tokenize([str(_field(r, "prompt", view)) for r in rows])
    prompt = np.full((len(rows), prompt_length), tokenizer.pad_id, np.int32)
    lengths = np.zeros(len(rows), np.int32)
    for i, row_ids in enumerate(ids):
      kept = [tokenizer.bos_id, *row_ids[max(len(row_ids) - prompt_length + 1, 0):]]
      prompt[i, :len(kept)], lengths[i] = kept, len(kept)
    return {"prompt": prompt, "prompt_length": lengths}
  if view == "preference":
    prompts = tokenizer.tokenize([str(_field(r, "prompt", view)) for r in rows])
    out: dict[str, np.ndarray] = {}
    for side in ("chosen", "rejected"):
      responses = tokenizer.tokenize([str(_field(r, side, view)) for r in rows])
      pairs = [preference_row(tokenizer, p, s, context_length)
               for p, s in zip(prompts, responses)]
      out[side] = np.stack([p[0] for p in pairs])
      out[f"{side}_mask"] = np.stack([p[1] for p in pairs])
    if all(f in r for r in rows for f in REFERENCE_FIELDS):
      for f in REFERENCE_FIELDS:
        out[f] = np.asarray([float(r[f]) for r in rows], np.float32)
    return out
  raise ValueError(f"text records have no data view {view!r}; views: {sorted(VIEW_FIELDS)}.")


@dataclasses.dataclass(frozen=True)
class LoadRows:
  """A batch of (source, record index) -> the view's arrays."""

  records: tuple[Sequence[dict[str, Any]], ...]
  view: str
  tokenizer: tokenizer_lib.Tokenizer
  context_length: int
  prompt_length: int | None

  def __call__(self, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    return encode_rows(read_batch(self.records, batch), self.view, self.tokenizer,
                       self.context_length, self.prompt_length)


def _lengths(data_config: Any) -> tuple[int, int | None]:
  return int(data_config["context_length"]), data_value(data_config, "prompt_length")


def build_dataset(data_config: Any, view: str, *, local_batch: int, seed: int,
                  process_index: int, process_count: int) -> grain.MapDataset:
  """The infinite batched training dataset of ``view`` over the record sources' mixture."""
  ds, records = text_views.record_stream(
      text_records.sources_for(data_config), data_value(data_config, "train_split"),
      local_batch=local_batch, seed=seed, process_index=process_index,
      process_count=process_count)
  return ds.map(LoadRows(records, view, tokenizer_for(data_config), *_lengths(data_config)))


def load_split(data_config: Any, split: str, view: str) -> dict[str, Any]:
  """A whole split of the first record source, in stored order: the view's arrays, plus the
  strings (``texts`` for text views; ``prompts``, and ``chosen_texts`` / ``rejected_texts``
  for preference pairs) and ``label`` (-1 without) for the evaluators."""
  records = text_records.sources_for(data_config)[0][0].records(split)
  rows = [r for start in range(0, len(records), 1024)
          for r in records.get_many(range(start, min(start + 1024, len(records))))]
  if not rows:
    raise ValueError(f"split {split!r} of data.name={data_value(data_config, 'name')!r} is "
                     "empty; give rows a 'split' field or a validation_fraction > 0.")
  out: dict[str, Any] = encode_rows(rows, view, tokenizer_for(data_config),
                                    *_lengths(data_config))
  if view in ("text", "labelled_text"):
    out["texts"] = [r["text"] for r in rows]
    out.setdefault("label", np.asarray([r.get("label", -1) for r in rows], np.int32))
    out["class_names"] = []
  else:
    out["prompts"] = [r["prompt"] for r in rows]
    if view == "preference":
      out["chosen_texts"] = [r["chosen"] for r in rows]
      out["rejected_texts"] = [r["rejected"] for r in rows]
  return out
