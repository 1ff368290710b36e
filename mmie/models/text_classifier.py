"""A text classifier: our text tower (``TextTransformer``) and a linear head to class logits.

``model.name = "text_classifier"``; ``model.text`` is a text tower section as in the two-tower
model (docs/models.md), ``model.num_classes`` the number of classes. The safety classifier
(configs/safety_classifier.py) is one: a bidirectional tower with mean pooling reading the
whole text, and two classes (benign, unsafe). ``encode_text`` returns the tower's pooled
features, before the head, for probes and embeddings.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmie import schema as schema_lib
from mmie.models import builder
from mmie.models import layers

Array = jnp.ndarray


class TextClassifier(nn.Module):
  """``__call__(tokens, train)`` -> float32 logits [B, num_classes] of the pooled text.

  The head reads float32-cast features and starts at zero, so an untrained classifier says
  "uniform" rather than a random preference (as ``ImageEncoder``'s classifier does).
  """

  tower: nn.Module
  num_classes: int
  head_dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  def setup(self):
    self.dropout = nn.Dropout(self.head_dropout)
    self.classifier = nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier",
        kernel_init=layers.partitioned(nn.initializers.zeros, ("embed", None)),
        bias_init=layers.partitioned(nn.initializers.zeros, (None,)))

  def encode_text(self, tokens: Array, train: bool = False) -> Array:
    """Pooled text features [B, width], float32."""
    return self.tower(tokens, train=train).astype(jnp.float32)

  def __call__(self, tokens: Array, train: bool = False) -> Array:
    features = self.dropout(self.encode_text(tokens, train=train), deterministic=not train)
    return self.classifier(features).astype(jnp.float32)


MODEL_KEYS: schema_lib.Schema = {
    "name": builder.Field((str,)),
    "text": builder.TOWER,
    "num_classes": builder.Field((int,), builder.REQUIRED, lambda n: n >= 2, ">= 2"),
    "head_dropout": builder.Field((int, float), 0.0, lambda p: 0 <= p < 1, "in [0, 1)"),
    "dtype": builder.Field((str,), "float32"), "param_dtype": builder.Field((str,), "float32"),
    "remat": builder.REMAT, "scan_layers": builder.Field((bool,), False),
    "attention": builder.Field((str,), "xla"),
}


def schema(model_config: Any) -> dict[str, Any]:
  """``MODEL_KEYS`` with the text tower's own keys under ``text`` (for filling defaults)."""
  keys = dict(MODEL_KEYS)
  text = builder._as_dict(model_config).get("text") or {}  # pylint: disable=protected-access
  keys["text"] = builder.TOWER_SCHEMAS.get(builder._as_dict(text).get("name"), {})  # noqa
  return keys


def build_text_classifier(model_config: Any) -> TextClassifier:
  """``config.model`` with name='text_classifier' -> ``TextClassifier``."""
  model = builder.resolve_keys(model_config, MODEL_KEYS, "model")
  tower = builder.lookup(builder.TEXT_TOWERS, model["text"], "model.text")(
      model["text"], model, "model.text")
  if getattr(tower, "pool", "mean") == "none":
    raise schema_lib.ConfigError("Config key model.text.pool='none' gives token sequences; a "
                                 "text_classifier needs pooled features: use 'mean', 'cls' or "
                                 "'eos' (with eos_id).")
  return TextClassifier(
      tower=tower, num_classes=int(model["num_classes"]),
      head_dropout=float(model["head_dropout"]),
      dtype=builder.parse_dtype(model["dtype"], "model.dtype"),
      param_dtype=builder.parse_dtype(model["param_dtype"], "model.param_dtype"))
