"""Encoder-decoder translation (English -> Spanish) with teacher-forced cross-entropy.

Presets (``--config=configs/translate.py:PRESET``):
  default  a small transformer (Vaswani et al. 2017 base recipe, shrunk for 2 CPU cores).
  tiny     a seconds-long smoke run used by the tests.

Data: ``source`` / ``target`` rows ``BOS tokens EOS PAD...`` from a parallel corpus. The
offline corpus of /work/shared/DATA.md (KJV / Reina-Valera verse pairs) is the intended
``data.name``; its source is owned by the data layer (mmie/data/sources.py).
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
  config.batch_size = 8 if tiny else 64
  config.total_steps = 6 if tiny else 4000
  config.log_every = 2 if tiny else 50
  config.eval_every = 6 if tiny else 500
  config.checkpoint_every = 3 if tiny else 500
  config.keep_checkpoints = 2

  config.model = ml_collections.ConfigDict()
  config.model.name = "seq2seq"
  config.model.vocab_size = 64 if tiny else 8192  # One joint source+target vocabulary.
  config.model.context_length = 16 if tiny else 96
  config.model.width = 32 if tiny else 256
  config.model.encoder_depth = 1 if tiny else 4
  config.model.decoder_depth = 1 if tiny else 4
  config.model.num_heads = 2 if tiny else 4
  config.model.mlp_dim = 64 if tiny else 1024
  config.model.positions = "sinusoidal"  # Vaswani et al.; 'learned' and 'rope' also work.
  config.model.dropout_rate = 0.0 if tiny else 0.1
  config.model.tie_embeddings = True
  config.model.pad_id = 0
  config.model.dtype = "float32"

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "cross_entropy(label_smoothing=0.1)"
  config.loss.transforms = ()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3 if tiny else 5e-4
  config.optimizer.warmup_steps = 2 if tiny else 400
  config.optimizer.end_learning_rate_ratio = 0.0
  config.optimizer.weight_decay = 0.01
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.98
  config.optimizer.eps = 1e-9
  config.optimizer.grad_clip_norm = 1.0

  config.data = ml_collections.ConfigDict()
  config.data.name = "bible_en_es"
  config.data.data_dir = ""
  config.data.context_length = config.model.get_ref("context_length")
  config.data.train_split = "train"
  config.data.eval_split = "validation"

  return config
