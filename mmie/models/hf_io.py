"""Reads and writes Hugging Face checkpoint directories without transformers' model classes.

Weights come back as one flat dict keyed by the Hugging Face *Flax* parameter path
("text_model/encoder/layers/0/self_attn/q_proj/kernel") in Flax layout, whatever the file:
``flax_model.msgpack``, a Flax-format ``model.safetensors`` (what Flax ``save_pretrained``
writes) or a PyTorch-format one (what the hub mostly holds), sharded or not.
"""

import json
import os
from typing import Any

import flax.serialization
import flax.traverse_util
import numpy as np
import safetensors
import safetensors.flax
import safetensors.numpy

from mmie import paths

FLAX_WEIGHTS = "flax_model.msgpack"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
# PyTorch buffers that are not parameters.
_IGNORED_SUFFIXES = ("position_ids", "num_batches_tracked")


def read_config(path: str) -> dict[str, Any]:
  """The checkpoint's config.json as a dict."""
  config_file = os.path.join(path, "config.json")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"{path!r} has no config.json; pass a Hugging Face model directory.")
  with open(config_file) as f:
    return json.load(f)


def _pt_key(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
  """PyTorch name/layout -> Hugging Face Flax name/layout for one tensor."""
  *modules, leaf = name.split(".")
  owner = modules[-1].lower() if modules else ""
  if leaf in ("gamma", "beta"):  # Old BERT checkpoints name LayerNorm params this way.
    leaf = "scale" if leaf == "gamma" else "bias"
  elif leaf == "weight":
    if array.ndim == 4:  # Conv [out, in, kh, kw] -> [kh, kw, in, out].
      leaf, array = "kernel", np.transpose(array, (2, 3, 1, 0))
    elif "norm" in owner:
      leaf = "scale"
    elif owner.endswith(("embedding", "embeddings")):
      leaf = "embedding"
    elif array.ndim == 2:  # Linear [out, in] -> [in, out].
      leaf, array = "kernel", array.T
  return "/".join([*modules, leaf]), array


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
  with safetensors.safe_open(file, framework="flax") as f:
    metadata = f.metadata() or {}
  tensors = {k: np.asarray(v, np.float32) if np.issubdtype(v.dtype, np.floating) else np.asarray(v)
             for k, v in safetensors.flax.load_file(file).items()}
  tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
  if metadata.get("format") == "flax":
    return {k.replace(".", "/"): v for k, v in tensors.items()}
  return dict(_pt_key(k, v) for k, v in tensors.items())


def read_params(path: str) -> dict[str, np.ndarray]:
  """Flat {hf_flax_path: float32 array} from the weights file(s) in ``path``."""
  safe_file, index_file = os.path.join(path, SAFE_WEIGHTS), os.path.join(path, SAFE_INDEX)
  flax_file = os.path.join(path, FLAX_WEIGHTS)
  if os.path.isfile(flax_file):
    with open(flax_file, "rb") as f:
      tree = flax.serialization.msgpack_restore(f.read())
    return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
            else np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}
  if os.path.isfile(safe_file):
    return _read_safetensors(safe_file)
  if os.path.isfile(index_file):
    with open(index_file) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    params = {}
    for shard in shards:
      real, inside = paths.resolve_inside(path, shard)
      if not inside:  # A hostile index must not make us read files elsewhere.
        raise ValueError(f"{index_file} names the shard {shard!r}, which resolves to {real},"
                         f" outside {path}; shards must lie in the checkpoint's folder.")
      params.update(_read_safetensors(real))
    return params
  found = sorted(os.listdir(path)) if os.path.isdir(path) else "not a directory"
  raise FileNotFoundError(f"{path!r} holds no {FLAX_WEIGHTS}, {SAFE_WEIGHTS} or {SAFE_INDEX} "
                          f"(found: {found}). PyTorch .bin checkpoints are not supported.")


def strip_prefix(params: dict[str, np.ndarray], prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Drops a task-model prefix ('bert/', 'vit/') so base and task checkpoints read alike."""
  for prefix in prefixes:
    if any(k.startswith(prefix) for k in params):
      return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
  return params


def _flax_to_pt(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
  """Hugging Face Flax name/layout -> PyTorch name/layout for one tensor (inverse of _pt_key)."""
  *modules, leaf = name.split("/")
  array = np.asarray(array)
  if leaf == "kernel":
    array = np.transpose(array, (3, 2, 0, 1)) if array.ndim == 4 else array.T
    leaf = "weight"
  elif leaf in ("scale", "embedding"):
    leaf = "weight"
  return ".".join([*modules, leaf]), array.copy(order="C")  # (ascontiguousarray makes 0-d 1-d.)


def write_pytorch_safetensors(flat_params: dict[str, np.ndarray], out_dir: str) -> None:
  """Writes ``model.safetensors`` in PyTorch layout (what ``from_pretrained`` in PyTorch reads)
  from flat Hugging Face Flax keys."""
  os.makedirs(out_dir, exist_ok=True)
  tensors = dict(_flax_to_pt(k, v) for k, v in flat_params.items())
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, SAFE_WEIGHTS),
                              metadata={"format": "pt"})


def write_flax_checkpoint(flat_params: dict[str, np.ndarray], config: dict[str, Any],
                          out_dir: str) -> None:
  """Writes config.json and flax_model.msgpack as Flax ``save_pretrained`` would."""
  os.makedirs(out_dir, exist_ok=True)
  tree = flax.traverse_util.unflatten_dict(
      {k: np.asarray(v) for k, v in flat_params.items()}, sep="/")
  with open(os.path.join(out_dir, FLAX_WEIGHTS), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(tree))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
