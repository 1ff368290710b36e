"""Decoder-only language model on the embedded emoji captions (GPT-style, next token).

Presets (``--config=configs/lm.py:PRESET``):
  default  a small LM that fits the caption set in minutes on 2 CPU cores.
  kjv      an LM of English text: the King James Version (``sword_text``, Debian's
           ``apt-get install sword-text-kjv``), whole chapters held out; the language model
           of the safety pipeline (docs/safety.md).
  tiny     a seconds-long smoke run used by the tests.

The ``lm`` task asks the pipeline for its ``text`` view of the image-text set: the captions as
``BOS tokens EOS PAD...`` rows, with no image in the batch.
"""

import ml_collections

PRESETS = ("default", "kjv", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the LM config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"configs/lm.py: unknown preset {preset!r}; choose one of {PRESETS}.")
  tiny = preset == "tiny"
  if preset == "kjv":
    return _kjv(get_config("default"))

  config = ml_collections.ConfigDict()
  config.task = "lm"
  config.seed = 0
  config.batch_size = 8 if tiny else 64
  config.total_steps = 6 if tiny else 2000
  config.log_every = 2 if tiny else 50
  config.eval_every = 6 if tiny else 500
  config.checkpoint_every = 3 if tiny else 500
  config.keep_checkpoints = 2

  config.model = ml_collections.ConfigDict()
  config.model.name = "lm"
  config.model.vocab_size = 1024  # The emoji tokenizer (data/emoji/tokenizer.json).
  config.model.context_length = 16
  config.model.width = 32 if tiny else 128
  config.model.depth = 1 if tiny else 4
  config.model.num_heads = 2 if tiny else 4
  config.model.num_kv_heads = 1 if tiny else 2  # Grouped-query attention.
  config.model.mlp_dim = 64 if tiny else 512
  config.model.positions = "rope"
  config.model.dropout_rate = 0.0 if tiny else 0.1
  config.model.tie_embeddings = True
  config.model.pad_id = 0
  config.model.dtype = "float32"

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "cross_entropy"
  config.loss.transforms = ()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3 if tiny else 1e-3
  config.optimizer.warmup_steps = 2 if tiny else 100
  config.optimizer.end_learning_rate_ratio = 0.0
  config.optimizer.weight_decay = 0.1
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 1.0

  config.data = ml_collections.ConfigDict()
  config.data.name = "emoji"
  config.data.data_dir = ""
  config.data.context_length = config.model.get_ref("context_length")
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.evals = ml_collections.ConfigDict({
      "lm": {"type": "perplexity", "prefix": "eval/"}})  # every: eval_every.

  return config


def _kjv(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The default LM resized for verses: a 4,096-token BPE of the training chapters, 64 tokens
  (most verses whole), three passes over the 30k training verses in about ten CPU-minutes."""
  config.total_steps = 1500
  config.eval_every = 500
  config.model.vocab_size = 4096
  config.model.context_length = 64
  config.model.width = 128
  config.model.depth = 3
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.mlp_dim = 512
  config.model.dropout_rate = 0.0  # Three epochs do not overfit; RL fine-tuning wants none.
  config.data.name = "sword_text(vocab_size=4096)"
  return config
