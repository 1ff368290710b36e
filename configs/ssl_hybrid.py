"""The prototype's VICReg + contrastive hybrid: NT-Xent first, then blended into VICReg by
weight schedules over the middle of the run (one weighted combination, no special class).
Presets ``default`` and ``tiny``
(configs/vision.py)."""

import ml_collections

from configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = vision.check_preset(arg, "ssl_hybrid")
  config = vision.ssl(preset, views="vicreg", projector=(1024, 1024))
  begin, span = config.total_steps // 4, config.total_steps // 2
  ramp = "linear_schedule(init_value={}, end_value={}, transition_steps={}, transition_begin={})"
  config.loss = ml_collections.ConfigDict({"terms": {
      "contrastive": {"name": "ntxent(temperature=0.2)",
                      "weight": ramp.format(1.0, 0.0, max(span, 1), begin)},
      # VICReg's loss is ~25x NT-Xent's at the start: its weight ends at 1/25.
      "vicreg": {"name": "vicreg", "weight": ramp.format(0.0, 0.04, max(span, 1), begin)},
  }})
  return config
