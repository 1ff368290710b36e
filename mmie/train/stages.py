"""Multi-stage curricula as data: ``config.stages`` holds one section per stage, by name, and
``config.stage_order`` the names in training order (a ConfigDict sorts its keys, and a frozen
config cannot hold sections inside a list, hence the separate order).

Each stage trains for its own ``total_steps`` with its own ``loss``, ``optimizer`` (and
schedule) and ``param_rules``; missing keys fall back to the top-level config. Between stages
the parameters carry over, the optimizer state is rebuilt for the new rules, and the loss
state keeps the entries of transforms the new stage still uses (by name). A config without
``stages`` is one stage made of its top-level sections.

Stage ``k`` covers global steps ``(start_k, end_k]``: a checkpoint taken at a boundary step
belongs to the stage that just ended, so resuming there enters the next stage afresh.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mmie import schema
from mmie.schema import ConfigError
from mmie.train.schema import STAGE



@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  name: str
  start: int  # Global step at which the stage begins (exclusive of its first update).
  end: int    # Global step after its last update.
  loss: Any
  optimizer: Any
  param_rules: Any

  @property
  def total_steps(self) -> int:
    return self.end - self.start


def resolve_stages(config: Any) -> list[Stage]:
  """The config's stages with absolute step ranges, validated."""
  default_rules = config.get("param_rules", None)
  raw = config.get("stages", None)
  if not raw:
    return [Stage(0, "main", 0, config.total_steps, config.loss, config.optimizer,
                  default_rules)]
  order = tuple(config.get("stage_order", None) or ())
  if sorted(order) != sorted(raw.keys()):
    raise ConfigError(f"stage_order={order} must name every stage in config.stages"
                      f" ({sorted(raw.keys())}) exactly once.")
  stages = []
  start = 0
  for i, name in enumerate(order):
    section = raw[name]
    if not hasattr(section, "keys"):
      raise ConfigError(f"Config key stages.{name} must be a section with {sorted(STAGE)}.")
    schema.check(section, STAGE, f"stages.{name}.")
    steps = section["total_steps"]
    stages.append(Stage(
        index=i,
        name=name,
        start=start,
        end=start + steps,
        loss=section.get("loss", config.loss),
        optimizer=section.get("optimizer", config.optimizer),
        param_rules=section.get("param_rules", default_rules),
    ))
    start += steps
  if start != config.total_steps:
    raise ConfigError(f"total_steps={config.total_steps} but the stages' total_steps add up to"
                      f" {start}; make them agree.")
  return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
  """The stage a state at global ``step`` belongs to (boundaries belong to the earlier one)."""
  for stage in stages:
    if step <= stage.end:
      return stage
  return stages[-1]
