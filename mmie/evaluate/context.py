"""What the evaluators of one run share: loaded splits, compiled embedders, cached embeddings.

Several evaluators on the same schedule (retrieval, zero-shot, diagnostics) read the same
embeddings; the context computes them once per parameter object and split, and compiles each
embedder once per run, not once per evaluation.

Given the run's mesh, evaluation runs on the sharded train state as it is, on every host:
every model call goes through :meth:`EvalContext.jit`, which splits each input batch over the
mesh's batch axes and returns replicated outputs, so no host ever gathers the parameters
(an FSDP-sized model need not fit one device or one host) and only model outputs
(embeddings, logits, token ids) leave the devices. Images are decoded where they are placed:
a split's image column is a ``LazyImages`` and each host decodes only the rows of its own
devices, as it reads only its share of the training data; the small columns (tokens, labels,
captions) are read whole, and every host computes the same metrics.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from mmie import sharding
from mmie.data.records import LazyImages
from mmie.models import layers

SplitLoader = Callable[[str], dict[str, Any]]
PromptEncoder = Callable[[Sequence[str], Sequence[str]], np.ndarray]
Decoder = Callable[[Sequence[int]], str]
# Batches dispatched ahead of the one being read back: the host prepares the next batch while
# the devices compute this one; two bound the device memory held by waiting outputs.
_IN_FLIGHT = 2


def apply_in_batches(fn: Callable[[np.ndarray], jax.Array], inputs: np.ndarray,
                     batch_size: int) -> np.ndarray:
  """Applies ``fn`` over ``inputs`` in batches; returns the outputs as float32 rows.

  The last batch is padded to ``batch_size`` so only one shape is ever compiled; pass an
  already-jitted ``fn`` (wrapping it here would recompile it at every call). ``inputs`` may be
  a ``LazyImages`` column, whose batches reach ``fn`` undecoded: ``fn`` then comes from
  :meth:`EvalContext.jit`, which decodes only the rows this host's devices hold.
  """
  if batch_size < 1:
    raise ValueError(f"apply_in_batches: batch_size={batch_size} must be >= 1.")
  outputs, pending = [], collections.deque()
  for start in range(0, inputs.shape[0], batch_size):
    pad = max(0, start + batch_size - inputs.shape[0])
    if isinstance(inputs, LazyImages):  # Stays lazy: EvalContext.jit decodes local rows only.
      chunk = inputs.window(start, batch_size)
    else:
      chunk = inputs[start:start + batch_size]
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)], axis=0)
    # Dispatched, not waited for: the next batch is read (and decoded) while this one runs.
    pending.append((fn(chunk), batch_size - pad))
    if len(pending) > _IN_FLIGHT:
      out, keep = pending.popleft()
      outputs.append(np.asarray(out)[:keep])
  outputs.extend(np.asarray(out)[:keep] for out, keep in pending)
  return np.concatenate(outputs, axis=0).astype(np.float32)


def embed_in_batches(embed_fn: Callable[[np.ndarray], jax.Array], inputs: np.ndarray,
                     batch_size: int) -> np.ndarray:
  """:func:`apply_in_batches` of an embedding function; returns L2-normalised float32 rows."""
  emb = apply_in_batches(embed_fn, inputs, batch_size)
  return emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def _pipeline_loaders(config: Any) -> tuple[SplitLoader, PromptEncoder, Decoder]:
  from mmie.data import pipeline  # Deferred: building evaluators for fakes needs no tfds.

  from mmie.tasks import TASKS, task_name  # The task says what a split is (its data view).
  task = TASKS.get(task_name(config.get("task"))) if hasattr(config, "get") else None
  view = task.data_view if task is not None else None
  load = lambda split: pipeline.load_eval_split(config.data, split, view=view, lazy_images=True)
  prompts = lambda names, templates: pipeline.encode_prompts(config.data, names, templates)
  tokenizer = functools.cache(lambda: pipeline.tokenizer_for(config.data))  # Once, not per row.
  decode = lambda ids: tokenizer().decode(ids)
  return load, prompts, decode


class EvalContext:
  """Shared state of a run's evaluators (see module docstring).

  ``load_split(name)``, ``encode_prompts(class_names, templates)`` and ``decode(ids)`` default
  to the data pipeline's; tests pass their own.
  """

  def __init__(self, config: Any, model: Any, *, load_split: SplitLoader | None = None,
               encode_prompts: PromptEncoder | None = None, decode: Decoder | None = None,
               mesh: Mesh | None = None):
    self.config = config
    self.model = model
    self.mesh = mesh
    if load_split is None or encode_prompts is None or decode is None:
      default_load, default_prompts, default_decode = _pipeline_loaders(config)
      load_split = load_split or default_load
      encode_prompts = encode_prompts or default_prompts
      decode = decode or default_decode
    self._load_split = load_split
    self._encode_prompts = encode_prompts
    self.decode = decode
    self._splits: dict[str, dict[str, Any]] = {}
    self._prompts: dict[tuple, np.ndarray] = {}
    self._embedders: dict[str, Callable] = {}
    self._params: Any = None
    self._embeddings: dict[tuple, np.ndarray] = {}

  def split(self, name: str) -> dict[str, Any]:
    """The named split as numpy arrays (loaded once)."""
    if name not in self._splits:
      self._splits[name] = self._load_split(name)
    return self._splits[name]

  def prompts(self, class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Tokenised zero-shot prompts, int [C, T, L] (tokenised once)."""
    key = (tuple(class_names), tuple(templates))
    if key not in self._prompts:
      self._prompts[key] = np.asarray(self._encode_prompts(list(class_names), list(templates)))
    return self._prompts[key]

  def jit(self, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.jit(fn)`` for ``fn(params, *arrays)``, placed on the run's mesh when there is one.

    With a mesh: ``params`` keep the shardings they have (the train state's); each numpy
    argument is split over the batch axes when its first dimension divides by their size,
    else replicated; the model's activations are constrained as in training; outputs are
    replicated, so every host reads them whole.
    """
    if self.mesh is None:
      jitted_alone = jax.jit(fn)
      return lambda params, *arrays: jitted_alone(params, *(
          np.asarray(a) if isinstance(a, LazyImages) else a for a in arrays))
    mesh = self.mesh
    rules = sharding.run_activation_rules(self.config)

    def constrained(*args: Any) -> Any:  # The model's activation shardings, as in training.
      with layers.activation_sharding(mesh, rules):
        return fn(*args)

    jitted = jax.jit(constrained, out_shardings=sharding.replicated(mesh))
    batch, whole, ways = (sharding.batch_sharding(mesh), sharding.replicated(mesh),
                          sharding.data_parallel_size(mesh))

    def place(x: Any) -> Any:
      if isinstance(x, jax.Array):
        return x
      if not isinstance(x, LazyImages):
        x = np.asarray(x)
      where = batch if x.ndim and x.shape[0] % ways == 0 else whole
      return jax.make_array_from_callback(x.shape, where, lambda index: x[index])

    def on_mesh(params: Any, *arrays: Any) -> Any:
      return jitted(params, *(place(a) for a in arrays))

    return on_mesh

  def _embedder(self, kind: str) -> Callable:
    if kind not in self._embedders:
      method_name = {"image": "encode_image", "text": "encode_text"}[kind]
      method = getattr(type(self.model), method_name, None)
      if method is None:
        raise ValueError(f"Evaluating {kind} embeddings needs a model with {method_name}();"
                         f" {type(self.model).__name__} has none.")
      model = self.model
      self._embedders[kind] = self.jit(
          lambda params, x: model.apply({"params": params}, x, method=method))
    return self._embedders[kind]

  def embed(self, params: Any, kind: str, inputs: np.ndarray, batch_size: int,
            cache_key: tuple | None = None) -> np.ndarray:
    """Normalised ``kind`` ('image' or 'text') embeddings of ``inputs``, cached per params."""
    if params is not self._params:  # New parameters: every cached embedding is stale.
      self._params, self._embeddings = params, {}
    key = (kind, batch_size) + (cache_key if cache_key is not None else (id(inputs),))
    if key not in self._embeddings:
      fn = self._embedder(kind)
      self._embeddings[key] = embed_in_batches(lambda x: fn(params, x), inputs, batch_size)
    return self._embeddings[key]

  def split_embeddings(self, params: Any, split: str, kind: str, batch_size: int,
                       limit: int | None = None) -> np.ndarray:
    """Embeddings of a split's ``image`` or ``text`` column (its first ``limit`` rows)."""
    column = self.split(split)["image" if kind == "image" else "text"]
    if limit is not None and limit < len(column):
      column = column.window(0, limit) if isinstance(column, LazyImages) else column[:limit]
    return self.embed(params, kind, column, batch_size, cache_key=(split, limit))
