"""A trained two-tower run as an open_clip model directory:
``open_clip.create_model_and_transforms("local-dir:DIR")`` builds it, loads the weights and the
image transform, and ``open_clip.get_tokenizer("local-dir:DIR")`` its tokenizer.

The directory holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``),
``open_clip_model.safetensors`` (open_clip's own ``CLIP`` state dict) and the run's tokenizer
as a Hugging Face fast tokenizer (open_clip's ``HFTokenizer`` reads it from the directory).
Token ids keep mmie's numbering: open_clip pools the text at ``eos_id`` (``pool_type='eos'``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from mmie.models import convert

Params = dict[str, Any]
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
# Our activation -> (open_clip's quick_gelu flag, the tower's act_kwargs for nn.GELU).
_ACTIVATIONS = {"gelu": (False, None), "quick_gelu": (True, None),
                "gelu_tanh": (False, {"approximate": "tanh"})}


def _check(ok: bool, what: str) -> None:
  if not ok:
    raise ValueError(f"open_clip export: {what}; open_clip's CLIP cannot represent this model.")


def _tower_cfg(tower: dict[str, Any]) -> dict[str, Any]:
  _check(tower["activation"] in _ACTIVATIONS, f"activation {tower['activation']!r} (open_clip "
         f"has {sorted(_ACTIVATIONS)})")
  act_kwargs = _ACTIVATIONS[tower["activation"]][1]
  cfg = dict(width=tower["width"], layers=tower["depth"],
             mlp_ratio=tower["mlp_dim"] / tower["width"],
             norm_kwargs={"eps": tower["layer_norm_eps"]})
  if act_kwargs:
    cfg["act_kwargs"] = act_kwargs
  return cfg


def model_cfg(model: dict[str, Any], image: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
  """open_clip's ``model_cfg`` for our resolved (and CLIP-expressible) model sections."""
  quick = {_ACTIVATIONS.get(t["activation"], (None,))[0] for t in (image, text)}
  _check(len(quick) == 1, "one tower uses quick_gelu and the other does not")
  from mmie.models import builder  # pylint: disable=g-import-not-at-top

  sizes = builder.vit_sizes(image, "model.image")
  vision = dict(_tower_cfg(dict(image, **sizes)), patch_size=sizes["patch_size"],
                image_size=image["image_size"], head_width=sizes["width"] // sizes["num_heads"],
                pool_type="tok")
  text_cfg = dict(_tower_cfg(text), heads=text["num_heads"], vocab_size=text["vocab_size"],
                  context_length=text["context_length"], pad_id=text["pad_id"] or 0,
                  eos_id=text["eos_id"], pool_type=text["pool"], hf_tokenizer_name="local-dir",
                  tokenizer_mode=None)
  cfg = dict(embed_dim=model["embed_dim"], quick_gelu=quick.pop(), vision_cfg=vision,
             text_cfg=text_cfg)
  if model["logit_bias_init"] is not None:  # SigLIP: open_clip's CLIP holds a logit bias too.
    cfg["init_logit_bias"] = float(model["logit_bias_init"])
  return cfg


def _blocks(flat: dict[str, np.ndarray], hf_prefix: str, ours: str) -> dict[str, np.ndarray]:
  """HF CLIP encoder layers -> open_clip ``resblocks`` (fused q/k/v in PyTorch layout)."""
  out, i = {}, 0
  while f"{hf_prefix}/{i}/self_attn/q_proj/kernel" in flat:
    hf, oc = f"{hf_prefix}/{i}", f"{ours}.resblocks.{i}"
    qkv = [f"{hf}/self_attn/{r}_proj" for r in "qkv"]
    out[f"{oc}.attn.in_proj_weight"] = np.concatenate([flat[f"{q}/kernel"].T for q in qkv])
    out[f"{oc}.attn.in_proj_bias"] = np.concatenate([flat[f"{q}/bias"] for q in qkv])
    for theirs, name in (("self_attn/out_proj", "attn.out_proj"), ("mlp/fc1", "mlp.c_fc"),
                         ("mlp/fc2", "mlp.c_proj")):
      out[f"{oc}.{name}.weight"] = flat[f"{hf}/{theirs}/kernel"].T
      out[f"{oc}.{name}.bias"] = flat[f"{hf}/{theirs}/bias"]
    for theirs, name in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
      out[f"{oc}.{name}.weight"] = flat[f"{hf}/{theirs}/scale"]
      out[f"{oc}.{name}.bias"] = flat[f"{hf}/{theirs}/bias"]
    i += 1
  return out


def state_dict(params: Params) -> dict[str, np.ndarray]:
  """Our two-tower params -> open_clip ``CLIP.state_dict()`` names and PyTorch layouts."""
  flat = convert.clip_hf_flat(params)
  norm = lambda hf: {"weight": flat[f"{hf}/scale"], "bias": flat[f"{hf}/bias"]}
  sd = {"logit_scale": flat["logit_scale"],
        "visual.conv1.weight": np.transpose(
            flat["vision_model/embeddings/patch_embedding/kernel"], (3, 2, 0, 1)),
        "visual.class_embedding": flat["vision_model/embeddings/class_embedding"],
        "visual.positional_embedding":
            flat["vision_model/embeddings/position_embedding/embedding"],
        "visual.proj": flat["visual_projection/kernel"],  # open_clip: x @ proj, [in, out].
        "token_embedding.weight": flat["text_model/embeddings/token_embedding/embedding"],
        "positional_embedding": flat["text_model/embeddings/position_embedding/embedding"],
        "text_projection": flat["text_projection/kernel"]}
  for ours, hf in (("visual.ln_pre", "vision_model/pre_layrnorm"),
                   ("visual.ln_post", "vision_model/post_layernorm"),
                   ("ln_final", "text_model/final_layer_norm")):
    sd.update({f"{ours}.{k}": v for k, v in norm(hf).items()})
  sd.update(_blocks(flat, "vision_model/encoder/layers", "visual.transformer"))
  sd.update(_blocks(flat, "text_model/encoder/layers", "transformer"))
  if "logit_bias" in params:
    sd["logit_bias"] = np.asarray(params["logit_bias"])
  return {k: np.array(v, np.float32, order="C") for k, v in sd.items()}


def export_open_clip(model_config: Any, params: Params, data_config: Any, tokenizer_path: str,
                     out_dir: str) -> None:
  """Writes the open_clip directory for a trained two-tower model (see the module doc)."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  from mmie.data import augment  # pylint: disable=g-import-not-at-top
  from mmie.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from mmie.models import hf_export  # pylint: disable=g-import-not-at-top

  model, image, text = convert.resolve_clip(model_config, logit_bias_ok=True)
  _check(text["pool"] in ("eos", "argmax"), f"text pool={text['pool']!r}")
  mean, std = augment.normalisation(data_config)
  config = dict(model_cfg=model_cfg(model, image, text),
                preprocess_cfg=dict(size=image["image_size"], mode="RGB", mean=list(mean),
                                    std=list(std), interpolation="bicubic",
                                    resize_mode="shortest", fill_color=0))
  os.makedirs(out_dir, exist_ok=True)
  safetensors.numpy.save_file(state_dict(params), os.path.join(out_dir, WEIGHTS_FILE),
                              metadata={"format": "pt"})
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2)
  tokenizer_lib.load_tokenizer(tokenizer_lib.resolve_alias(tokenizer_path)).save(
      os.path.join(out_dir, "tokenizer.json"))
  hf_export.finish_tokenizer(out_dir, int(text["context_length"]))
