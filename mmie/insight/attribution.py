"""Gradient attribution for the two towers: which pixels, patches and tokens drive a score.

* gradient saliency (Simonyan et al. 2014): ``|d score / d pixel|``, max over channels;
* integrated gradients (Sundararajan et al. 2017): ``(x - x') * mean_a grad f(x' + a (x - x'))``
  over a midpoint Riemann sum; attributions add up to ``f(x) - f(x')`` (completeness);
* token attribution: integrated gradients on the text tower's token embeddings (the model is
  untouched: Flax's ``intercept_methods`` swaps the ``token_embed`` output), summed over width;
* pair attribution: for one image and one caption, the patches and the tokens that drive their
  cosine similarity.

The image baseline defaults to zeros, which in normalised pixel space is the mean-colour image;
the token baseline is the zero embedding.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ScoreFn = Callable[[jax.Array], jax.Array]  # [B, ...] -> [B] scores.


def _unit(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def saliency(score_fn: ScoreFn, inputs: jax.Array) -> jax.Array:
  """``|grad|`` of each example's score w.r.t. its input, max over the last (channel) axis."""
  grads = jax.grad(lambda x: jnp.sum(score_fn(x)))(inputs)
  return jnp.max(jnp.abs(grads), axis=-1)


def integrated_gradients(score_fn: ScoreFn, inputs: jax.Array, baseline: jax.Array | None = None,
                         steps: int = 32) -> jax.Array:
  """Integrated gradients of ``score_fn`` (per-example scores) at ``inputs``, same shape.

  ``steps`` midpoint samples on the straight path from ``baseline`` (default zeros); one
  gradient per sample, run sequentially (``lax.map``) so memory does not grow with ``steps``.
  """
  if steps < 1:
    raise ValueError(f"integrated_gradients: steps={steps} must be >= 1.")
  baseline = jnp.zeros_like(inputs) if baseline is None else jnp.broadcast_to(baseline,
                                                                               inputs.shape)
  delta = inputs - baseline
  grad_fn = jax.grad(lambda x: jnp.sum(score_fn(x)))
  alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
  grads = jax.lax.map(lambda a: grad_fn(baseline + a * delta), alphas)
  return delta * jnp.mean(grads, axis=0)


def patch_sums(pixel_attribution: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] pixel attributions -> [B, H/p, W/p] per-patch sums (keeps completeness)."""
  b, h, w, c = pixel_attribution.shape
  if h % patch_size or w % patch_size:
    raise ValueError(f"patch_sums: image {h}x{w} is not divisible by patch_size={patch_size}.")
  x = pixel_attribution.reshape(b, h // patch_size, patch_size, w // patch_size, patch_size, c)
  return x.sum(axis=(2, 4, 5))


def image_score_fn(model: Any, params: Any, text_emb: jax.Array) -> ScoreFn:
  """Images -> cosine similarity of each image's embedding with ``text_emb`` ([D] or [B, D])."""
  target = _unit(jnp.asarray(text_emb))

  def score(images: jax.Array) -> jax.Array:
    emb = _unit(model.apply({"params": params}, images, method=type(model).encode_image))
    return jnp.sum(emb * target, axis=-1)

  return score


def token_embeddings(model: Any, params: Any, tokens: jax.Array) -> jax.Array:
  """The text tower's token embeddings [B, L, width] (the ``token_embed`` output)."""
  _, state = model.apply({"params": params}, tokens, method=type(model).encode_text,
                         capture_intermediates=lambda m, name: (
                             name == "__call__" and getattr(m, "name", "") == "token_embed"),
                         mutable=["intermediates"])
  found = jax.tree.leaves(state["intermediates"])
  if not found:
    raise ValueError("The text tower has no 'token_embed' module to attribute tokens to.")
  return found[0]


def text_score_fn(model: Any, params: Any, tokens: jax.Array,
                  image_emb: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """Token embeddings [B, L, width] -> cosine similarity of the caption with ``image_emb``.

  ``tokens`` still decide pooling and masks; only the embeddings the encoder sees change.
  """
  target = _unit(jnp.asarray(image_emb))

  def score(embeddings: jax.Array) -> jax.Array:
    def swap(next_fn, args, kwargs, context):
      out = next_fn(*args, **kwargs)
      if (context.method_name == "__call__" and isinstance(context.module, nn.Embed)
          and context.module.name == "token_embed"):
        return embeddings.astype(out.dtype)
      return out

    with nn.intercept_methods(swap):
      emb = model.apply({"params": params}, tokens, method=type(model).encode_text)
    return jnp.sum(_unit(emb) * target, axis=-1)

  return score


def token_attribution(model: Any, params: Any, tokens: jax.Array, image_emb: jax.Array,
                      steps: int = 32) -> jax.Array:
  """[B, L] integrated-gradients attribution of each token to its similarity with an image."""
  embeddings = token_embeddings(model, params, tokens)
  ig = integrated_gradients(text_score_fn(model, params, tokens, image_emb), embeddings,
                            steps=steps)
  return ig.sum(axis=-1)


def embed_pair(model: Any, params: Any, images: jax.Array,
               tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Unit image and text embeddings of a batch of pairs."""
  variables = {"params": params}
  return (_unit(model.apply(variables, images, method=type(model).encode_image)),
          _unit(model.apply(variables, tokens, method=type(model).encode_text)))


def pair_attribution(model: Any, params: Any, images: jax.Array, tokens: jax.Array, *,
                     patch_size: int, steps: int = 32) -> dict[str, np.ndarray]:
  """What drives each (image, caption) pair's similarity.

  Returns ``similarity`` [B]; ``patch`` [B, H/p, W/p]: integrated gradients of the similarity
  w.r.t. the image (text fixed), summed per patch; ``token`` [B, L]: the same w.r.t. the
  caption's token embeddings (image fixed); ``patch_baseline`` and ``token_baseline``: the
  similarity at each baseline, so ``patch.sum() ~= similarity - patch_baseline``.
  """
  image_emb, text_emb = embed_pair(model, params, images, tokens)
  image_fn = image_score_fn(model, params, text_emb)
  patch = patch_sums(integrated_gradients(image_fn, images, steps=steps), patch_size)
  embeddings = token_embeddings(model, params, tokens)
  text_fn = text_score_fn(model, params, tokens, image_emb)
  token = integrated_gradients(text_fn, embeddings, steps=steps).sum(axis=-1)
  return {
      "similarity": np.asarray(jnp.sum(image_emb * text_emb, axis=-1)),
      "patch": np.asarray(patch), "token": np.asarray(token),
      "patch_baseline": np.asarray(image_fn(jnp.zeros_like(images))),
      "token_baseline": np.asarray(text_fn(jnp.zeros_like(embeddings))),
  }
