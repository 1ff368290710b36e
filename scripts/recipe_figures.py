"""Trains recipes through ``main.py`` one after another and prints their figures as a table.

For the README's "Recipes" table: each recipe runs in a fresh workdir, alone, with its wall
time measured around the whole command (data preparation, compiles, training, evaluations,
plots), and its final evaluation read back from ``metrics.jsonl``.

    python scripts/recipe_figures.py --recipes=siglip,moco,gradcache,multistage,fusion_itm,lm

``--preset=tiny`` gives the same table in seconds per recipe (used by the docs test);
``--set total_steps=300`` overrides a key in every recipe; ``--reuse`` rebuilds the table
(and the plot) from runs that finished in the same ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# recipe -> the metrics its row shows (the first is its headline).
COLUMNS = {
    "clip": ("eval/i2t_recall@5", "eval/t2i_recall@5", "eval/zeroshot_top1"),
    "siglip": ("eval/i2t_recall@5", "eval/t2i_recall@5", "eval/zeroshot_top1"),
    "moco": ("eval/i2t_recall@5", "eval/t2i_recall@5", "eval/zeroshot_top1"),
    "gradcache": ("eval/i2t_recall@5", "eval/t2i_recall@5", "eval/zeroshot_top1"),
    "lit_minilm": ("eval/i2t_recall@5", "eval/t2i_recall@5", "eval/zeroshot_top1"),
    "multistage": ("eval/i2t_recall@5", "eval/t2i_recall@5", "eval/zeroshot_top1"),
    "fusion_itm": ("eval/itm_accuracy", "eval/rerank_gain_i2t@1", "eval/i2t_recall@5"),
    "lm": ("eval/perplexity",),
    "translate": ("eval/bleu",),
    **{name: ("eval/linear_probe_top1", "eval/knn20_top1", "eval/knn200_top1",
              "eval/image_effective_rank", "eval/image_collapsed_fraction")
       for name in ("simclr", "moco_ssl", "vicreg", "barlow_twins", "dcl", "supcon",
                    "ssl_hybrid")},
    "classify_multitask": ("eval/linear_probe_top1", "eval/knn20_top1", "eval/knn200_top1"),
    "vit_classify": ("eval/top1", "eval/top5"),
}
PROBE = "eval/linear_probe_top1"
RUN_FILE = "recipe_run.json"  # Written beside metrics.jsonl: wall time, start, command.


def _records(workdir: str) -> list[dict[str, float]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final_metrics(workdir: str) -> tuple[dict[str, float], int, float]:
  """(last value of every eval metric, last step, mean examples/s) from metrics.jsonl."""
  final, step, speeds = {}, 0, []
  for record in _records(workdir):
    step = max(step, int(record.get("step", 0)))
    if "examples_per_second" in record:
      speeds.append(float(record["examples_per_second"]))
    final.update({k: v for k, v in record.items() if k.startswith("eval/")})
  return final, step, (sum(speeds) / len(speeds) if speeds else float("nan"))


def plot_curves(rows: list[dict[str, object]], parent: str, metric: str, path: str) -> None:
  """``metric`` against wall time since the run's start, one line per recipe that logs it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for row in rows:
    recipe = str(row["recipe"])
    points = [(r["time"], r[metric]) for r in _records(os.path.join(parent, recipe))
              if metric in r and "time" in r]
    if points:
      start = float(row["start"])
      ax.plot([(t - start) / 60 for t, _ in points], [v for _, v in points], marker="o",
              label=recipe)
  ax.set_xlabel("wall time (min, including data preparation and compiles)")
  ax.set_ylabel(metric.removeprefix("eval/") + " (%)")
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend()
  else:  # No recipe logged the metric: say so on the figure rather than draw an empty legend.
    ax.text(0.5, 0.5, f"no run logged {metric}", ha="center", transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_recipe(recipe: str, preset: str, workdir: str,
               overrides: list[str]) -> dict[str, object]:
  """One recipe through ``main.py``; its wall time, steps, speed and final metrics.

  The timing and the command are kept in ``workdir/recipe_run.json`` so that ``--reuse``
  can rebuild the table from finished runs without training again.
  """
  config = f"configs/{recipe}.py" + ("" if preset == "default" else f":{preset}")
  flags = [f"--config.{o}" for o in overrides]
  command = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}", *flags]
  start, wall_clock = time.perf_counter(), time.time()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if result.returncode != 0:
    raise SystemExit(f"{recipe}: main.py exited {result.returncode}:\n{result.stderr[-2000:]}")
  run = {"wall_min": wall / 60, "start": wall_clock,
         "command": " ".join(["python main.py", f"--config={config}", *flags])}
  with open(os.path.join(workdir, RUN_FILE), "w") as f:
    json.dump(run, f)
  return _row(recipe, workdir, run)


def _row(recipe: str, workdir: str, run: dict[str, object]) -> dict[str, object]:
  metrics, steps, speed = _final_metrics(workdir)
  return {"recipe": recipe, "steps": steps, "speed": speed, "metrics": metrics, **run}


def table(rows: list[dict[str, object]]) -> str:
  """Markdown: one row per recipe, its metrics named in the cell."""
  lines = ["| config | steps | wall time (min) | examples/s | final evaluation | command |",
           "|---|---:|---:|---:|---|---|"]
  for row in rows:
    metrics = row["metrics"]
    cells = ", ".join(f"`{k.removeprefix('eval/')}` {metrics[k]:.2f}"
                      for k in COLUMNS[row["recipe"]] if k in metrics)
    lines.append(f"| `configs/{row['recipe']}.py` | {row['steps']} | {row['wall_min']:.1f} | "
                 f"{row['speed']:.0f} | {cells or '(no evaluation logged)'} | "
                 f"`{row['command']}` |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipes", default=",".join(COLUMNS),
                      help=f"comma-separated, from {', '.join(COLUMNS)}")
  parser.add_argument("--preset", default="default", choices=("default", "tiny"))
  parser.add_argument("--workdir", default=None,
                      help="parent folder of the runs (default: a temporary one)")
  parser.add_argument("--plot", default="",
                      help="also write --plot_metric against wall time to this PNG")
  parser.add_argument("--plot_metric", default=PROBE, help="the metric the plot shows")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override for every recipe (main.py's --config.KEY=VALUE)")
  parser.add_argument("--reuse", action="store_true",
                      help=f"read runs that finished before (their {RUN_FILE}) instead of "
                           "training them again")
  args = parser.parse_args()
  recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
  unknown = [r for r in recipes if r not in COLUMNS]
  if unknown:
    parser.error(f"unknown recipe(s) {unknown}; choose from {', '.join(COLUMNS)}.")
  parent = args.workdir or tempfile.mkdtemp(prefix="mmie_recipes_")
  rows = []
  for recipe in recipes:
    workdir = os.path.join(parent, recipe)
    if args.reuse and os.path.exists(os.path.join(workdir, RUN_FILE)):
      with open(os.path.join(workdir, RUN_FILE)) as f:
        rows.append(_row(recipe, workdir, json.load(f)))
      continue
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      raise SystemExit(f"{workdir} holds a run already; pass another --workdir (or --reuse "
                       "to read finished runs).")
    rows.append(run_recipe(recipe, args.preset, workdir, args.set))
    print(f"{recipe}: {rows[-1]['wall_min']:.1f} min", file=sys.stderr, flush=True)
  print(table(rows))
  if args.plot:
    plot_curves(rows, parent, args.plot_metric, args.plot)


if __name__ == "__main__":
  main()
