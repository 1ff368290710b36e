"""MMIE entry point.

    python main.py --config=configs/clip.py[:preset] --workdir=runs/clip [--config.key=value]

``--mode=train`` (default) trains, evaluates and checkpoints, resuming from the workdir's newest
checkpoint if there is one; ``--mode=evaluate`` evaluates that checkpoint without training.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with a preset: configs/clip.py:tiny.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics, checkpoints and plots go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # Library INFO chatter hides the progress lines.
    logging.set_verbosity(logging.WARNING)
  from mmie import config as config_lib

  try:
    config = config_lib.validate(_CONFIG.value)
    from mmie.train import loop  # After validation: a bad key fails before heavy imports.

    logging.info("Config:\n%s", config)
    if _MODE.value == "train":
      loop.train_and_evaluate(config, _WORKDIR.value)
    else:
      loop.evaluate_checkpoint(config, _WORKDIR.value)
  except config_lib.ConfigError as e:
    print(f"Invalid config: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
