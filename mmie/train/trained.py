"""A trained run's model and parameters, read back from its workdir (export, init_from,
insight and the scripts all start here)."""

from __future__ import annotations

import functools
import json
import os
from typing import Any


def load_trained(workdir: str, config: Any = None,
                 step: int | None = None) -> tuple[Any, Any, Any, int]:
  """``(config, model, params, step)`` of a workdir's newest readable checkpoint, or of the
  one at ``step``.

  ``config`` defaults to the one the run saved in ``workdir/config.json``.
  """
  import ml_collections

  from mmie import config as config_lib
  from mmie.train import setup
  from mmie.train.checkpoint import Checkpointer

  if config is None:
    config = saved_config(workdir)
  if not isinstance(config, ml_collections.FrozenConfigDict):
    config = config_lib.validate(config)
  # No data check: a trained run loads without its training data (moved, or on another host).
  run = setup.build_run(config, check_data=False)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  target = functools.partial(setup.abstract_state_at, run)
  try:  # A state's structure depends on its training stage: the run's one restore target.
    restored = ckpt.restore_latest(target) if step is None else ckpt.restore_step(step, target)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints; train first.")
  return config, run.model, restored.state.params, restored.step


def saved_config(workdir: str) -> Any:
  """The config a run saved in ``workdir/config.json`` (overrides included), unlocked."""
  import ml_collections

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a training workdir?"
                            " Pass the config explicitly.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluation_config(config: Any, source: str, workdir: str) -> Any:
  """``config`` pointed at ``source`` read whole, for ``main.py --mode=evaluate --eval_data``.

  The data's split becomes the one evaluated (mmie/data/spec.py ``whole_source``), and the
  tokenizer is the run's own ``workdir/tokenizer.json`` unless the config names one: the
  checkpoint's token ids mean nothing under the tokenizer a new source would train.
  """
  import ml_collections

  from mmie.data import spec

  name, split = spec.whole_source(source)
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked; overrides already applied.
  config.data.name = name
  config.data.eval_split = split
  saved = os.path.join(workdir, "tokenizer.json")
  if not config.data.get("tokenizer") and os.path.exists(saved):
    config.data.tokenizer = saved
  return config
