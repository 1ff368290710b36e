"""Constitutional AI from AI feedback (Bai et al. 2022), on a language model of real text:
prompts, samples, critique against the principles, revision, and preference pairs.

1. **Prompts** (``openings``): the words before the first flagged span of each verse (or any
   text) that the evaluator flags: "And David" of "And David smote the Philistines". The
   original text went on to violate a principle, so these are the prompts that lead a model
   there; they are chosen by the text, never by a model's samples (choosing by samples would
   let regression to the mean pass for improvement). Texts split by their group (a chapter),
   so the held-out red-team prompts come from chapters no stage trained on.
2. **Samples**: ``k`` continuations per prompt from the language model.
3. **Critique**: the evaluator flags spans of each sample against the principles.
4. **Revision**: each flagged sample is regenerated with the first token of every flagged
   word banned (``LanguageModel.sample(logit_bias=...)``), then critiqued again. A language
   model of verses cannot read a written critique, so the critique acts on the logits.
5. **Pairs**: each flagged sample is the rejected response to its prompt; the chosen one is
   its revision when that is clean, else another clean sample of the same prompt. The
   reference model's log-probabilities of both responses are stored for DPO.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mmie.data import sources
from mmie.safety.evaluator import Evaluator
from mmie.safety.language_model import BANNED, LanguageModel


def openings(rows: Iterable[Mapping[str, Any]], evaluator: Evaluator, *, min_words: int = 3,
             max_words: int = 12) -> list[dict[str, str]]:
  """``{"prompt", "group", "text"}`` for each flagged text with ``min_words`` to ``max_words``
  words before its first flagged span (the prompt is those words)."""
  out = []
  for row in rows:
    spans = evaluator.evaluate(row["text"]).all_spans()
    if not spans:
      continue
    words = row["text"][:spans[0].start].split()
    if min_words <= len(words) <= max_words:
      out.append({"prompt": " ".join(words), "group": str(row.get("group", "")),
                  "text": row["text"]})
  return out


def split_by_group(prompts: Sequence[dict[str, str]], held_out_fraction: float
                   ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
  """(train, held out) by a hash of each prompt's group, as the data sources split."""
  held = [p for p in prompts if sources.group_bucket(p["group"]) < held_out_fraction]
  return [p for p in prompts if sources.group_bucket(p["group"]) >= held_out_fraction], held


def ban_words(lm: LanguageModel, words: Iterable[str]) -> np.ndarray:
  """A logit bias [V] that bans the first token of each word as the tokenizer would start it
  mid-sentence or at a line start, lower- or capitalised."""
  bias = np.zeros(int(lm.model.vocab_size), np.float32)
  for word in words:
    for form in {word.lower(), word.capitalize()}:
      for variant in (form, " " + form):
        ids = lm.tokenizer.tokenize([variant])[0]
        if ids:
          bias[ids[0]] = BANNED
  return bias


def flagged_rate(evaluator: Evaluator, texts: Sequence[str]) -> float:
  """The fraction of ``texts`` that the evaluator flags under any principle."""
  return float(np.mean([bool(e.flagged) for e in evaluator(texts)])) if texts else 0.0


def preference_pairs(lm: LanguageModel, prompts: Sequence[dict[str, str]],
                     evaluator: Evaluator, *, samples: int = 4, seed: int = 0,
                     **sampling: Any) -> tuple[list[dict[str, Any]], dict[str, float]]:
  """Steps 2-5 of the module doc over ``prompts``; returns ``(rows, stats)``.

  Rows are ``{"prompt", "chosen", "rejected", "group", "reference_chosen_logp",
  "reference_rejected_logp"}``, the ``preference`` data view's fields.
  """
  texts = [p["prompt"] for p in prompts for _ in range(samples)]
  drafts = lm.sample(texts, seed=seed, **sampling)
  critiques = evaluator(drafts)
  flagged = [i for i, c in enumerate(critiques) if c.flagged]
  bias = np.stack([ban_words(lm, [s.text for s in critiques[i].all_spans()]) for i in flagged]
                  ) if flagged else None
  revisions = lm.sample([texts[i] for i in flagged], seed=seed + 1, logit_bias=bias,
                        **sampling) if flagged else []
  revised_clean = {i: r for i, r, c in zip(flagged, revisions, evaluator(revisions))
                   if not c.flagged}
  clean_by_prompt: dict[int, list[str]] = collections.defaultdict(list)
  for i, critique in enumerate(critiques):
    if not critique.flagged:
      clean_by_prompt[i // samples].append(drafts[i])
  rows = []
  for i in flagged:
    chosen = revised_clean.get(i) or next(iter(clean_by_prompt[i // samples]), None)
    if chosen is not None and chosen != drafts[i]:
      prompt = prompts[i // samples]
      rows.append({"prompt": prompt["prompt"], "chosen": chosen, "rejected": drafts[i],
                   "group": prompt["group"]})
  if rows:
    for side in ("chosen", "rejected"):
      logps, _ = lm.response_logps([r["prompt"] for r in rows], [r[side] for r in rows])
      for row, logp in zip(rows, logps):
        row[f"reference_{side}_logp"] = float(logp)
  stats = {"samples": len(drafts), "flagged_rate": len(flagged) / max(len(drafts), 1),
           "revised_clean_rate": len(revised_clean) / max(len(flagged), 1),
           "pairs": len(rows)}
  return rows, stats
