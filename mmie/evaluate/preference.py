"""Held-out preference accuracy: how often a reward model (or a DPO policy) ranks the chosen
response of a pair above the rejected one.

The evaluator runs the run's own task forward (``reward_model`` or ``dpo``, with
``train=False``) over the split's pairs, so it scores exactly what training optimises:

* reward model: ``margin = r(chosen) - r(rejected)``;
* DPO: the implicit reward margin ``(pi_c - ref_c) - (pi_r - ref_r)`` (Rafailov et al. 2023,
  section 5; its sign does not depend on beta).

Metrics: ``accuracy`` (margin > 0; chance 0.5), the mean ``margin`` and, for a reward model,
``bt_loss``, the held-out Bradley-Terry loss ``mean -log sigmoid(margin)``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from mmie.evaluate.context import EvalContext

Evaluator = Callable[[Any], dict[str, float]]


def _margin(outputs: dict[str, jax.Array]) -> jax.Array:
  if "reward_chosen" in outputs:
    return outputs["reward_chosen"] - outputs["reward_rejected"]
  return ((outputs["policy_chosen_logps"] - outputs["reference_chosen_logps"])
          - (outputs["policy_rejected_logps"] - outputs["reference_rejected_logps"]))


def preference(spec: dict[str, Any], ctx: EvalContext) -> Evaluator:
  """Pair accuracy of the run's preference task on ``spec['split']``."""
  from mmie.tasks import get_task  # pylint: disable=g-import-not-at-top  (tasks import evals)
  task = get_task(ctx.config.task)
  if task.data_view != "preference":
    raise ValueError(f"the preference evaluator scores preference tasks (reward_model, dpo);"
                     f" task={ctx.config.task!r} reads {task.data_view!r} batches.")
  split = ctx.split(spec["split"])
  keys = sorted(task.example_batch(ctx.config, 1))
  missing = [k for k in keys if k not in split]
  if missing:
    raise ValueError(f"split {spec['split']!r} lacks {missing} (it has {sorted(split)}); the"
                     f" {task.name} task needs {keys}.")
  columns = {k: np.asarray(split[k]) for k in keys}
  count = len(columns[keys[0]])
  if count == 0:
    raise ValueError(f"split {spec['split']!r} holds no preference pairs.")
  model, size = ctx.model, int(spec["batch_size"])

  def margins(params: Any, *arrays: Any) -> jax.Array:
    batch = dict(zip(keys, arrays))
    outputs = task.forward(model.apply, params, batch, rng=jax.random.key(0), train=False)
    return _margin(outputs)

  margins = ctx.jit(margins)

  def evaluate(params: Any) -> dict[str, float]:
    out = []
    for start in range(0, count, size):
      # The last batch repeats its final row up to ``size``: one compiled shape.
      index = np.minimum(np.arange(start, start + size), count - 1)
      real = min(size, count - start)
      out.append(np.asarray(margins(params, *(columns[k][index] for k in keys)))[:real])
    margin = np.concatenate(out).astype(np.float64)
    metrics = {"accuracy": float(np.mean(margin > 0)), "margin": float(np.mean(margin))}
    if task.name == "reward_model":
      metrics["bt_loss"] = float(np.mean(np.logaddexp(0.0, -margin)))
    return metrics

  evaluate.chance = {"accuracy": 0.5}  # type: ignore[attr-defined]
  return evaluate
