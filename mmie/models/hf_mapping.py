"""Shared machinery for Hugging Face weight conversion: name tables and block mappings.

Our blocks keep HF's separate query/key/value/out projections, so conversion is reshaping:
HF [D, D] projection kernels become our [D, heads, head_dim] (and [heads, head_dim, D]).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmie.models import layers

Params = dict[str, Any]

# HF hidden_act -> our activation name (and back for export).
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu",
               "swish": "silu"}
EXPORT_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_new",
                      "relu": "relu", "silu": "silu"}
# Where each part of one of our blocks lives inside an HF layer.
CLIP_BLOCK = dict(attention_norm="layer_norm1", query="self_attn/q_proj",
                  key="self_attn/k_proj", value="self_attn/v_proj", out="self_attn/out_proj",
                  mlp_norm="layer_norm2", fc1="mlp/fc1", fc2="mlp/fc2")
BERT_BLOCK = dict(attention_norm="attention/output/LayerNorm", query="attention/self/query",
                  key="attention/self/key", value="attention/self/value",
                  out="attention/output/dense", mlp_norm="output/LayerNorm",
                  fc1="intermediate/dense", fc2="output/dense")
VIT_BLOCK = dict(attention_norm="layernorm_before", query="attention/attention/query",
                 key="attention/attention/key", value="attention/attention/value",
                 out="attention/output/dense", mlp_norm="layernorm_after",
                 fc1="intermediate/dense", fc2="output/dense")


class Checkpoint:
  """Flat HF params that remember which keys were used, to reject unknown leftovers."""

  def __init__(self, params: dict[str, np.ndarray], path: str):
    self.params, self.path, self.used = params, path, set()

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.params:
      raise KeyError(f"{self.path}: checkpoint has no tensor {key!r}; it does not look like "
                     f"the expected architecture (keys start with {sorted(self.params)[:3]}).")
    self.used.add(key)
    return self.params[key]

  def check_all_used(self, ignored_prefixes: tuple[str, ...] = ()) -> None:
    left = sorted(k for k in set(self.params) - self.used if not k.startswith(ignored_prefixes))
    if left:
      raise ValueError(f"{self.path}: {len(left)} tensor(s) have no place in our model, e.g. "
                       f"{left[:4]}; this checkpoint variant is not supported.")


def activation_name(hf_config: Any) -> str:
  """HF ``hidden_act`` -> our activation name, failing on ones we do not implement."""
  act = hf_config.hidden_act
  if act not in ACTIVATIONS:
    raise ValueError(f"hidden_act={act!r} is not supported; supported: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[act]


def dense(ckpt: Checkpoint, prefix: str) -> Params:
  """A Dense layer's kernel and bias (HF Flax and our layout agree)."""
  return {"kernel": ckpt[f"{prefix}/kernel"], "bias": ckpt[f"{prefix}/bias"]}


def norm(ckpt: Checkpoint, prefix: str) -> Params:
  """A LayerNorm's scale and bias."""
  return {"scale": ckpt[f"{prefix}/scale"], "bias": ckpt[f"{prefix}/bias"]}


def block_from_hf(ckpt: Checkpoint, prefix: str, names: dict[str, str], heads: int) -> Params:
  """One HF layer -> our TransformerBlock params ([D, D] projections split into heads)."""
  split = lambda a: a.reshape(a.shape[:-1] + (heads, a.shape[-1] // heads))
  attention = {role: {"kernel": split(ckpt[f"{prefix}/{names[role]}/kernel"]),
                      "bias": split(ckpt[f"{prefix}/{names[role]}/bias"])}
               for role in ("query", "key", "value")}
  out = dense(ckpt, f"{prefix}/{names['out']}")
  attention["out"] = {"kernel": out["kernel"].reshape(heads, -1, out["kernel"].shape[-1]),
                      "bias": out["bias"]}
  return {"attention": attention,
          "attention_norm": norm(ckpt, f"{prefix}/{names['attention_norm']}"),
          "mlp_norm": norm(ckpt, f"{prefix}/{names['mlp_norm']}"),
          "mlp": {"fc1": dense(ckpt, f"{prefix}/{names['fc1']}"),
                  "fc2": dense(ckpt, f"{prefix}/{names['fc2']}")}}


def block_to_hf(block: Params, prefix: str, names: dict[str, str]) -> dict[str, np.ndarray]:
  """Inverse of ``block_from_hf``: flat HF Flax keys."""
  flat = {}
  for role in ("query", "key", "value"):
    kernel, bias = (np.asarray(block["attention"][role][n]) for n in ("kernel", "bias"))
    flat[f"{prefix}/{names[role]}/kernel"] = kernel.reshape(kernel.shape[0], -1)
    flat[f"{prefix}/{names[role]}/bias"] = bias.reshape(-1)
  out = block["attention"]["out"]
  flat[f"{prefix}/{names['out']}/kernel"] = np.asarray(out["kernel"]).reshape(
      -1, out["kernel"].shape[-1])
  flat[f"{prefix}/{names['out']}/bias"] = np.asarray(out["bias"])
  for role, part in (("attention_norm", block["attention_norm"]),
                     ("mlp_norm", block["mlp_norm"]), ("fc1", block["mlp"]["fc1"]),
                     ("fc2", block["mlp"]["fc2"])):
    for leaf, value in part.items():
      flat[f"{prefix}/{names[role]}/{leaf}"] = np.asarray(value)
  return flat


def encoder_from_hf(ckpt: Checkpoint, prefix: str, names: dict[str, str], depth: int,
                    heads: int, scan_layers: bool) -> Params:
  """HF layers ``{prefix}/0..depth-1`` -> our encoder params, unrolled or stacked for scan."""
  blocks = [block_from_hf(ckpt, f"{prefix}/{i}", names, heads) for i in range(depth)]
  if scan_layers:
    return {"layers": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *blocks)}
  return {f"layer_{i}": block for i, block in enumerate(blocks)}


def encoder_blocks(encoder: Params) -> list[Params]:
  """Our encoder params (unrolled or scanned) as a list of per-layer blocks."""
  if "layers" in encoder:
    depth = jax.tree_util.tree_leaves(encoder["layers"])[0].shape[0]
    return [jax.tree_util.tree_map(lambda x: np.asarray(x)[i], encoder["layers"])
            for i in range(depth)]
  return [encoder[f"layer_{i}"] for i in range(len(encoder))]


def check_shapes(module: nn.Module, params: Params, *inputs: Any) -> Params:
  """Fails with the first mismatching path if ``params`` do not fit ``module``."""
  expected = layers.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"])
  flat_expected = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.shape
                   for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
  flat_got = {"/".join(str(getattr(k, "key", k)) for k in path): np.shape(leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  if flat_expected != flat_got:
    diff = sorted(set(flat_expected.items()) ^ set(flat_got.items()))
    raise ValueError(f"converted parameters do not fit the model: {diff[:4]}")
  return jax.tree_util.tree_map(jnp.asarray, params)
