"""The loss algebra: pure heads, optax-style transforms, and the `Loss` the train step calls.

A *head* is a pure function of arrays returning ``(loss, metrics)``; it takes the inputs it
needs by argument name. A *transform* is ``Transform(init, apply)`` rewriting the head's
inputs (adding queue negatives, setting a temperature, turning on blockwise computation) and
carrying a pytree state. A `Loss` bundles a head with its transforms behind the one protocol
the train step uses, so the step never branches on the kind of loss.

Loss state is a dict keyed by transform name (only transforms with state appear), so a
stage that adds or removes a transform can carry the other entries over by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Inputs = dict[str, Any]
Metrics = dict[str, Array]
LossState = Any


class Transform(NamedTuple):
  """A pure input rewrite with state: ``init(example) -> state``, ``apply(...) -> (inputs, state)``.

  ``apply(inputs, state, *, step, rng)`` must be jittable; ``state`` is a pytree that lives in
  ``TrainState.loss_state`` and is therefore sharded and checkpointed with everything else.
  """

  init: Callable[[Inputs], Any]
  apply: Callable[..., tuple[Inputs, Any]]


class Loss(NamedTuple):
  """What the train step calls: ``init(example_inputs) -> loss_state`` and
  ``apply(inputs, loss_state, *, step, rng) -> (loss, metrics, new_loss_state)``."""

  init: Callable[[Inputs], LossState]
  apply: Callable[..., tuple[Array, Metrics, LossState]]


def stateless(fn: Callable[[Inputs], Inputs]) -> Transform:
  """Wraps a pure ``inputs -> inputs`` rewrite as a `Transform` with empty state."""

  def init(example: Inputs) -> tuple[()]:
    del example
    return ()

  def apply(inputs: Inputs, state: Any, *, step: Array, rng: Array) -> tuple[Inputs, Any]:
    del step, rng
    return fn(dict(inputs)), state

  return Transform(init, apply)


def has_state(state: Any) -> bool:
  """True when a transform's state holds at least one array (empty states are not stored)."""
  return bool(jax.tree_util.tree_leaves(state))


def _unique_names(names: Sequence[str]) -> list[str]:
  """Makes transform names unique (`memory_queue`, `memory_queue_2`) so state keys never clash."""
  seen: dict[str, int] = {}
  out = []
  for name in names:
    seen[name] = seen.get(name, 0) + 1
    out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
  return out


def chain(*named: tuple[str, Transform]) -> Transform:
  """Composes transforms left to right; the state is a dict keyed by (unique) transform name.

  Every transform's ``init`` sees the task's example inputs; transforms that keep no state
  get no entry, so the state dict only names what must be checkpointed.
  """
  names = _unique_names([name for name, _ in named])
  transforms = [t for _, t in named]

  def init(example: Inputs) -> dict[str, Any]:
    states = {}
    for name, t in zip(names, transforms):
      state = t.init(example)
      if has_state(state):
        states[name] = state
    return states

  def apply(inputs: Inputs, state: Mapping[str, Any], *, step: Array, rng: Array
            ) -> tuple[Inputs, dict[str, Any]]:
    new_state = {}
    for i, (name, t) in enumerate(zip(names, transforms)):
      sub = state.get(name, ())
      inputs, sub = t.apply(dict(inputs), sub, step=step, rng=jax.random.fold_in(rng, i))
      if has_state(sub):
        new_state[name] = sub
    return inputs, new_state

  return Transform(init, apply)


