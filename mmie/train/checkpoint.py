"""Orbax checkpoints of the TrainState, the data iterator position and run metadata.

Every host reads its own shard of the data, so every host's iterator position is saved: the
``data`` item holds one JSON state per process (gathered to the primary host, which writes
it), and each host restores its own.

Each step is committed atomically by orbax (written to a temporary directory, then renamed),
so a killed save leaves no half checkpoint behind. A checkpoint that is committed but fails to
restore (a corrupt or truncated file) is reported and skipped in favour of the previous one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mmie.schema import ConfigError

log = logging.getLogger(__name__)


class Restored(NamedTuple):
  step: int
  state: Any
  data_state: dict  # This process's data iterator state; {} when it cannot be resumed exactly.
  meta: dict
  data_states: tuple[dict, ...] = ()  # Every process's, in process order.


def _gather_json(value: dict) -> list[dict]:
  """Every process's ``value`` (a JSON-serialisable dict), in process order, on every process."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  payload = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.asarray([payload.size], np.int32)))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:payload.size] = payload
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(row[:n].tobytes().decode()) for row, n in zip(rows, lengths.reshape(-1))]


def _own_data_state(stored: dict) -> tuple[dict, tuple[dict, ...]]:
  """(this process's state, all states) from the stored ``data`` item.

  A run resumed on a different number of hosts shards the data differently, so no saved
  position applies: the iterators start afresh (a warning says so) rather than replay or skip
  data silently.
  """
  if "per_process" not in stored:  # One state for all: written by a single-process run.
    return stored, (stored,)
  states = tuple(stored["per_process"])
  if len(states) != jax.process_count():
    log.warning("The checkpoint holds the data positions of %d processes but this run has %d:"
                " the data iterators restart from the beginning of their shards.",
                len(states), jax.process_count())
    return {}, states
  return states[jax.process_index()], states


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` with fall-back restore."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.expanduser(directory))  # orbax needs absolute.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "data", "meta"),
    )

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Saves asynchronously; call :meth:`wait` before relying on it being on disk.

    Collective on multi-host runs: every process calls it with its own ``data_state``.
    """
    if step in self._manager.all_steps():
      return
    if jax.process_count() > 1:
      data_state = {"per_process": _gather_json(data_state)}
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        ),
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_step(self, step: int, abstract_state: Any) -> Restored:
    """Restores the checkpoint at ``step`` (``abstract_state`` as in :meth:`restore_latest`)."""
    if step not in self.all_steps():
      raise FileNotFoundError(f"{self.directory} has no checkpoint at step {step}; it has "
                              f"{self.all_steps() or 'none'}.")
    target = abstract_state(step) if callable(abstract_state) else abstract_state
    return self._restore(step, target)

  def _restore(self, step: int, target: Any) -> Restored:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    own, every = _own_data_state(dict(restored["data"] or {}))
    return Restored(step, restored["state"], own, dict(restored["meta"] or {}), every)

  def restore_latest(self, abstract_state: Any) -> Restored | None:
    """Restores the newest checkpoint that loads; None when there is none at all.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` (with shardings) saying the
    structure, dtypes and placement to restore into, or a function of the step returning one
    (the state's structure depends on the training stage the step belongs to).
    """
    steps = self.all_steps()
    errors = []
    for step in reversed(steps):
      target = abstract_state(step) if callable(abstract_state) else abstract_state
      refuse_mismatch(self.directory, step, target)  # Another config's: not corrupt, kept.
      try:
        restored = self._restore(step, target)
      except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable.
        msg = f"Checkpoint at step {step} in {self.directory} could not be restored: {e!r}"
        log.error(msg + "; trying the previous one.")
        errors.append(msg)
        continue
      if errors:
        self._quarantine([s for s in steps if s > step])
        log.warning("Resumed from step %d after skipping %d unreadable checkpoint(s), moved"
                    " to %s_corrupt/ for inspection.", step, len(errors), self.directory)
      return restored
    if errors:
      raise RuntimeError(
          "No checkpoint in the workdir could be restored:\n  " + "\n  ".join(errors)
          + "\nMove the workdir's checkpoints/ aside to start afresh."
      )
    return None

  def _quarantine(self, steps: list[int]) -> None:
    """Moves unreadable checkpoints aside (never deletes them), so their steps can be re-saved."""
    if jax.process_index() == 0:
      aside = f"{self.directory.rstrip('/')}_corrupt"
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, f"{step}.{int(time.time())}")
        shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("mmie_checkpoint_quarantine")
    self._manager.reload()

  def close(self) -> None:
    """Waits for pending saves and releases the manager; safe to call twice."""
    if self._manager is None:
      return
    manager, self._manager = self._manager, None
    try:
      manager.wait_until_finished()  # Raises a pending save's error (a full disk, say).
    finally:
      try:
        manager.close()
      except Exception as e:  # noqa: BLE001 - the wait's error, if any, is the one to report.
        log.warning("Closing the checkpoint manager failed: %r", e)


def mismatch(directory: str, step: int, target: Any) -> str:
  """What differs between the state saved at ``step`` and ``target`` (names and shapes);
  '' when they agree, or when the checkpoint's metadata cannot be read (a torn checkpoint:
  its restore fails and says so). Reads orbax's metadata file only, on every host alike."""
  try:
    saved = _shapes(ocp.StandardCheckpointHandler().metadata(
        epath.Path(directory) / str(step) / "state"))
  except Exception:  # noqa: BLE001 - unreadable metadata is the restore's to report.
    return ""
  wanted = _shapes(target)
  order = lambda k: (not k.startswith("params/"), k)  # Parameters first: they say most.
  parts = []
  missing = sorted(wanted.keys() - saved.keys(), key=order)
  extra = sorted(saved.keys() - wanted.keys(), key=order)
  for label, names in (("missing from the checkpoint", missing),
                       ("not in this config's state", extra)):
    if names:
      parts.append(f"{label}: {', '.join(names[:6])}" + (
          f" and {len(names) - 6} more" if len(names) > 6 else ""))
  reshaped = [f"{k} {saved[k]} saved, {wanted[k]} now"
              for k in sorted(wanted.keys() & saved.keys(), key=order) if saved[k] != wanted[k]]
  if reshaped:
    parts.append("shapes differ: " + "; ".join(reshaped[:6]) + (
        f" and {len(reshaped) - 6} more" if len(reshaped) > 6 else ""))
  return "; ".join(parts)


def refuse_mismatch(directory: str, step: int, target: Any) -> None:
  """Raises ConfigError naming what differs when the checkpoint at ``step`` holds the state
  of another config."""
  differs = mismatch(directory, step, target)
  if differs:
    raise ConfigError(
        f"The checkpoint at step {step} in {directory} was written by another model or"
        f" training setup ({differs}). Train this config in a new --workdir, or resume with"
        " the config that wrote it (config.json beside checkpoints/).")


def check_matches(directory: str, abstract_state: Callable[[int], Any]) -> None:
  """:func:`refuse_mismatch` for the newest step under ``directory``, without a checkpoint
  manager (so without its cross-host barriers): a run calls it before rewriting its workdir."""
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
  if steps:
    refuse_mismatch(directory, max(steps), abstract_state(max(steps)))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """``{'params/image/.../kernel': shape}`` of a state pytree or of orbax's tree metadata."""
  def name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (keeping shardings) for restoring into the layout of ``tree``."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree,
  )
