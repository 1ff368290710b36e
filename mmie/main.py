"""MMIE's command line: ``main.py`` in a checkout and the ``mmie-train`` console script.

    python main.py --config=configs/clip.py[:preset] --workdir=runs/clip [--config.key=value]
    mmie-train --config=clip[:preset] --workdir=runs/clip [--config.key=value]

A bare ``--config=NAME`` is the shipped ``mmie/configs/NAME.py`` (mmie/cli.py), so an installed
package trains from any directory.

``--mode=train`` (default) trains, evaluates and checkpoints, resuming from the workdir's newest
checkpoint if there is one; ``--mode=evaluate`` evaluates that checkpoint without training, on
the run's eval split or, with ``--eval_data=SOURCE``, on another source read whole. Without
``--config`` it evaluates with the config the run saved (``WORKDIR/config.json``).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from mmie import cli  # noqa: E402

_CONFIG = cli.define_config_flag(
    "config", "Experiment config file, optionally with a preset: configs/clip.py:tiny, or the name of a"
    " shipped config: clip:tiny.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics, checkpoints and plots go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "What to do.")
_EVAL_DATA = flags.DEFINE_string(
    "eval_data", None, "With --mode=evaluate: evaluate on this data source, read whole, instead"
    " of the run's own eval split, e.g. \"folder(path='~/held_out')\"; the run's tokenizer is"
    " kept. Metrics go to WORKDIR/evaluations.jsonl.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: call jax.distributed.initialize(), which detects TPU"
    " pods, SLURM, Open MPI and Kubernetes by itself. Elsewhere give the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100, "Multi-host: a process whose heartbeats stop for this"
    " long is declared dead and the run stops (JAX's default, 100). A process that sees a"
    " collective fail because another died stops at once, without waiting for this.")
flags.mark_flags_as_required(["workdir"])  # --config too, except to evaluate a saved run.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value or _COORDINATOR.value:
    from mmie.train import distributed
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           heartbeat_timeout_seconds=_HEARTBEAT.value)
  if not flags.FLAGS["verbosity"].present:  # Library INFO chatter hides the progress lines.
    logging.set_verbosity(logging.WARNING)
  from mmie import config as config_lib

  try:
    config = _CONFIG.value
    if config is None:
      if _MODE.value != "evaluate":
        raise config_lib.ConfigError("--config is required to train (it may be left out "
                                     "with --mode=evaluate, which then reads "
                                     "WORKDIR/config.json).")
      from mmie.train import trained
      try:
        config = trained.saved_config(_WORKDIR.value)
      except FileNotFoundError as e:
        raise config_lib.ConfigError(f"{e} --mode=evaluate without --config evaluates a "
                                     "trained run with the config it saved.") from None
    if _EVAL_DATA.value is not None:
      if _MODE.value != "evaluate":
        raise app.UsageError("--eval_data evaluates a trained run: add --mode=evaluate.")
      from mmie.train import trained
      config = trained.evaluation_config(config, _EVAL_DATA.value, _WORKDIR.value)
    config = config_lib.validate(config)
    from mmie.train import loop  # After validation: a bad key fails before heavy imports.

    logging.info("Config:\n%s", config)
    if _MODE.value == "train":
      from mmie.insight.report import plots_hook  # Insight plugs into training as a hook.
      loop.train_and_evaluate(config, _WORKDIR.value, end_hooks=[plots_hook])
    else:
      loop.evaluate_checkpoint(config, _WORKDIR.value, other_data=_EVAL_DATA.value)
  except config_lib.ConfigError as e:
    cli.config_error_exit(str(e))
  except Exception as e:  # noqa: BLE001 - the errors a user acts on get one line; others raise.
    from mmie.train import loop, storage
    if isinstance(e, storage.StorageFullError):
      # Exit handlers (TensorBoard's flush, orbax's failed write tasks) would only fail
      # again and print hundreds of lines after the one that says what to do.
      cli.error_exit(f"Stopped: {e.strerror}", cli.EXIT_OUT_OF_SPACE, run_exit_handlers=False)
    if isinstance(e, loop.NonFiniteError):
      cli.error_exit(f"Stopped: {e}", cli.EXIT_NONFINITE)
    _leave_multiprocess_run(e)
    raise


def _leave_multiprocess_run(error: Exception) -> None:
  """In a multi-process run, stops this process now instead of at JAX's shutdown barrier,
  where it would wait for a peer that may be dead until the heartbeat timeout aborts it."""
  import jax
  if not jax.distributed.is_initialized():
    return
  import traceback
  from mmie.train import distributed
  where = f"process {jax.process_index()} of {jax.process_count()}"
  if distributed.lost_peer(error):
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    cli.error_exit(f"Stopped: {where} lost another process of the run ({first}). See the"
                   " other processes' logs; relaunch every process with the same command to"
                   " resume from the newest checkpoint.", cli.EXIT_PEER_LOST,
                   run_exit_handlers=False)
  traceback.print_exc()
  cli.error_exit(f"Stopped: {where} failed ({type(error).__name__}); leaving without waiting"
                 " for the others, which stop when they next need this one.", 1,
                 run_exit_handlers=False)


def run() -> None:
  """The console script's entry point (pyproject.toml ``mmie-train``)."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
