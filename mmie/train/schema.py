"""Schemas of the sections the training engine owns: ``optimizer``, ``train``, ``mesh`` and
each entry of ``stages``. JAX-free, so the command line is checked before anything loads.

Optimizer hyperparameters whose good default depends on the optimizer (``b2`` is 0.999 for
AdamW but 0.99 for Lion) default to None here and are filled by ``mmie/train/optimizer.py``.
"""

from __future__ import annotations

from mmie.schema import Field, Section, non_negative, one_of, positive

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_SEQ = (list, tuple)
_unit = lambda x: 0 <= x < 1

OPTIMIZER_NAMES = ("adamw", "sgd", "adafactor", "lion")
# config.init_from sources (mmie/models/pretrained.py loads them).
INIT_SOURCE_KINDS = ("hf", "mmie", "minilm", "bert", "vit")
INIT_SOURCE_FORMS = "'hf:PATH', 'mmie:WORKDIR[@STEP]', 'minilm', 'bert:PATH' or 'vit:PATH'"


def init_source_ok(source: object) -> bool:
  """Whether ``source`` has one of INIT_SOURCE_FORMS (no file is read)."""
  kind, _, path = str(source).partition(":")
  return isinstance(source, str) and (
      (kind == "minilm" and not path) or (kind in INIT_SOURCE_KINDS and kind != "minilm"
                                          and bool(path)))


def init_from_ok(value: object) -> bool:
  """``config.init_from``: one source, or a {subtree: source} mapping of them."""
  if isinstance(value, str):
    return init_source_ok(value)
  items = getattr(value, "items", None)
  return items is not None and all(isinstance(k, str) and init_source_ok(v)
                                   for k, v in items())

SCHEDULES = ("cosine", "linear", "constant")

OPTIMIZER = {
    "name": Field((str,), "adamw", *one_of(*OPTIMIZER_NAMES)),
    "learning_rate": Field(_NUM, 1e-3, positive, "a positive number"),
    "warmup_steps": Field((int,), 0, non_negative, ">= 0"),
    "schedule": Field((str,), "cosine", *one_of(*SCHEDULES)),
    "end_learning_rate_ratio": Field(_NUM, 0.0, lambda x: 0 <= x <= 1, "in [0, 1]"),
    "weight_decay": Field(_NUM, 0.0, non_negative, ">= 0"),
    "b1": Field(_OPT_NUM, None, _unit, "in [0, 1); None: the optimizer's own default"),
    "b2": Field(_OPT_NUM, None, _unit, "in [0, 1); None: the optimizer's own default"),
    "eps": Field(_OPT_NUM, None, positive, "> 0; None: the optimizer's own default"),
    "momentum": Field(_OPT_NUM, None, _unit, "in [0, 1) (sgd); None: 0.9"),
    "grad_clip_norm": Field(_OPT_NUM, None, positive, "None (no clipping) or > 0"),
}

EARLY_STOPPING = {
    "metric": Field((str, type(None)), None, allowed="a logged metric such as"
                    " 'eval/i2t_recall@5'; None turns early stopping off"),
    "mode": Field((str,), "max", *one_of("max", "min")),
    "patience": Field((int,), 3, positive, ">= 1 evaluations"),
    "min_delta": Field(_NUM, 0.0, non_negative, ">= 0"),
}

TRAIN = {
    "on_nonfinite": Field((str,), "skip", *one_of("skip", "stop")),
    "early_stopping": Section(EARLY_STOPPING, nullable=True),
    "profile_steps": Field(_SEQ + (type(None),), None,
                           lambda x: len(x) == 2 and 0 <= x[0] < x[1],
                           "None or (start, end) global steps with start < end"),
    "ema_decay": Field(_OPT_NUM, None, lambda x: 0 < x < 1,
                       "None (no EMA) or in (0, 1), e.g. 0.999 for a momentum encoder"),
    # Evaluate the EMA copy (Polyak averaging) instead of the trained weights; needs ema_decay.
    "evaluate_ema": Field((bool,), False),
    "grad_accum_steps": Field((int,), 1, positive, ">= 1 micro-batches per step"),
    "accumulation": Field((str,), "mean", *one_of("mean", "gradcache")),
    "balance_modalities": Section({}, open=True, nullable=True),
}

MESH = {
    "data": Field((int,), -1, lambda x: x == -1 or x > 0, "-1 (the remaining devices) or > 0"),
    "fsdp": Field((int,), 1, lambda x: x == -1 or x > 0, "-1 (the remaining devices) or > 0"),
    "model": Field((int,), 1, lambda x: x == -1 or x > 0, "-1 (the remaining devices) or > 0"),
}

# A stage's own keys; a missing one falls back to the top-level section of the same name.
STAGE = {
    "total_steps": Field((int,), check=positive, allowed="a positive number of steps"),
    "loss": Section({}, open=True),
    "optimizer": Section(OPTIMIZER, nullable=True),
    "param_rules": Field(_SEQ + (type(None),), None,
                         allowed="a list of (regex, 'frozen' | lr multiplier)"),
}
