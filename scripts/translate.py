"""Translate sentences with a trained seq2seq workdir (configs/translate.py).

    python scripts/translate.py --workdir=runs/translate "In the beginning was the Word."
    python scripts/translate.py --workdir=runs/translate --strategy=beam < sentences.txt

Reads the run's saved ``config.json`` and ``tokenizer.json``, restores the newest checkpoint,
and prints one translation per input sentence (arguments, else stdin lines), decoded with
the model's jitted ``generate`` (greedy, beam search with length penalty, or sampling).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained seq2seq run's workdir.")
_STRATEGY = flags.DEFINE_enum("strategy", "greedy", ["greedy", "beam", "sample"],
                              "Decoding strategy.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", 4, "Beams (strategy=beam).")
_ALPHA = flags.DEFINE_float("alpha", 0.6, "Length penalty exponent (strategy=beam).")
_TOP_P = flags.DEFINE_float("top_p", 0.9, "Nucleus mass (strategy=sample).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (strategy=sample).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences decoded at once.")
flags.mark_flag_as_required("workdir")


def translate(workdir: str, sentences: list[str], *, batch_size: int = 32, seed: int = 0,
              **options) -> list[str]:
  """Translations of ``sentences`` by the newest checkpoint in ``workdir``; ``options`` go to
  ``decoding.generate`` (strategy, beam_size, alpha, top_p, ...)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mmie.data import pipeline, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from mmie.insight import report  # pylint: disable=g-import-not-at-top

  config, model, params, _ = report.load_trained(workdir)
  if config.get("task") != "seq2seq":
    raise ValueError(f"{workdir} holds a {config.get('task')!r} run; translation needs a "
                     "seq2seq one (configs/translate.py).")
  saved = os.path.join(workdir, "tokenizer.json")
  tokenizer = (tokenizer_lib.load_tokenizer(saved) if os.path.exists(saved)
               else pipeline.tokenizer_for(config.data))
  length = int(config.data.context_length)
  run = jax.jit(lambda p, source, rng: model.apply(
      {"params": p}, source, max_length=length, method=model.generate, rng=rng, **options))
  out, rng = [], jax.random.key(seed)
  for start in range(0, len(sentences), batch_size):
    chunk = sentences[start:start + batch_size]
    source = tokenizer.encode(chunk + [""] * (batch_size - len(chunk)), length)
    rng, key = jax.random.split(rng)
    ids = np.asarray(run(params, source, key))[:len(chunk)]
    out.extend(tokenizer.decode(row) for row in ids)
  return out


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  sentences = argv[1:] or [line.strip() for line in sys.stdin if line.strip()]
  if not sentences:
    raise app.UsageError("Give sentences as arguments or on stdin.")
  options = {"strategy": _STRATEGY.value, "batch_size": _BATCH.value, "seed": _SEED.value}
  if _STRATEGY.value == "beam":
    options.update(beam_size=_BEAM_SIZE.value, alpha=_ALPHA.value)
  elif _STRATEGY.value == "sample":
    options.update(top_p=_TOP_P.value)
  for sentence, translation in zip(sentences, translate(_WORKDIR.value, sentences, **options)):
    print(f"{sentence}\n  -> {translation}")


if __name__ == "__main__":
  app.run(main)
