"""How well does a CLIP config generalise to emoji it never saw? The harness of issue 16.

    python scripts/emoji_generalisation.py --variants=base,default [--out=runs/generalisation]

The embedded emoji set is split *by emoji*: ``numpy.random.default_rng(0).permutation`` of its
1,906 rows, the first 80% (1,525) trains and the other 381 are held out, written once as two
image-caption folders (32x32 PNGs, ``captions.jsonl``). Each variant (a named list of
``--config`` overrides of ``configs/clip.py``, ``VARIANTS`` below) trains on the training
folder with ``main.py`` and is then evaluated with ``main.py --workdir=RUN --mode=evaluate
--eval_data="folder(...)"`` on the held-out folder, with the run's own config and tokenizer.
One markdown row per variant: held-out Recall@1 and @5 (mean of image->text and
text->image), the chance level, the in-run validation Recall@5 at the last step (5% of the
training folder's emoji, held out of training by hash), steps and wall time, and held-out
Recall@5 split between names made of words some training name has and names with a word
none has (``novelty_recall``). Rows are also appended to ``OUT/results.jsonl``; a variant
whose row and run directory OUT already holds is not run again (delete ``OUT/NAME`` to
re-run it), so one more variant or a plot costs only its own runs.
Only the embedded set is used: the cross-style check stays blind.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from mmie.data import emoji  # noqa: E402

HELD_OUT = 0.2
# name -> --config overrides of configs/clip.py (its `default` preset unless one is named).
# `base` is the default before issue 16 (the emoji set's own BPE, no augmentation, 500 steps);
# the default is `base` + WORDPIECE + AUGMENT at 1,000 steps (configs/clip.py, `generalising`).
BASE = ["--config=configs/clip.py:base"]
AUGMENT = ["--config.data.augment.random_resized_crop=True",
           "--config.data.augment.crop_scale=(0.6,1.0)"]
PEER_SIZE = ["--config.model.image.width=128", "--config.model.image.mlp_dim=512",
             "--config.model.text.depth=4", "--config.model.embed_dim=128"]
WORDPIECE = ["--config.data.tokenizer=bert_uncased", "--config.model.text.vocab_size=30522",
             "--config.model.text.eos_id=102"]
LIT = ["--config=configs/lit_minilm.py"]
VARIANTS: dict[str, list[str]] = {
    # Levers on the base, one at a time.
    "base": BASE,
    "base_crop": BASE + AUGMENT,
    "base_crop_jitter": BASE + AUGMENT + ["--config.data.augment.color_jitter=0.3"],
    "base_peer_size_crop": BASE + PEER_SIZE + AUGMENT,
    "base_siglip": BASE + ["--config.loss.name=siglip", "--config.model.logit_scale_init=2.302585",
                           "--config.model.logit_bias_init=-10.0"],
    "base_wordpiece": BASE + WORDPIECE,
    "base_wordpiece_1000": BASE + WORDPIECE + ["--config.total_steps=1000"],
    # The default (WordPiece + crop, 1,000 steps) and levers on top of it.
    "default": [],
    "default_wd_0.5": ["--config.optimizer.weight_decay=0.5"],
    "default_strong_crop": ["--config.data.augment.crop_scale=(0.35,1.0)"],
    "default_jitter": ["--config.data.augment.color_jitter=0.2"],
    "default_conv_stem": ["--config.model.image.stem_channels=(32,)",
                          "--config.model.image.patch_size=2"],
    "default_gap": ["--config.model.image.pool=gap"],
    "default_label_smoothing": ["--config.loss.name=clip(label_smoothing=0.1)"],
    "default_dropout": ["--config.model.image.dropout_rate=0.1",
                        "--config.model.text.dropout_rate=0.1"],
    "default_ema": ["--config.train.ema_decay=0.99", "--config.train.evaluate_ema=True"],
    "default_1500": ["--config.total_steps=1500"],
    # The embedded pictures are 32x32: 64 only upsamples them (same 64 patches of 8x8).
    "default_64px": ["--config.model.image.image_size=64", "--config.model.image.patch_size=8"],
    "default_queue": ["--config.loss.transforms=(\"memory_queue(size=1024)\",)"],
    "default_wide_800": ["--config.total_steps=800", "--config.model.image.width=96",
                         "--config.model.image.mlp_dim=384", "--config.model.embed_dim=128"],
    # LiT: the locked MiniLM text tower (configs/lit_minilm.py inherits the default's crop
    # and steps); `lit_500` is it before issue 16's settings.
    "lit_minilm": LIT,
    "lit_embed_128": LIT + ["--config.model.embed_dim=128"],
    "lit_locked_text_projection": LIT + [
        "--config.model.embed_dim=384",
        "--config.param_rules=((\"text/.*|text_projection/.*\",\"frozen\"),(\"(?!text).*\",1.0))"],
    "lit_queue": LIT + ["--config.loss.transforms=(\"memory_queue(size=1024)\",)"],
    "lit_500": LIT + ["--config.data.augment.random_resized_crop=False",
                      "--config.total_steps=500", "--config.eval_every=250"],
}


def write_split(root: str) -> tuple[str, str]:
  """The by-emoji split as two folders under ``root`` (written once); their paths."""
  images, rows = emoji.read_source(emoji.DEFAULT_SOURCE_DIR)
  order = np.random.default_rng(0).permutation(len(rows))
  cut = int(round(len(rows) * (1 - HELD_OUT)))
  folders = []
  for name, part in (("train", order[:cut]), ("heldout", order[cut:])):
    folder = os.path.join(root, name)
    folders.append(folder)
    if os.path.exists(os.path.join(folder, "captions.jsonl")):
      continue
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i in part:
      file = f"{rows[i]['key']}.png"
      Image.fromarray(images[i]).save(os.path.join(folder, file))
      lines.append(json.dumps({"file": file, "caption": rows[i]["caption"]}))
    with open(os.path.join(folder, "captions.jsonl.tmp"), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(folder, "captions.jsonl.tmp"), os.path.join(folder, "captions.jsonl"))
  return folders[0], folders[1]


def _main_py(args: list[str]) -> str:
  result = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"main.py {' '.join(args)} failed ({result.returncode}):\n"
                       f"{result.stderr[-3000:]}")
  return result.stdout


def _recalls(record: dict) -> tuple[float, float]:
  """Mean of image->text and text->image Recall@1 and @5, as fractions."""
  mean = lambda k: (record[f"eval/i2t_recall@{k}"] + record[f"eval/t2i_recall@{k}"]) / 200.0
  return mean(1), mean(5)


def _earlier_row(name: str, out: str) -> dict | None:
  """The row of ``name`` from an earlier invocation, if its run directory is still there."""
  path = os.path.join(out, "results.jsonl")
  if not os.path.exists(path) or not os.path.isdir(os.path.join(out, name)):
    return None
  with open(path, encoding="utf-8") as f:
    rows = [row for row in map(json.loads, f) if row["variant"] == name]
  return rows[-1] if rows else None


def run_variant(name: str, train: str, heldout: str, out: str) -> dict:
  """Trains and evaluates variant ``name``, or returns its row if OUT already holds it."""
  earlier = _earlier_row(name, out)
  if earlier is not None and "known_r5" not in earlier:  # Run before the novelty split.
    earlier = {**earlier, **novelty_recall(os.path.join(out, name), heldout)}
    _append_row(out, earlier)
  if earlier is not None:
    return earlier
  overrides = VARIANTS[name]
  config = next((o.split("=", 1)[1] for o in overrides if o.startswith("--config=")),
                "configs/clip.py")
  overrides = [o for o in overrides if not o.startswith("--config=")]
  workdir = os.path.join(out, name)
  data = f"folder(path={train!r}, validation_fraction=0.05)"
  start = time.perf_counter()
  _main_py([f"--config={config}", f"--workdir={workdir}", f"--config.data.name={data}",
            "--config.plots=False", *overrides])
  wall = time.perf_counter() - start
  _main_py([f"--workdir={workdir}", "--mode=evaluate", f"--eval_data=folder(path={heldout!r})"])
  with open(os.path.join(workdir, "evaluations.jsonl"), encoding="utf-8") as f:
    held = json.loads(f.read().splitlines()[-1])
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  last = [r for r in records if "eval/i2t_recall@1" in r][-1]
  steps = max(r["step"] for r in records)
  r1, r5 = _recalls(held)
  n = sum(1 for _ in open(os.path.join(heldout, "captions.jsonl"), encoding="utf-8"))
  row = {"variant": name, "overrides": overrides, "config": config, "steps": steps,
         "wall_s": round(wall, 1), "heldout_r1": round(r1, 3), "heldout_r5": round(r5, 3),
         "chance_r5": round(5 / n, 3), "val_r5": round(_recalls(last)[1], 3),
         **novelty_recall(workdir, heldout)}
  _append_row(out, row)
  return row


def _append_row(out: str, row: dict) -> None:
  with open(os.path.join(out, "results.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")


def novelty_recall(workdir: str, heldout: str) -> dict:
  """Held-out Recall@1/@5 of a trained run, split by whether the name is made of known tokens.

  A held-out name is *known* when every one of its token ids (the run's own tokenizer)
  occurs in some name the run trained on, *new* when one does not ("thinking face",
  "burrito"). The ranks are the evaluation's own (``mmie.evaluate.retrieval``) over all
  held-out emoji, only the queries are split: the row says how much of the gap is words
  training never saw.
  """
  from mmie import config as config_lib  # pylint: disable=g-import-not-at-top
  from mmie.evaluate import context, retrieval  # pylint: disable=g-import-not-at-top
  from mmie.train import trained  # pylint: disable=g-import-not-at-top

  config, model, params, _ = trained.load_trained(workdir)
  trained_on = context.EvalContext(config_lib.validate(config), model)  # The run's own rows.
  known_ids = set(np.unique(trained_on.split(config.data.train_split)["text"]).tolist())
  held = config_lib.validate(trained.evaluation_config(config, f"folder(path={heldout!r})",
                                                       workdir))
  ctx, split = context.EvalContext(held, model), held.data.eval_split
  new = new_word_rows(ctx.split(split)["text"], known_ids)
  images = ctx.split_embeddings(params, split, "image", 64)
  texts = ctx.split_embeddings(params, split, "text", 64)
  return group_recalls(*retrieval.retrieval_ranks(images, texts), new)


def new_word_rows(tokens: np.ndarray, known_ids: set[int]) -> np.ndarray:
  """True for each row of token ids [N, L] with an id outside ``known_ids``."""
  return np.array([not set(row.tolist()) <= known_ids for row in np.asarray(tokens)])


def group_recalls(i2t: np.ndarray, t2i: np.ndarray, new: np.ndarray) -> dict:
  """Mean of image->text and text->image Recall@1/@5 (0-based ranks) of the ``known`` rows
  and the ``new`` rows, with their counts."""
  row = {}
  for group, mask in (("known", ~new), ("new", new)):
    row[f"{group}_n"] = int(mask.sum())
    for k in (1, 5):
      recall = (np.mean(i2t[mask] < k) + np.mean(t2i[mask] < k)) / 2 if mask.any() else 0.0
      row[f"{group}_r{k}"] = round(float(recall), 3)
  return row


def plot_curves(out: str, names: list[str], path: str) -> None:
  """Training loss and in-run validation Recall@5 (5% of the training folder's emoji, also
  unseen in training) against steps, one line per variant."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (loss_ax, recall_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for name in names:
    with open(os.path.join(out, name, "metrics.jsonl"), encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], _recalls(r)[1]) for r in records if "eval/i2t_recall@5" in r]
    loss_ax.plot(*zip(*train), label=name)
    recall_ax.plot(*zip(*evals), marker="o", label=name)
  loss_ax.set(xlabel="step", ylabel="training loss", title="Training loss")
  recall_ax.set(xlabel="step", ylabel="R@5 (mean of both directions)",
                title="In-run validation R@5 (unseen emoji)")
  recall_ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _group_cell(row: dict, group: str) -> str:
  """``R@5 (n)`` of a novelty group; ``-`` for a row written before the split existed."""
  return f"{row[group + '_r5']:.3f} ({row[group + '_n']})" if group + "_r5" in row else "-"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variants", default="default", help=f"comma-separated: {list(VARIANTS)}")
  parser.add_argument("--out", default=os.path.join(ROOT, "runs", "generalisation"))
  parser.add_argument("--plot", default="", help="write the variants' learning curves here")
  parser.add_argument("--extra", default="", help="overrides added to every variant, "
                      "space-separated (e.g. --config.total_steps=20 for a smoke run)")
  args = parser.parse_args()
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
  os.makedirs(args.out, exist_ok=True)
  train, heldout = write_split(os.path.join(args.out, "split"))
  extra = args.extra.split()
  print("| variant | steps | wall s | held-out R@1 | held-out R@5 | chance R@5 | in-run val R@5"
        " | R@5, known words (n) | R@5, a new word (n) |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name in names:
    VARIANTS[name] = VARIANTS[name] + extra
    row = run_variant(name, train, heldout, args.out)
    print(f"| {name} | {row['steps']} | {row['wall_s']} | {row['heldout_r1']:.3f} | "
          f"{row['heldout_r5']:.3f} | {row['chance_r5']:.3f} | {row['val_r5']:.3f} | "
          f"{_group_cell(row, 'known')} | {_group_cell(row, 'new')} |", flush=True)
  if args.plot:
    plot_curves(args.out, names, args.plot)


if __name__ == "__main__":
  main()
