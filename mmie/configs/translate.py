"""Encoder-decoder translation (English -> Spanish) with teacher-forced cross-entropy.

Presets (``--config=configs/translate.py:PRESET``):
  default  a small transformer (Vaswani et al. 2017's recipe, shrunk for 2 CPU cores).
  tiny     a seconds-long smoke run used by the tests.

Data: ``data.name`` is a parallel-text source (mmie/data/parallel.py). The default,
``sword``, is the King James Version -> Reina-Valera 1909 Bible (31k verse pairs, whole
chapters held out for validation) from Debian's ``apt-get install sword-text-kjv
sword-text-sparv``; ``--config.data.name="pairs(path='corpus.tsv')"`` trains on your own
``source<TAB>target`` lines. Validation BLEU (sacrebleu) is computed by greedy decoding.
"""

import ml_collections

PRESETS = ("default", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the translation config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"configs/translate.py: unknown preset {preset!r}; choose one of "
                     f"{PRESETS}.")
  tiny = preset == "tiny"

  config = ml_collections.ConfigDict()
  config.task = "seq2seq"
  config.seed = 0
  config.batch_size = 8 if tiny else 32
  config.total_steps = 6 if tiny else 3000
  config.log_every = 2 if tiny else 50
  config.eval_every = 6 if tiny else 1000
  config.checkpoint_every = 3 if tiny else 500
  config.keep_checkpoints = 2

  config.model = ml_collections.ConfigDict()
  config.model.name = "seq2seq"
  # One joint source+target vocabulary: at least the tokenizer's (data.name's vocab_size).
  config.model.vocab_size = 512 if tiny else 8000
  config.model.context_length = 16 if tiny else 64  # 97% of verse pairs fit at 8k BPE.
  config.model.width = 32 if tiny else 256
  config.model.encoder_depth = 1 if tiny else 3
  config.model.decoder_depth = 1 if tiny else 3
  config.model.num_heads = 2 if tiny else 4
  config.model.mlp_dim = 64 if tiny else 1024
  config.model.positions = "sinusoidal"  # Vaswani et al.; 'learned' and 'rope' also work.
  config.model.dropout_rate = 0.0  # A few epochs on CPU; use 0.1 for long runs.
  config.model.tie_embeddings = True
  config.model.pad_id = 0
  config.model.dtype = "float32"

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "cross_entropy(label_smoothing=0.1)"
  config.loss.transforms = ()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 2 if tiny else 300
  config.optimizer.end_learning_rate_ratio = 0.0
  config.optimizer.weight_decay = 0.01
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.98
  config.optimizer.eps = 1e-9
  config.optimizer.grad_clip_norm = 1.0

  config.data = ml_collections.ConfigDict()
  config.data.name = "sword(vocab_size=512)" if tiny else "sword"
  config.data.data_dir = ""
  config.data.context_length = config.model.get_ref("context_length")
  config.data.train_split = "train"
  config.data.eval_split = "validation"

  config.evals = ml_collections.ConfigDict({
      "bleu": {"type": "bleu", "prefix": "eval/",  # every: eval_every (overrides follow).
               "batch_size": 16 if tiny else 128}})

  return config
