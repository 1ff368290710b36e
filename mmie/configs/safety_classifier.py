"""The learned safety classifier: our text tower and a linear head, benign (0) / unsafe (1).

Presets (``--config=configs/safety_classifier.py:PRESET``):
  default  a 2-layer bidirectional tower (width 128) over 64 tokens, 400 steps of 64 (8
           epochs of the set): a few minutes on 2 CPU cores.
  tiny     a seconds-long smoke run used by the tests.

The data is the labelled safety set (mmie/safety/labelled.py), a JSONL file whose rows carry
their split; ``scripts/safety_classifier.py`` builds it at ``runs/safety_classifier/
labelled.jsonl``, this config's default ``data.name``, then trains and compares detectors.
Another file: ``--config.data.name="jsonl(path='my_set.jsonl')"`` (fields ``text`` and
``label``; a missing file fails with its path before anything is prepared). The BPE is trained
on the training split's texts with ``vocab_size=4096``, the tower's embedding rows.
"""

import ml_collections

PRESETS = ("default", "tiny")
DEFAULT_DATA = "jsonl(path='runs/safety_classifier/labelled.jsonl')"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the safety classifier config; ``arg`` names a preset (``tiny`` or ``default``)."""
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"configs/safety_classifier.py: unknown preset {preset!r}; choose one of "
                     f"{PRESETS}.")
  tiny = preset == "tiny"

  config = ml_collections.ConfigDict()
  config.task = "text_classify"
  config.seed = 0
  config.batch_size = 16 if tiny else 64
  config.total_steps = 8 if tiny else 400
  config.log_every = 4 if tiny else 50
  config.eval_every = 8 if tiny else 200
  config.checkpoint_every = 8 if tiny else 200
  config.keep_checkpoints = 1

  config.model = ml_collections.ConfigDict()
  config.model.name = "text_classifier"
  config.model.num_classes = 2  # 0 benign, 1 unsafe (mmie/safety/labelled.py).
  config.model.head_dropout = 0.0 if tiny else 0.1
  config.model.dtype = "float32"
  config.model.text = ml_collections.ConfigDict({
      "name": "text_transformer",
      "vocab_size": 4096,  # jsonl(...)'s default vocab_size: the BPE's ids fit.
      "context_length": 32 if tiny else 64,
      "width": 32 if tiny else 128,
      "depth": 1 if tiny else 2,
      "num_heads": 2 if tiny else 4,
      "mlp_dim": 64 if tiny else 256,
      # Bidirectional with mean pooling: the verdict reads every token, not a causal summary.
      "causal": False,
      "pool": "mean",
      "pad_id": 0,
      "positions": "learned",
      "dropout_rate": 0.0 if tiny else 0.1,
  })

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "cross_entropy"
  config.loss.transforms = ()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3 if tiny else 1e-3
  config.optimizer.warmup_steps = 2 if tiny else 40
  config.optimizer.end_learning_rate_ratio = 0.0
  config.optimizer.weight_decay = 0.05
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 1.0

  config.data = ml_collections.ConfigDict()
  config.data.name = DEFAULT_DATA
  config.data.data_dir = ""
  config.data.context_length = config.model.text.get_ref("context_length")
  config.data.train_split = "train"
  config.data.eval_split = "validation"  # The labelled set's held-out documents.
  config.evals = ml_collections.ConfigDict({
      "eval": {"type": "text_classification", "prefix": "eval/",
               "class_names": ("benign", "unsafe")}})  # every: eval_every.
  return config
