"""MMIE entry point in a checkout; the same command as the installed ``mmie-train``.

    python main.py --config=configs/clip.py[:preset] --workdir=runs/clip [--config.key=value]

``--mode=train`` (default) trains, evaluates and checkpoints, resuming from the workdir's newest
checkpoint if there is one; ``--mode=evaluate`` evaluates that checkpoint without training.
Everything lives in mmie/main.py.
"""

from mmie.main import run

if __name__ == "__main__":
  run()