def call_head(head: Callable[..., tuple[Array, Metrics]], inputs: Mapping[str, Any],
              bound: Mapping[str, Any] | None = None) -> tuple[Array, Metrics]:
  """Calls ``head`` with the inputs its signature names; ``bound`` holds config keyword args.

  Inputs the head does not take are ignored (a task may provide ``logit_bias`` that CLIP
  does not use); a required argument with no input, or one given both by the config and by
  the inputs, is an error naming the keys available.
  """
  bound = dict(bound or {})
  params = inspect.signature(head).parameters
  kwargs: dict[str, Any] = {}
  for name, p in params.items():
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    if name in inputs:
      if name in bound:
        raise ValueError(
            f"loss head {_name(head)!r}: argument {name!r} is given by the config "
            f"({bound[name]!r}) and also by the task/transform inputs; remove it from the config "
            f"call-string or stop providing it as an input.")
      kwargs[name] = inputs[name]
    elif name in bound:
      kwargs[name] = bound[name]
    elif p.default is inspect.Parameter.empty:
      raise KeyError(
          f"loss head {_name(head)!r} needs input {name!r}, which the task did not provide. "
          f"Inputs available: {sorted(inputs)}; config arguments: {sorted(bound)}.")
  return head(**kwargs)


def _name(fn: Callable[..., Any]) -> str:
  return getattr(fn, "__name__", repr(fn))


def make_loss(head: Callable[..., tuple[Array, Metrics]],
              transforms: Sequence[tuple[str, Transform]] = (),
              head_kwargs: Mapping[str, Any] | None = None) -> Loss:
  """Bundles a head, its config keyword arguments and named transforms into a `Loss`."""
  transform = chain(*transforms)
  head_kwargs = dict(head_kwargs or {})

  def init(example_inputs: Inputs) -> dict[str, Any]:
    return transform.init(dict(example_inputs))

  accepted = set(inspect.signature(head).parameters)

  def apply(inputs: Inputs, loss_state: Any, *, step: Array, rng: Array
            ) -> tuple[Array, Metrics, dict[str, Any]]:
    given = set(inputs)
    inputs, new_state = transform.apply(dict(inputs), loss_state, step=step, rng=rng)
    unused = sorted(set(inputs) - given - accepted)
    if unused:
      raise ValueError(
          f"loss transforms {[n for n, _ in transforms]} write input(s) {unused} that head "
          f"{_name(head)!r} does not take (it takes {sorted(accepted)}); the transform would "
          f"have no effect. Remove it or pick a head that uses it.")
    loss, metrics = call_head(head, inputs, head_kwargs)
    metrics = {"loss": loss, **{k: v for k, v in metrics.items() if k != "loss"}}
    return loss, metrics, new_state

  return Loss(init, apply)


def require_state(state: Any, transform: str) -> Any:
  """Fails clearly when a stateful transform is applied without its entry in ``loss_state``."""
  if not has_state(state):
    raise KeyError(f"loss_state has no entry for transform {transform!r}. Build the state with "
                   f"Loss.init(example_inputs), or carry the entry over by name between stages.")
  return state


def carry_over(previous: Any, fresh: Any) -> Any:
  """Loss state for a new stage: each transform's previous entry when it still fits, else fresh.

  Entries are matched by name (``{transform: state}``, and for combined losses
  ``{"terms": {term: {transform: state}}, "weighting": state}``) and carried whole, only when
  their structure, shapes and dtypes are unchanged: a stage that adds a transform keeps the
  state of the others (a memory queue survives a switch to a chunked variant of the head),
  while a resized queue starts empty rather than half-carried.
  """
  previous = previous if isinstance(previous, Mapping) else {}
  if "terms" in fresh or "weighting" in fresh:
    out = {}
    if "terms" in fresh:
      prev_terms = previous.get("terms", {})
      out["terms"] = {k: _carry_entries(prev_terms.get(k, {}), v)
                      for k, v in fresh["terms"].items()}
    if "weighting" in fresh:
      out["weighting"] = _carry_entries({"w": previous.get("weighting")},
                                        {"w": fresh["weighting"]})["w"]
    return out
  return _carry_entries(previous, fresh)


def _carry_entries(previous: Mapping[str, Any], fresh: Mapping[str, Any]) -> dict[str, Any]:
  def fits(old: Any, new: Any) -> bool:
    if jax.tree.structure(old) != jax.tree.structure(new):
      return False
    return all(jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
               for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))

  return {k: previous[k] if k in previous and fits(previous[k], v) else v
          for k, v in fresh.items()}
