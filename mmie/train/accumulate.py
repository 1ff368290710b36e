"""Gradients of a batch: whole, as a mean over micro-batches, or GradCache-style.

Each function returns ``(loss, metrics, new_loss_state, grads)`` for the whole batch.

* ``whole``: one forward/backward pass.
* ``mean``: ``k`` micro-batches in a ``lax.scan``, gradients averaged. Exact for losses that
  are a mean over examples (classification, LM); for contrastive losses each micro-batch only
  sees its own negatives, so it is *not* the full-batch gradient.
* ``gradcache``: (Gao et al. 2021) embed every micro-batch without gradients, compute the loss
  over all cached embeddings (every negative kept), then backpropagate the loss's gradient
  with respect to each micro-batch's embeddings through that micro-batch's forward pass. The
  result equals the full-batch gradient while activations are held for one micro-batch only.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

# forward(params, batch, micro_index): the index decorrelates each micro-batch's randomness.
Forward = Callable[[Any, Mapping[str, jax.Array], jax.Array], dict[str, jax.Array]]
LossApply = Callable[[dict[str, jax.Array], Any], tuple[jax.Array, dict, Any]]


def _split(batch: Mapping[str, jax.Array], k: int) -> dict[str, jax.Array]:
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"Batch of {x.shape[0]} does not split into {k} micro-batches; set"
                       " batch_size to a multiple of train.grad_accum_steps.")
    return x.reshape((k, x.shape[0] // k) + x.shape[1:])
  return {name: split(x) for name, x in batch.items()}


def whole(params: Any, batch: Mapping[str, jax.Array], loss_state: Any, forward: Forward,
          loss_apply: LossApply, index: Any = 0):
  def loss_fn(p):
    value, metrics, new_state = loss_apply(forward(p, batch, index), loss_state)
    return value, (metrics, new_state)
  (value, (metrics, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return value, metrics, new_state, grads


def mean(params: Any, batch: Mapping[str, jax.Array], loss_state: Any, forward: Forward,
         loss_apply: LossApply, k: int):
  micro = _split(batch, k)

  def body(carry, xs):
    index, mb = xs
    grads_sum, state = carry
    value, metrics, state, grads = whole(params, mb, state, forward, loss_apply, index)
    return (jax.tree.map(jnp.add, grads_sum, grads), state), (value, metrics)

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads, new_state), (values, metrics) = jax.lax.scan(body, (zeros, loss_state),
                                                       (jnp.arange(k), micro))
  grads = jax.tree.map(lambda g: g / k, grads)
  return values.mean(), jax.tree.map(jnp.mean, metrics), new_state, grads


def _is_batched(x: jax.Array, micro_size: int) -> bool:
  return x.ndim >= 1 and x.shape[0] == micro_size


def gradcache(params: Any, batch: Mapping[str, jax.Array], loss_state: Any, forward: Forward,
              loss_apply: LossApply, k: int):
  micro = _split(batch, k)
  micro_size = next(iter(micro.values())).shape[1]

  # 1. Embed every micro-batch, no activations kept.
  indices = jnp.arange(k)
  cached = jax.lax.map(lambda xs: forward(params, xs[1], xs[0]), (indices, micro))
  batched = {n: _is_batched(x[0], micro_size) for n, x in cached.items()}
  inputs = {n: x.reshape((-1,) + x.shape[2:]) if batched[n] else x[0]
            for n, x in cached.items()}

  # 2. The loss over all cached embeddings, and its gradient with respect to them.
  def loss_of_inputs(inp):
    value, metrics, new_state = loss_apply(inp, loss_state)
    return value, (metrics, new_state)
  (value, (metrics, new_state)), d_inputs = jax.value_and_grad(
      loss_of_inputs, has_aux=True)(inputs)

  # 3. Backpropagate each micro-batch's share. Shared outputs (a logit scale computed from
  # params alone) take their whole cotangent in micro-batch 0 only: their dependence on the
  # params is the same in every micro-batch.
  cotangents = {n: d.reshape((k, micro_size) + d.shape[1:]) if batched[n]
                else jnp.zeros((k,) + d.shape, d.dtype).at[0].set(d)
                for n, d in d_inputs.items()}

  def body(grads_sum, xs):
    index, mb, cot = xs  # The same index as the embedding pass: the same dropout masks.
    _, vjp = jax.vjp(lambda p: forward(p, mb, index), params)
    (grads,) = vjp(cot)
    return jax.tree.map(jnp.add, grads_sum, grads), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, _ = jax.lax.scan(body, zeros, (indices, micro, cotangents))
  return value, metrics, new_state, grads
