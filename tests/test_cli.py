"""The command line: every config mistake exits 2 with one line naming the key, before
anything is prepared, compiled or written to the workdir (``main.py`` through ``mmie/cli.py``).

Each case runs ``main.py`` in a subprocess, as a user would. ``JAX_LOG_COMPILES`` makes any
XLA compile print a log line, so "exactly one line on stderr" also shows nothing compiled.
"""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/clip.py:tiny"


def _main(tmp_path, *args, config=TINY):
  workdir = tmp_path / "run"
  env = {**os.environ, "JAX_LOG_COMPILES": "1", "MMIE_DATA_DIR": str(tmp_path / "data")}
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "main.py", *([config] if config else []),
                           f"--workdir={workdir}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
  seconds = time.perf_counter() - start
  print(f"{seconds:.1f}s: main.py {' '.join(args)}")  # The 5 s goal, reported only.
  return result, workdir


def _assert_one_line_error(result, workdir, *fragments):
  # JAX_LOG_COMPILES also logs tracing (eval_shape, which runs nothing); compiles stay.
  lines = [line for line in result.stderr.splitlines()
           if line.strip() and "Finished tracing" not in line]
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith("Invalid config: "), lines[0]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  assert not os.path.exists(workdir), "a config error must leave no workdir behind"


@pytest.mark.parametrize("args,fragments", [
    (["--config.nonexistent=1"], ["Unknown config key nonexistent"]),
    (["--config.model.typo=1"], ["Unknown config key model.typo"]),
    (["--config.model.image.widht=64"], ["model.image.widht", "Did you mean 'width'"]),
    (["--config.data.augment.random_flipp=True"],
     ["data.augment.random_flipp", "Did you mean 'random_flip'"]),
    (["--config.batch_size=abc"], ["--config.batch_size=abc"]),
    (["--config.batch_size=0"], ["batch_size=0 is not allowed"]),
    (["--config.optimizer.name=adam"], ["optimizer.name='adam'", "'adamw'"]),
    (["--config.optimizer.learning_rate=-1.0"], ["optimizer.learning_rate=-1.0"]),
    (["--config.train.ema_decay=1.5"], ["train.ema_decay=1.5"]),
    (["--config.train.accumulation=gradcache", "--config.train.grad_accum_steps=3"],
     ["train.grad_accum_steps=3 must divide batch_size=16"]),
    (["--config.evals.eval.type=retreival"], ["evals.eval.type='retreival'",
                                              "Did you mean 'retrieval'"]),
    (["--config.data.name=nosuch"], ["data.name='nosuch'", "unknown data source"]),
    (["--config.data.name=folder(path='/nonexistent/pets')"],
     ["data.name=", "/nonexistent/pets does not exist"]),
    (["--mode=evaluate", "--eval_data=emoji + emoji * 2"],
     ["--eval_data='emoji + emoji * 2'", "one source"]),
    (["--mode=evaluate", "--eval_data=folder(path='/nonexistent/pets')"],
     ["data.name=", "/nonexistent/pets does not exist"]),
    (["--config.loss.name=clipp"], ["loss", "Did you mean 'clip'"]),
    (["--config.loss.name=clip(temprature=0.1)"], ["loss head 'clip'", "temprature"]),
    (["--config.loss.name=__import__('os').system('true')"], ["loss"]),
    (["--config.loss.name=siglip"], ["config.loss='siglip' does not fit", "logit_bias"]),
    (["--config.mesh.data=3"], ["Mesh", "devices"]),
    (["--config.task=nosuch"], ["task='nosuch'"]),
])
def test_override_mistakes(tmp_path, args, fragments):
  result, workdir = _main(tmp_path, *args)
  _assert_one_line_error(result, workdir, *fragments)


def test_mistake_in_the_last_stage_stops_before_the_first(tmp_path):
  result, workdir = _main(tmp_path, "--config.stages.full.loss.terms.contrastive.name=clipp",
                          config="--config=configs/multistage.py:tiny")
  _assert_one_line_error(result, workdir, "stages.full.loss", "clipp")


def test_bad_rule_in_a_later_stage(tmp_path):
  result, workdir = _main(tmp_path, "--config.stages.top_blocks.optimizer.name=adamx",
                          config="--config=configs/multistage.py:tiny")
  _assert_one_line_error(result, workdir, "stages.top_blocks.optimizer.name='adamx'")


