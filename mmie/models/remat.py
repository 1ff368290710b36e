"""Rematerialisation policies: which activations a block keeps for the backward pass.

``model.remat`` (and a tower's ``remat``) is a policy name, or a bool for the two ends:

  none  (False)  keep every activation: the most memory, no recomputation.
  full  (True)   keep only each block's input; recompute the whole block in the backward
                 pass: the least memory, about one more forward pass of compute.
  dots           keep the outputs of weight matmuls (query/key/value and output projections,
                 both MLP layers); recompute norms, activation functions, attention scores and
                 softmax, which are cheap in FLOPs but as large as the projections in memory.

The figures for each preset come from ``python -m mmie.train.aot`` (docs/scaling.md).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

POLICIES = ("none", "full", "dots")


def is_policy(value: Any) -> bool:
  """Whether ``value`` is a ``remat`` config value: a bool or one of ``POLICIES``."""
  return isinstance(value, bool) or value in POLICIES


def policy_name(remat: bool | str | None) -> str:
  """A ``remat`` config value as a policy name: False/None -> 'none', True -> 'full'."""
  if remat is None or remat is False:
    return "none"
  if remat is True:
    return "full"
  if remat not in POLICIES:
    raise ValueError(f"remat={remat!r} is not a rematerialisation policy; choose a bool or one "
                     f"of {POLICIES}.")
  return remat


def rematerialised(cls: type[nn.Module], remat: bool | str | None, *,
                   static_argnums: tuple[int, ...], prevent_cse: bool = True) -> Any:
  """``cls`` under ``nn.remat`` with ``remat``'s policy; ``cls`` itself for 'none'.

  ``static_argnums`` count ``self`` as 0. ``prevent_cse=False`` under ``nn.scan``, whose loop
  already keeps XLA from merging the recomputation with the forward pass.
  """
  name = policy_name(remat)
  if name == "none":
    return cls
  policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if name == "dots" else None
  return nn.remat(cls, static_argnums=static_argnums, prevent_cse=prevent_cse, policy=policy)
