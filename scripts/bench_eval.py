"""Evaluation throughput: embeddings per second, and what one whole evaluation costs.

    python scripts/bench_eval.py [--config=configs/clip.py] [--batch-sizes=64,256] [--copies=5]

Evaluators embed a split through ``EvalContext`` (mmie/evaluate/context.py): batches of the
split's images (decoded from their records as they are read) and captions go through the
jitted ``encode_image`` / ``encode_text`` on the run's mesh, padded to one shape. This script
times exactly that path on the config's validation split repeated ``--copies`` times, with
freshly initialised parameters (throughput does not depend on what was learned):

  image/s, text/s    embeddings per second, warm, the median of ``--rounds``; the first
                     call's extra seconds (the compile, the split's first decoding) apart;
  evaluation s       one call of every evaluator the config runs (``config.evals`` or the
                     task's defaults: retrieval, zero-shot, representation metrics) on the
                     split as it is, warm;

and prints a markdown table. The run's evaluation time is the last column times the number
of evaluations (``total_steps / eval_every``, plus the final one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmie import cli, config as config_lib  # noqa: E402
from mmie.data.records import LazyImages  # noqa: E402
from mmie.evaluate import EvalContext, build_evaluators  # noqa: E402
from mmie.train import setup  # noqa: E402


def _repeated(column: Any, copies: int) -> Any:
  """The column ``copies`` times over: lazy images stay lazy (decoded as they are read)."""
  if isinstance(column, LazyImages):
    return column.take(np.tile(np.arange(len(column)), copies))
  return np.concatenate([np.asarray(column)] * copies, axis=0)


def _fresh(params: Any) -> Any:
  """The same values in a new tree: EvalContext caches embeddings per params object."""
  return jax.tree.map(lambda x: x, params)


def measure(config: Any, batch_sizes: list[int], copies: int, rounds: int) -> list[dict]:
  run = setup.build_run(config)
  split = config.data.get("eval_split", "validation")  # What the default evaluators read.
  params = setup.init_state(run, setup.build_stage(run, run.stages[0])).params
  ctx = EvalContext(config, run.model, mesh=run.mesh)
  rows = []
  for kind in ("image", "text"):
    column = _repeated(ctx.split(split)[kind], copies)
    n = len(column)
    for batch in batch_sizes:
      start = time.perf_counter()
      ctx.embed(_fresh(params), kind, column, batch)
      first = time.perf_counter() - start
      times = []
      for _ in range(rounds):
        start = time.perf_counter()
        ctx.embed(_fresh(params), kind, column, batch)
        times.append(time.perf_counter() - start)
      warm = statistics.median(times)
      rows.append({"what": f"{kind} embeddings", "batch": batch, "rows": n,
                   "compile_s": max(first - warm, 0.0), "seconds": warm, "per_s": n / warm})
  evaluators = build_evaluators(config, run.model, mesh=run.mesh)
  for name, _, evaluate in evaluators:
    evaluate(_fresh(params))  # Compiles.
    times = []
    for _ in range(rounds):
      start = time.perf_counter()
      evaluate(_fresh(params))
      times.append(time.perf_counter() - start)
    rows.append({"what": f"evaluator {name!r} (whole split)", "batch": "-",
                 "rows": len(ctx.split(split)["image"]), "compile_s": float("nan"),
                 "seconds": statistics.median(times), "per_s": float("nan")})
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/clip.py")
  parser.add_argument("--batch-sizes", default="64,256")
  parser.add_argument("--copies", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  config = config_lib.validate(cli.load_config_file(args.config))
  rows = measure(config, [int(b) for b in args.batch_sizes.split(",")], args.copies,
                 args.rounds)
  load = os.getloadavg()[0]
  print(f"\n{args.config}, {jax.device_count()} {jax.default_backend()} device(s), load"
        f" average {load:.1f}\n")
  print("| what | batch | rows | first call, extra s | seconds | per second |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in rows:
    compile_s = "-" if np.isnan(r["compile_s"]) else f"{r['compile_s']:.2f}"
    per_s = "-" if np.isnan(r["per_s"]) else f"{r['per_s']:,.0f}"
    print(f"| {r['what']} | {r['batch']} | {r['rows']} | {compile_s} | {r['seconds']:.3f} |"
          f" {per_s} |")


if __name__ == "__main__":
  main()