@pytest.mark.parametrize("config,fragments", [
    ("--config=configs/nosuch.py", ["no config file 'configs/nosuch.py'"]),
    ("--config=configs/clip.py:huge", ["unknown preset 'huge'"]),
    ("--config=clipp:tiny", ["no config file 'clipp'", "shipped configs: barlow_twins, "]),
    (None, ["--config"]),
])
def test_config_file_mistakes(tmp_path, config, fragments):
  result, workdir = _main(tmp_path, config=config)
  _assert_one_line_error(result, workdir, *fragments)


def test_evaluate_without_config_needs_a_trained_workdir(tmp_path):
  result, workdir = _main(tmp_path, "--mode=evaluate", config=None)
  _assert_one_line_error(result, workdir, "config.json does not exist",
                         "--mode=evaluate without --config")


def test_file_without_get_config(tmp_path):
  path = tmp_path / "broken.py"
  path.write_text("CONFIG = {}\n")
  result, workdir = _main(tmp_path, config=f"--config={path}")
  _assert_one_line_error(result, workdir, "defines no get_config")


def test_unset_keys_can_be_overridden(tmp_path):
  """Keys the config file never writes take command-line values (defaults filled first)."""
  from mmie import cli, config as config_lib  # pylint: disable=g-import-not-at-top
  config = cli.load_config_file("configs/clip.py:tiny")
  assert "ema_decay" in config.train and config.train.ema_decay is None
  config.train.ema_decay = 0.99   # What --config.train.ema_decay=0.99 does after parsing.
  config.model.logit_bias_init = -10.0  # An optional float the file set to None.
  frozen = config_lib.validate(config)
  assert frozen.train.ema_decay == 0.99 and frozen.model.logit_bias_init == -10.0


def test_a_bare_name_is_the_shipped_config_and_a_local_file_wins(tmp_path, monkeypatch):
  from mmie import cli  # pylint: disable=g-import-not-at-top
  shipped = os.path.join(ROOT, "mmie", "configs", "vit_classify.py")
  monkeypatch.chdir(tmp_path)
  assert os.path.samefile(cli.resolve_config_path("vit_classify", "vit_classify"), shipped)
  assert os.path.samefile(cli.resolve_config_path("vit_classify.py", "x"), shipped)
  assert cli.load_config_file("vit_classify:tiny").task == "classify"
  (tmp_path / "vit_classify.py").write_text("")  # The user's own file of that name wins.
  assert cli.resolve_config_path("vit_classify.py", "x") == "vit_classify.py"
  names = cli.shipped_config_names()
  assert "clip" in names and "vit_classify" in names and "vision" not in names
  helpers = ("__init__.py", "vision.py", "presets.py")  # Shared blocks, preset parsing.
  assert "presets" not in names
  assert len(names) == len([f for f in os.listdir(os.path.join(ROOT, "configs"))
                            if f.endswith(".py") and f not in helpers])


def test_export_command_imports_beside_the_training_command():
  """Both commands have a --workdir flag: the export defines its flags only when it runs,
  so a process (a test, a notebook) can import both. In a fresh interpreter, because this
  test process's absl flags already hold whatever other tests' scripts defined."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-c", "import mmie.main, mmie.export; print(mmie.export.FORMATS)"],
      cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "('hf', 'open_clip')" in result.stdout


def test_eval_data_needs_evaluate_mode(tmp_path):
  result, workdir = _main(tmp_path, "--eval_data=emoji")
  assert result.returncode != 0
  assert "--eval_data evaluates a trained run: add --mode=evaluate" in result.stderr
  assert not os.path.exists(workdir)


# A background thread that writes half a line, then keeps printing, while the main thread
# stops: as orbax's writer threads print tracebacks when the disk fills.
_NOISY_STOP = """
import sys, threading, time
from mmie import cli
def noise():
  sys.stderr.write("RuntimeError: "); sys.stderr.flush()
  while True:
    print("Traceback (most recent call last): ...", file=sys.stderr, flush=True)
started = threading.Thread(target=noise, daemon=True)
started.start()
time.sleep(0.2)
cli.error_exit("Stopped: the   disk is full;\\nfree space.", cli.EXIT_OUT_OF_SPACE,
               run_exit_handlers=False)
"""


def test_immediate_exit_prints_its_line_last_and_alone_over_other_threads():
  result = subprocess.run([sys.executable, "-c", _NOISY_STOP], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 74  # cli.EXIT_OUT_OF_SPACE: the status the caller gave.
  assert result.stderr.count("Traceback") > 0  # The noise was running when it stopped.
  assert result.stderr.splitlines()[-1] == "Stopped: the disk is full; free space."
