"""The prototype's VICReg + contrastive hybrid: NT-Xent first, then blended into VICReg by
weight schedules over the middle of the run (one weighted combination, no special class).
Presets ``default`` and ``tiny``
(configs/vision.py)."""

import ml_collections

from mmie.configs import vision


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = vision.check_preset(arg, "ssl_hybrid")
  config = vision.ssl(preset, views="vicreg", projector=(1024, 1024))
  # References, so `--config.total_steps=N` moves the blend with the run: NT-Xent alone for
  # the first quarter, a linear hand-over through the middle half, VICReg alone at the end.
  steps = config.get_ref("total_steps")
  begin, span = (steps // 4).to_str(), ((steps + 1) // 2).to_str()

  def ramp(init: float, end: float) -> str:
    return (f"linear_schedule(init_value={init}, end_value={end}, transition_steps=" + span
            + ", transition_begin=" + begin + ")")

  config.loss = ml_collections.ConfigDict({"terms": {
      "contrastive": {"name": "ntxent(temperature=0.2)", "weight": ramp(1.0, 0.0)},
      # VICReg's loss is ~25x NT-Xent's at the start: its weight ends at 1/25.
      "vicreg": {"name": "vicreg", "weight": ramp(0.0, 0.04)},
  }})
  return config
