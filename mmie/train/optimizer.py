"""Optax optimizers and learning-rate schedules built from ``config.optimizer``."""

from __future__ import annotations

from typing import Any

import jax
import optax

from mmie.config import ConfigError
from mmie.train import balance as balance_lib, param_rules as param_rules_lib


def build_schedule(opt_config: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup then cosine (or linear, or constant) decay to ``end_learning_rate_ratio``."""
  peak = float(opt_config.learning_rate)
  warmup = int(opt_config.get("warmup_steps", 0))
  end = peak * float(opt_config.get("end_learning_rate_ratio", 0.0))
  kind = opt_config.get("schedule", "cosine")
  decay_steps = max(total_steps - warmup, 1)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
  elif kind == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif kind == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ConfigError(f"optimizer.schedule={kind!r}; expected 'cosine', 'linear' or 'constant'.")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices and kernels only; never on biases, norms or scalars."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def build_optimizer(opt_config: Any, total_steps: int, params: Any,
                    param_rules: Any = None, balance: Any = None
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(tx, schedule)``: parameter rules, modality balancing, global-norm clipping,
  the named optimizer.

  ``params`` (arrays or ShapeDtypeStructs) is needed to check the rules against the real
  parameter names; ``param_rules`` of None trains every parameter at the base rate.
  """
  schedule = build_schedule(opt_config, total_steps)
  core = _named_optimizer(opt_config, schedule)
  rules = param_rules_lib.parse_rules(param_rules)
  clip_norm = opt_config.get("grad_clip_norm", None)
  balancer = balance_lib.from_config(balance, params)  # config.train.balance_modalities.
  # Balancing, then clipping: both over the trainable parameters together.
  across = [balancer] if balancer is not None else []
  if clip_norm:
    across.append(optax.clip_by_global_norm(clip_norm))
  tx = param_rules_lib.apply_rules(core, rules, params, across)
  return tx, schedule


def _option(opt_config: Any, key: str, default: float) -> float:
  """``optimizer.key``, or the optimizer's own default where the config leaves it None."""
  value = opt_config.get(key, None)
  return default if value is None else float(value)


def _named_optimizer(opt_config: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  name = opt_config.name
  wd = float(opt_config.get("weight_decay", 0.0))
  if name == "adamw":
    return optax.adamw(schedule, b1=_option(opt_config, "b1", 0.9),
                       b2=_option(opt_config, "b2", 0.999), eps=_option(opt_config, "eps", 1e-8),
                       weight_decay=wd, mask=decay_mask)
  if name == "lion":
    return optax.lion(schedule, b1=_option(opt_config, "b1", 0.9),
                      b2=_option(opt_config, "b2", 0.99), weight_decay=wd, mask=decay_mask)
  if name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(wd, mask=decay_mask),
        optax.sgd(schedule, momentum=_option(opt_config, "momentum", 0.9)),
    )
  if name == "adafactor":
    return optax.adafactor(schedule, weight_decay_rate=wd or None, weight_decay_mask=decay_mask)
  raise ConfigError(
      f"optimizer.name={name!r} is unknown; expected 'adamw', 'lion', 'sgd' or 'adafactor'."
  )
