"""Device meshes, partition rules and global batches.

The mesh has three named axes, ``('data', 'fsdp', 'model')``. The batch is split over
``data`` and ``fsdp`` together; parameters are split by regex partition rules (FSDP over
``fsdp``, tensor parallelism over ``model``) and replicated where no rule says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mmie.config import ConfigError

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: Mapping[str, int] | None, n_devices: int) -> tuple[int, ...]:
  """Resolves the config's axis sizes, where one ``-1`` means 'all remaining devices'."""
  mesh_config = dict(mesh_config or {"data": -1})
  unknown = sorted(set(mesh_config) - set(MESH_AXES))
  if unknown:
    raise ConfigError(f"Unknown mesh axis mesh.{unknown[0]}; axes are {MESH_AXES}.")
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ConfigError(f"At most one mesh axis may be -1; got {dict(zip(MESH_AXES, sizes))}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"Mesh axis sizes must be positive or -1; got {dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ConfigError(f"{n_devices} devices do not divide into mesh {mesh_config}.")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ConfigError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices;"
                      f" {n_devices} are available. Use -1 for one axis to take the rest.")
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``('data', 'fsdp', 'model')`` mesh over all (or the given) devices, Auto axis types."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Makes each host's slice of the batch into one global array split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def path_name(path: Sequence[Any]) -> str:
  """'image/blocks_0/attn/query/kernel' for a pytree key path."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


# Logical parameter axes (named by mmie.models) -> mesh axes: FSDP over the model width,
# tensor parallelism over heads, MLP hidden units and vocabulary. Unlisted names replicate.
DEFAULT_AXIS_RULES: tuple[tuple[str, str], ...] = (
    ("embed", "fsdp"), ("mlp", "model"), ("heads", "model"), ("kv_heads", "model"),
    ("vocab", "model"),
)


def axis_rules(config: Any) -> Sequence[tuple[str, str | None]]:
  """The run's logical -> mesh axis rules for parameters: ``config.mesh_rules`` or the
  defaults."""
  return config.get("mesh_rules", None) or DEFAULT_AXIS_RULES


# The parameter axes whose activation counterparts (mmie.models.layers.ACTIVATION_AXES) are
# split as the parameters are: a tensor-parallel weight's heads, hidden units or vocabulary
# give the activations it produces the same split.
_ACTIVATION_FOLLOWS = {"heads": "activation_heads", "kv_heads": "activation_heads",
                       "mlp": "activation_mlp", "vocab": "activation_vocab"}


def activation_rules(param_rules: Sequence[tuple[str, str | None]], *,
                     sequence_parallel: bool = False) -> tuple[tuple[str, Any], ...]:
  """Logical activation axis -> mesh axes, from the parameter rules: the batch over
  ``BATCH_AXES``; heads, MLP units and vocabulary over the axis their weights use, unless
  that is a batch axis (FSDP splits weights, never a batch's features); the rest whole.

  ``sequence_parallel`` (Korthikanti et al. 2022) also splits the residual stream's length
  (``activation_sequence``: norms, dropout, residual adds between attention and MLP) over the
  heads' tensor-parallel axis, so those activations are not replicated on every model shard;
  XLA gathers the sequence before attention and the MLP and scatters it after.
  """
  rules: dict[str, Any] = {"activation_batch": BATCH_AXES}
  for name, axis in param_rules:
    target = _ACTIVATION_FOLLOWS.get(name)
    if target and target not in rules:
      rules[target] = axis if axis not in BATCH_AXES else None
  if sequence_parallel:
    if not rules.get("activation_heads"):
      raise ConfigError("sequence_parallel=True splits the residual stream over the tensor-"
                        "parallel axis, but no rule maps 'heads' to one (the default maps it "
                        "to 'model'); set mesh_rules or sequence_parallel=False.")
    rules["activation_sequence"] = rules["activation_heads"]
  return tuple(rules.items())


def run_activation_rules(config: Any) -> tuple[tuple[str, Any], ...]:
  """The run's activation rules: its parameter rules and ``config.sequence_parallel``."""
  return activation_rules(axis_rules(config),
                          sequence_parallel=bool(config.get("sequence_parallel", False)))


def _fit(shape: tuple[int, ...], axes: Sequence[str | None], mesh: Mesh) -> P:
  """A PartitionSpec for ``shape`` with every axis that does not divide its dim dropped."""
  used: set[str] = set()
  spec = []
  for dim, axis in zip(shape, axes):
    size = mesh.shape[axis] if axis else 1
    if axis and axis not in used and size > 1 and dim % size == 0:
      spec.append(axis)
      used.add(axis)
    else:
      spec.append(None)
  return P(*spec)


def logical_param_shardings(boxed_params: Any, mesh: Mesh,
                            rules: Sequence[tuple[str, str]] = DEFAULT_AXIS_RULES) -> Any:
  """Shardings for a tree of ``nn.LogicallyPartitioned`` params (as ``model.init`` returns).

  Returns a plain (unboxed) tree of NamedShardings. A dimension that does not divide by its
  mesh axis stays whole rather than failing, so one rule set serves every model size.
  """
  import flax.linen as nn  # Local: sharding otherwise needs no Flax.

  table = dict(rules)
  unknown = sorted({m for m in table.values() if m is not None} - set(MESH_AXES))
  if unknown:
    raise ConfigError(f"mesh rules map to unknown mesh axes {unknown}; axes are {MESH_AXES}.")

  def leaf_sharding(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      axes = [table.get(name) if name else None for name in leaf.names]
      return NamedSharding(mesh, _fit(tuple(leaf.value.shape), axes, mesh))
    return NamedSharding(mesh, P())

  return jax.tree.map(leaf_sharding, boxed_params,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def shardings_following_params(tree: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for a tree holding per-parameter copies (optimizer moments, EMA params).

  A leaf whose path ends with a parameter's path and has that parameter's shape gets the
  parameter's sharding; everything else (counts, scalars) is replicated.
  """
  by_name = {path_name(p): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

  def leaf_sharding(path, leaf):
    name = path_name(path)
    shape = tuple(getattr(leaf, "shape", ()))
    for param_name, s in by_name.items():
      if name == param_name or name.endswith("/" + param_name):
        spec = s.spec
        if len(spec) <= len(shape):
          return NamedSharding(mesh, _fit(shape, tuple(spec) + (None,) * (len(shape) - len(spec)),
                                          mesh))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)
