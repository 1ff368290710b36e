"""Exports a trained two-tower run for PyTorch and Hugging Face users.

    python -m mmie.export --workdir=runs/clip --out=exports/clip_hf [--format=hf] [--step=N]
    python -m mmie.export --workdir=runs/clip --out=exports/clip_oc --format=open_clip

``--format=hf`` writes a directory that ``transformers.CLIPModel.from_pretrained`` (PyTorch,
model.safetensors), ``FlaxCLIPModel.from_pretrained``, ``AutoTokenizer.from_pretrained`` and
``CLIPImageProcessor.from_pretrained`` load with no extra code (mmie/models/hf_export.py).
``--format=open_clip`` writes one that ``open_clip.create_model_and_transforms("local-dir:DIR")``
and ``open_clip.get_tokenizer("local-dir:DIR")`` load (mmie/models/open_clip_export.py).
The run's newest checkpoint is exported unless ``--step`` names another; the model config and
tokenizer are the run's own (``workdir/config.json``).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

EXIT_EXPORT_ERROR = 2
FORMATS = ("hf", "open_clip")


def _define_flags() -> dict[str, flags.FlagHolder]:
  """The command's flags, defined only when it runs: importing ``export_run`` (from a test or
  beside ``mmie.main``, which has its own ``--workdir``) must not define them twice."""
  holders = dict(
      workdir=flags.DEFINE_string("workdir", None, "The trained run's workdir."),
      out=flags.DEFINE_string("out", None, "Directory to write (must be empty or new)."),
      format=flags.DEFINE_enum("format", "hf", list(FORMATS), "What to write."),
      step=flags.DEFINE_integer("step", None,
                                "Checkpoint step to export (default: the newest)."),
      overwrite=flags.DEFINE_bool("overwrite", False, "Allow writing into a non-empty --out."))
  flags.mark_flags_as_required(["workdir", "out"])
  return holders


def export_run(workdir: str, out: str, *, fmt: str = "hf", step: int | None = None,
               overwrite: bool = False) -> int:
  """Writes the run's checkpoint (``step``, default newest) to ``out`` in format ``fmt``;
  returns the step exported. Raises ValueError when the model cannot be expressed."""
  if fmt not in FORMATS:
    raise ValueError(f"format={fmt!r}; choose one of {FORMATS}.")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise ValueError(f"--out={out} is not empty; choose a new directory or pass --overwrite.")
  from mmie.data import spec  # pylint: disable=g-import-not-at-top  (heavy imports after flags)
  from mmie.train.trained import load_trained  # pylint: disable=g-import-not-at-top

  config, _, params, step = load_trained(workdir, step=step)
  model = config.model
  if model.get("name") != "two_tower":
    raise ValueError(
        f"model.name={model.get('name')!r} (task {config.get('task')!r}): export writes "
        "two-tower CLIP/SigLIP models only. A classifier, fusion, seq2seq or language model "
        "has no Hugging Face CLIP or open_clip counterpart to load into.")
  tokenizer_path = spec.tokenizer_path_for(config.data)
  if fmt == "hf":
    from mmie.models import hf_export  # pylint: disable=g-import-not-at-top
    hf_export.export_hf(model, params, config.data, tokenizer_path, out)
  else:
    from mmie.models import open_clip_export  # pylint: disable=g-import-not-at-top
    open_clip_export.export_open_clip(model, params, config.data, tokenizer_path, out)
  return step


def main(argv: list[str], flag: dict[str, flags.FlagHolder]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # Library INFO chatter hides the result line.
    logging.set_verbosity(logging.WARNING)
  workdir, out, fmt = flag["workdir"].value, flag["out"].value, flag["format"].value
  try:
    step = export_run(workdir, out, fmt=fmt, step=flag["step"].value,
                      overwrite=flag["overwrite"].value)
  except (ValueError, FileNotFoundError) as e:
    print(f"Export failed: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(EXIT_EXPORT_ERROR)
  print(f"Exported step {step} of {workdir} to {out} ({fmt}).")


def run() -> None:
  """``python -m mmie.export``."""
  flag = _define_flags()
  app.run(lambda argv: main(argv, flag))


if __name__ == "__main__":
  run()
