"""Plots for a trained workdir: curves, similarity matrix, retrieval grid, attributions, PCA.

    python scripts/explain.py --workdir=runs/clip [--examples=0,7,42] [--ig_steps=32]

Reads the run's saved ``config.json`` (or ``--config`` for a different one), restores the
newest checkpoint and writes PNGs into ``WORKDIR/plots``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from mmie import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's workdir.")
_CONFIG = cli.define_config_flag(
    "config", "Config file; default: the workdir's saved config.json.")
_EXAMPLES = flags.DEFINE_list("examples", [], "Evaluation-split image indices to explain.")
_IG_STEPS = flags.DEFINE_integer("ig_steps", 16, "Integrated-gradients path samples.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  from mmie.insight import report

  try:
    examples = [int(e) for e in _EXAMPLES.value]
  except ValueError as e:
    raise app.UsageError(f"--examples={','.join(_EXAMPLES.value)}: expected integers.") from e
  config, model, params, step = report.load_trained(_WORKDIR.value, _CONFIG.value)
  paths = report.make_run_plots(_WORKDIR.value, config, params, model, examples=examples,
                                ig_steps=_IG_STEPS.value)
  print(f"Checkpoint of step {step}; wrote:")
  for path in paths:
    print("  " + path)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
