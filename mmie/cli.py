"""The command line's config edge: ``--config=file.py[:preset]`` and ``--config.key=value``.

ml_collections' config flag loads the file, locks the config, then defines one override flag
per ``--config.*`` argument. Two things are added here:

* defaults are filled in between loading and locking, by each section's owner (the engine's
  :func:`mmie.config.fill_defaults`, the model builder's, the evaluator registry's), so every
  documented key can be overridden even when the file does not set it;
* every mistake made on the command line (a missing file, a file without ``get_config``, an
  unknown preset, an unknown key, a value of the wrong type) becomes one line naming it and
  exit status 2, instead of a traceback from flag parsing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

from mmie.schema import ConfigError, unknown_key_error

EXIT_CONFIG_ERROR = 2
EXIT_NONFINITE = 3  # train.on_nonfinite='stop' met a NaN/inf; the finite state is saved.
EXIT_OUT_OF_SPACE = 74  # sysexits' EX_IOERR: a write failed for lack of space.
EXIT_PEER_LOST = 75  # sysexits' EX_TEMPFAIL: another process of the run died; relaunch all.


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``file.py[:preset]`` -> the file's ``get_config(preset)``, with every default filled in."""
  path, has_arg, arg = spec.partition(":")
  path = resolve_config_path(path, spec)
  module_spec = importlib.util.spec_from_file_location(
      f"mmie_config_{os.path.splitext(os.path.basename(path))[0]}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - any import failure of a user file is its problem.
    raise ConfigError(f"--config={spec}: the file does not import:"
                      f" {type(e).__name__}: {e}") from e
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"--config={spec}: {path} defines no get_config(arg=None) function.")
  try:
    config = get_config(arg) if has_arg else get_config()
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"--config={spec}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config={spec}: get_config returned {type(config).__name__}, not an"
                      " ml_collections.ConfigDict.")
  return fill_all_defaults(config)


SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_config_names() -> list[str]:
  """The configs installed with the package: mmie/configs/*.py that define ``get_config``
  (``vision.py`` holds shared blocks only)."""
  def is_config(name: str) -> bool:
    with open(os.path.join(SHIPPED_CONFIGS, name), encoding="utf-8") as f:
      return "\ndef get_config(" in f.read()
  return sorted(name[:-3] for name in os.listdir(SHIPPED_CONFIGS)
                if name.endswith(".py") and is_config(name))


def resolve_config_path(path: str, spec: str) -> str:
  """A config file path, or a bare name (``clip``) for the shipped ``mmie/configs/clip.py``.

  A file of that name in the working directory wins, so a user's own ``clip.py`` is never
  shadowed by the package's.
  """
  if os.path.isfile(path):
    return path
  shipped = os.path.join(SHIPPED_CONFIGS, path if path.endswith(".py") else path + ".py")
  if os.sep not in path and "/" not in path and os.path.isfile(shipped):
    return shipped
  raise ConfigError(f"--config={spec}: there is no config file {path!r} (looked in"
                    f" {os.getcwd()}); a bare name is one of the shipped configs:"
                    f" {', '.join(shipped_config_names())}.")


def fill_all_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every section's defaults, each from its owner: the engine's, the model's (by
  ``model.name``), the evaluators' (the task's defaults when ``evals`` is absent)."""
  # pylint: disable=g-import-not-at-top
  from mmie import config as config_lib
  from mmie.evaluate.registry import fill_evals_defaults
  from mmie.models.builder import fill_model_defaults
  config_lib.fill_defaults(config)
  if isinstance(config.get("model"), ml_collections.ConfigDict):
    fill_model_defaults(config.model)
  fill_evals_defaults(config)
  return config


def check_override_keys(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Each ``--config.a.b`` names an existing key; else the closest one is suggested."""
  for path in overrides:
    node: Any = config
    walked = []
    for key in path.split("."):
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"--config.{path}: config key {'.'.join(walked)} is a value, not a"
                          " section, so it has no keys.")
      if key not in node:
        raise unknown_key_error(".".join(walked + [key]), key, node.keys())
      walked.append(key)
      node = node[key]


def override_paths(argv: Sequence[str], name: str = "config") -> list[str]:
  """The key paths of ``--config.a.b=v`` / ``--config.a.b v`` / ``--noconfig.flag`` args."""
  paths = []
  for arg in argv:
    for prefix in (f"--{name}.", f"-{name}.", f"--no{name}.", f"-no{name}."):
      if arg.startswith(prefix):
        paths.append(arg[len(prefix):].split("=", 1)[0])
        break
  return paths


class _Parser(config_flags_impl.ConfigFileFlagParser):
  """Loads, fills defaults, checks the override keys, then locks."""

  def __init__(self, name: str):
    super().__init__(name=name, lock_config=True)
    self.argv: Sequence[str] = ()

  def parse(self, argument: str) -> ml_collections.ConfigDict:
    config = load_config_file(argument)
    check_override_keys(config, override_paths(self.argv or sys.argv, self.name))
    config.lock()
    return config


def define_config_flag(name: str = "config", help_string: str = "") -> flags.FlagHolder:
  """``--config`` as ml_collections defines it, with this module's loading and checks."""
  holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
  flags.FLAGS[name].parser = _Parser(name)
  return holder


def config_error_exit(message: str) -> NoReturn:
  """The one line every config mistake prints, and exit status 2."""
  error_exit(f"Invalid config: {message}", EXIT_CONFIG_ERROR)


def error_exit(message: str, status: int, *, run_exit_handlers: bool = True) -> NoReturn:
  """Prints ``message`` as one line on stderr and exits with ``status``: for the errors a
  user acts on (a config mistake, a full disk, a non-finite loss), not for bugs.

  ``run_exit_handlers=False`` leaves at once (``os._exit``): when the disk is full or a peer
  is lost, the handlers would only retry writes that cannot succeed. Background threads
  (orbax's writers, asyncio's callbacks) may still be printing tracebacks then, so the
  process's stderr is pointed at the null device first and the message is written alone, on
  a line of its own, as the last thing the process prints.
  """
  line = " ".join(str(message).split())
  if run_exit_handlers:
    print(line, file=sys.stderr, flush=True)
    sys.exit(status)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # A full disk or a closed stream: nothing more to save.
      pass
  real_stderr = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)  # Every other writer, Python or C++, now writes nowhere.
  # The newline ends whatever partial line another thread had written before.
  os.write(real_stderr, f"\n{line}\n".encode())
  os._exit(status)  # pylint: disable=protected-access


def _root_message(error: BaseException) -> str:
  """Our own ConfigError's text when absl wrapped it, else the error's own."""
  seen = error
  while seen is not None:
    if isinstance(seen, ConfigError):
      return str(seen)
    seen = seen.__cause__ or seen.__context__
  return str(error)


def parse_flags(argv: Sequence[str], name: str = "config") -> list[str]:
  """``app.run``'s flags parser: absl parsing, with config mistakes as one line and exit 2."""
  if name in flags.FLAGS and isinstance(flags.FLAGS[name].parser, _Parser):
    flags.FLAGS[name].parser.argv = list(argv)
  try:
    return flags.FLAGS(list(argv))
  except flags.UnrecognizedFlagError as e:
    if str(e.flagname).startswith(f"{name}."):
      config_error_exit(f"Unknown config key {e.flagname[len(name) + 1:]}.")
    config_error_exit(f"{e}. Run with --helpfull to list the flags.")
  except (flags.Error, ConfigError, KeyError, TypeError, ValueError, AttributeError) as e:
    config_error_exit(_root_message(e))
