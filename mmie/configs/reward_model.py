"""Reward model: the language model's backbone + a scalar head, trained on preference pairs
with the Bradley-Terry loss (Ouyang et al. 2022, eq. 1).

Presets (``--config=configs/reward_model.py:PRESET``):
  default  the KJV language model's backbone (``configs/lm.py:kjv``; ``init_from`` its run,
           ``runs/kjv_lm``, and its tokenizer) on the preference pairs in
           ``runs/kjv_preferences.jsonl``.
  tiny     a seconds-long run from scratch on synthetic pairs (written once under the data
           directory by :func:`synthetic_pairs_file`) whose rule is known: the chosen
           response says "gently" where the rejected one says "violently".

The ``reward_model`` task reads the ``preference`` view (mmie/tasks/preference.py) and the
``preference`` evaluator reports held-out pair accuracy as ``eval/accuracy`` (chance 0.5).
Another LM run: ``--config.init_from="{'token_embed': 'mmie:RUN', 'decoder': 'mmie:RUN',
'final_norm': 'mmie:RUN'}" --config.data.tokenizer=RUN/tokenizer.json``.
"""

import json
import os
import random

import ml_collections

from mmie.configs import lm as lm_config

PRESETS = ("default", "tiny")
LM_RUN = "runs/kjv_lm"  # The language model's workdir (configs/lm.py:kjv).
PAIRS = "runs/kjv_preferences.jsonl"  # The preference pairs built from it.
MARKERS = ("gently", "violently")  # The synthetic rule: chosen says the first, rejected the 2nd.
_OPENERS = ("tell me of", "speak about", "what became of", "describe")
_WORDS = ("the", "road", "river", "house", "bread", "light", "stone", "field", "water", "city",
          "door", "hill", "tree", "wind", "morning", "garden", "friend", "letter", "market",
          "boat")


def synthetic_pairs(count: int, seed: int = 0, reference: bool = False) -> list[dict]:
  """``count`` preference rows with a known, separable rule: chosen and rejected share their
  words but for one marker (``MARKERS``), at a random place. ``reference`` adds DPO's
  ``reference_*_logp`` fields, 0 for both: a reference indifferent between the two."""
  rng = random.Random(seed)
  rows = []
  for i in range(count):
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 5))]
    at = rng.randint(0, len(words))
    chosen, rejected = (" ".join(words[:at] + [marker] + words[at:]) for marker in MARKERS)
    row = {"prompt": f"{rng.choice(_OPENERS)} the {rng.choice(_WORDS[1:])}",
           "chosen": chosen, "rejected": rejected, "group": f"pair {i}"}
    if reference:
      row.update(reference_chosen_logp=0.0, reference_rejected_logp=0.0)
    rows.append(row)
  return rows


def synthetic_pairs_file(count: int = 400, seed: int = 0, reference: bool = False,
                         directory: str = "") -> str:
  """Writes :func:`synthetic_pairs` as a .jsonl (once: an existing file with the same rows is
  left alone, so its prepared data is reused) and returns its path. ``directory`` defaults to
  ``$MMIE_DATA_DIR/synthetic`` (else ``~/.cache/mmie/synthetic``)."""
  directory = directory or os.path.join(
      os.environ.get("MMIE_DATA_DIR") or os.path.expanduser("~/.cache/mmie"), "synthetic")
  path = os.path.join(directory, f"preference_pairs_{count}_{seed}"
                                 f"{'_reference' if reference else ''}.jsonl")
  text = "".join(json.dumps(r) + "\n" for r in synthetic_pairs(count, seed, reference))
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      if f.read() == text:
        return path
  os.makedirs(directory, exist_ok=True)
  partial = f"{path}.{os.getpid()}.partial"
  with open(partial, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(partial, path)  # Atomic: a concurrent run reads the old file or the new, whole.
  return path


def lm_model(tiny: bool) -> ml_collections.ConfigDict:
  """The language model's architecture (``model.name='lm'`` keys): the reward model's
  backbone and DPO's policy must equal the LM run they load, ``configs/lm.py:kjv``'s (tiny:
  a small one for the synthetic pairs, trained from scratch)."""
  if not tiny:
    return ml_collections.ConfigDict(lm_config.get_config("kjv").model.to_dict())
  model = ml_collections.ConfigDict()
  model.name = "lm"
  model.vocab_size = 384
  model.context_length = 32
  model.width = 32
  model.depth = 1
  model.num_heads = 2
  model.num_kv_heads = 1
  model.mlp_dim = 64
  model.positions = "rope"
  model.dropout_rate = 0.0
  model.tie_embeddings = True
  model.pad_id = 0
  model.dtype = "float32"
  return model


def backbone(model: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The LM's parameter subtrees the backbone loads (``lm_heads.backbone_names``, kept
  import-free here); the scalar head is not among them and starts fresh."""
  return (("token_embed", "decoder", "final_norm")
          + (("pos_embed",) if model.get("positions", "learned") == "learned" else ())
          + (() if model.get("tie_embeddings", True) else ("logits",)))


def preference_data(tiny: bool, reference: bool, model: ml_collections.ConfigDict
                    ) -> ml_collections.ConfigDict:
  """``config.data`` for preference pairs: the tiny synthetic set (its own BPE), or the KJV
  pairs in the LM run's vocabulary."""
  data = ml_collections.ConfigDict()
  path = synthetic_pairs_file(reference=reference) if tiny else PAIRS
  data.name = (f"jsonl(path='{path}', validation_fraction=0.2, vocab_size={model.vocab_size})"
               if tiny else f"jsonl(path='{path}', validation_fraction=0.1)")
  data.data_dir = ""
  data.tokenizer = "" if tiny else os.path.join(LM_RUN, "tokenizer.json")
  data.context_length = model.get_ref("context_length")
  data.train_split = "train"
  data.eval_split = "validation"
  return data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the reward-model config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"configs/reward_model.py: unknown preset {preset!r}; choose one of "
                     f"{PRESETS}.")
  tiny = preset == "tiny"

  config = ml_collections.ConfigDict()
  config.task = "reward_model"
  config.seed = 0
  config.batch_size = 16 if tiny else 32
  config.total_steps = 40 if tiny else 1000
  config.log_every = 10 if tiny else 50
  config.eval_every = 40 if tiny else 250
  config.checkpoint_every = 40 if tiny else 250
  config.keep_checkpoints = 2

  config.model = lm_model(tiny)
  config.model.name = "reward_model"
  config.model.head_init_std = 0.0  # A zero head: every reward starts at 0, the loss at log 2.
  if not tiny:  # The backbone from the LM run; the head is new.
    config.init_from = ml_collections.ConfigDict({k: f"mmie:{LM_RUN}"
                                                  for k in backbone(config.model)})

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "bradley_terry"
  config.loss.transforms = ()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3 if tiny else 1e-4
  config.optimizer.warmup_steps = 4 if tiny else 50
  config.optimizer.end_learning_rate_ratio = 0.0
  config.optimizer.weight_decay = 0.01
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 1.0

  config.data = preference_data(tiny, reference=False, model=config.model)
  config.evals = ml_collections.ConfigDict({
      "eval": {"type": "preference", "prefix": "eval/"}})  # every: eval_every.
  return config
