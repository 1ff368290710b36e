"""Exact weight import from Hugging Face CLIP / BERT / ViT checkpoints, and export to HF CLIP.

Everything reads a local directory (no network). Each converter builds our module from the
checkpoint's config.json, maps every tensor by an explicit table (failing on tensors it does
not know, so unsupported variants cannot load silently wrong), and checks the result against
the module's own parameter shapes.
"""

import math
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmie.models import builder
from mmie.models import hf_io
from mmie.models import hf_mapping
from mmie.models import layers
from mmie.models.convert_towers import bert_from_hf
from mmie.models.convert_towers import bert_params
from mmie.models.convert_towers import bert_text_config
from mmie.models.convert_towers import vit_from_hf
from mmie.models.convert_towers import vit_image_config

__all__ = ["bert_from_hf", "bert_params", "bert_text_config", "clip_config_from_hf",
           "clip_from_hf", "clip_to_hf", "vit_from_hf", "vit_image_config"]

Params = dict[str, Any]
# config.json key of an export whose token ids 2 and V-1 were exchanged (see clip_to_hf).
TOKEN_ID_SWAP_KEY = "mmie_token_id_swap"

# ----------------------------------------------------------------------------- CLIP


def clip_config_from_hf(hf: Any) -> ml_collections.ConfigDict:
  """A ``transformers.CLIPConfig`` -> our ``config.model`` for the same architecture."""
  t, v = hf.text_config, hf.vision_config
  text = dict(name="text_transformer", vocab_size=t.vocab_size,
              context_length=t.max_position_embeddings, width=t.hidden_size,
              depth=t.num_hidden_layers, num_heads=t.num_attention_heads,
              mlp_dim=t.intermediate_size, causal=True,
              # HF keeps legacy argmax-of-ids pooling for checkpoints whose eos_token_id is 2.
              pool="argmax" if t.eos_token_id == 2 else "eos", eos_id=t.eos_token_id,
              pad_id=t.pad_token_id, activation=hf_mapping.activation_name(t),
              layer_norm_eps=t.layer_norm_eps)
  image = dict(name="vit", image_size=v.image_size, patch_size=v.patch_size,
               width=v.hidden_size, depth=v.num_hidden_layers, num_heads=v.num_attention_heads,
               mlp_dim=v.intermediate_size, pool="cls", num_channels=v.num_channels,
               ln_pre=True, patch_bias=False, activation=hf_mapping.activation_name(v),
               layer_norm_eps=v.layer_norm_eps)
  return ml_collections.ConfigDict(dict(
      name="two_tower", embed_dim=hf.projection_dim,
      logit_scale_init=min(hf.logit_scale_init_value, math.log(100.0)), logit_scale_max=100.0,
      logit_bias_init=None, dtype="float32", image=image, text=text))


def clip_from_hf(path: str, *, scan_layers: bool = False) -> tuple[nn.Module, Params]:
  """HF CLIP directory -> (TwoTower, params); encode_image / encode_text match HF's
  get_image_features / get_text_features (images NHWC)."""
  import transformers  # pylint: disable=g-import-not-at-top  (slow import; config only)

  raw_config = hf_io.read_config(path)
  hf = transformers.CLIPConfig.from_dict(raw_config)
  model_config = clip_config_from_hf(hf)
  model_config.scan_layers = scan_layers
  flat = hf_io.read_params(path)
  swap = raw_config.get(TOKEN_ID_SWAP_KEY)
  if swap:  # An mmie export: back to the numbering of the run's own tokenizer.
    a, b = swap
    key = "text_model/embeddings/token_embedding/embedding"
    flat[key] = flat[key].copy()
    flat[key][[a, b]] = flat[key][[b, a]]
    model_config.text.eos_id = a
  ckpt = hf_mapping.Checkpoint(flat, path)
  t, v = hf.text_config, hf.vision_config
  text = {"token_embed": {"embedding": ckpt["text_model/embeddings/token_embedding/embedding"]},
          "pos_embed": {"embedding": ckpt["text_model/embeddings/position_embedding/embedding"]},
          "encoder": hf_mapping.encoder_from_hf(
              ckpt, "text_model/encoder/layers", hf_mapping.CLIP_BLOCK, t.num_hidden_layers,
              t.num_attention_heads, scan_layers),
          "ln_final": hf_mapping.norm(ckpt, "text_model/final_layer_norm")}
  image = {"patch_embed": {"kernel": ckpt["vision_model/embeddings/patch_embedding/kernel"]},
           "cls_token": ckpt["vision_model/embeddings/class_embedding"],
           "pos_embed": ckpt["vision_model/embeddings/position_embedding/embedding"],
           "ln_pre": hf_mapping.norm(ckpt, "vision_model/pre_layrnorm"),
           "encoder": hf_mapping.encoder_from_hf(
               ckpt, "vision_model/encoder/layers", hf_mapping.CLIP_BLOCK, v.num_hidden_layers,
               v.num_attention_heads, scan_layers),
           "ln_post": hf_mapping.norm(ckpt, "vision_model/post_layernorm")}
  params = {"image": image, "text": text,
            "image_projection": {"kernel": ckpt["visual_projection/kernel"]},
            "text_projection": {"kernel": ckpt["text_projection/kernel"]},
            "logit_scale": ckpt["logit_scale"]}
  ckpt.check_all_used()
  model = builder.build_model(model_config)
  return model, hf_mapping.check_shapes(model, params, *builder.example_inputs(model_config))


def _export_check(ok: bool, what: str) -> None:
  if not ok:
    raise ValueError(f"clip_to_hf: {what}; Hugging Face CLIP cannot represent this model.")


def _hf_clip_config(model: dict[str, Any], image: dict[str, Any],
                    text: dict[str, Any]) -> dict[str, Any]:
  """Checks our config is expressible as HF CLIP and returns the CLIPConfig kwargs."""
  _export_check(model["logit_bias_init"] is None, "a SigLIP logit bias is set")
  _export_check(image["name"] == "vit" and image["pool"] == "cls" and image["ln_pre"]
                and not image["patch_bias"] and image["positions"] == "learned"
                and image["class_token"] in (None, True) and not image["stem_channels"],
                "the image tower must be a ViT with pool='cls', ln_pre, no patch bias, "
                "learned positions, no convolutional stem")
  _export_check(text["causal"] and text["norm"] == "pre" and text["final_norm"]
                and not text["embed_norm"] and not text["type_vocab_size"]
                and text["positions"] == "learned",
                "the text tower must be causal, pre-LN with a final LayerNorm, learned "
                "positions, no token types")
  _export_check(text["pool"] in ("eos", "argmax"), f"text pool={text['pool']!r} (need 'eos' "
                "or 'argmax')")
  for tower in (image, text):
    _export_check(tower["num_kv_heads"] in (None, tower["num_heads"]),
                  "grouped-query attention is used")
    _export_check(tower["activation"] in hf_mapping.EXPORT_ACTIVATIONS,
                  f"activation {tower['activation']!r}")
  sizes = builder.vit_sizes(image, "model.image")
  common = lambda c, s: dict(hidden_size=s["width"], intermediate_size=s["mlp_dim"],
                             num_hidden_layers=s["depth"], num_attention_heads=s["num_heads"],
                             hidden_act=hf_mapping.EXPORT_ACTIVATIONS[c["activation"]],
                             layer_norm_eps=c["layer_norm_eps"])
  return dict(
      projection_dim=model["embed_dim"], logit_scale_init_value=model["logit_scale_init"],
      vision_config=dict(common(image, sizes), image_size=image["image_size"],
                         patch_size=sizes["patch_size"], num_channels=image["num_channels"]),
      text_config=dict(common(text, text), vocab_size=text["vocab_size"],
                       max_position_embeddings=text["context_length"],
                       eos_token_id=2 if text["pool"] == "argmax" else text["eos_id"],
                       pad_token_id=1 if text["pad_id"] is None else text["pad_id"]))


def _swap_token_ids(tokenizer_path: str, a: int, b: int, out_path: str) -> None:
  """Writes the tokenizer.json at ``tokenizer_path`` with token ids ``a`` and ``b`` exchanged."""
  import json  # pylint: disable=g-import-not-at-top

  from mmie.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  with open(tokenizer_lib.resolve_alias(tokenizer_path), encoding="utf-8") as f:
    spec = json.load(f)
  vocab = spec.get("model", {}).get("vocab")
  if not isinstance(vocab, dict) or spec.get("post_processor"):
    raise ValueError(f"clip_to_hf: cannot renumber {tokenizer_path}: only tokenizer.json files"
                     " with a token->id vocabulary and no post-processor (as mmie trains) are"
                     " supported.")
  swap = {a: b, b: a}
  spec["model"]["vocab"] = {token: swap.get(i, i) for token, i in vocab.items()}
  for added in spec.get("added_tokens", []):
    added["id"] = swap.get(added["id"], added["id"])
  if sorted(spec["model"]["vocab"].values()) != sorted(vocab.values()):
    raise ValueError(f"clip_to_hf: {tokenizer_path} has no token with id {max(a, b)}; its "
                     "vocabulary must fill the model's text.vocab_size.")
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(spec, f, ensure_ascii=False)


def clip_hf_flat(params: Params) -> dict[str, np.ndarray]:
  """Our two-tower params -> flat HF Flax CLIP keys and layouts, token ids as they are."""
  p = jax.tree_util.tree_map(np.asarray, layers.unbox(params))
  ti, tt = p["image"], p["text"]
  flat = {"logit_scale": p["logit_scale"],
          "visual_projection/kernel": p["image_projection"]["kernel"],
          "text_projection/kernel": p["text_projection"]["kernel"],
          "text_model/embeddings/token_embedding/embedding": tt["token_embed"]["embedding"],
          "text_model/embeddings/position_embedding/embedding": tt["pos_embed"]["embedding"],
          "vision_model/embeddings/patch_embedding/kernel": ti["patch_embed"]["kernel"],
          "vision_model/embeddings/class_embedding": ti["cls_token"],
          "vision_model/embeddings/position_embedding/embedding": ti["pos_embed"]}
  for ours, theirs in (("ln_final", "text_model/final_layer_norm"),
                       ("ln_pre", "vision_model/pre_layrnorm"),
                       ("ln_post", "vision_model/post_layernorm")):
    tower = tt if ours == "ln_final" else ti
    flat.update({f"{theirs}/{leaf}": value for leaf, value in tower[ours].items()})
  for tower, prefix in ((tt, "text_model"), (ti, "vision_model")):
    for i, block in enumerate(hf_mapping.encoder_blocks(tower["encoder"])):
      flat.update(hf_mapping.block_to_hf(block, f"{prefix}/encoder/layers/{i}",
                                         hf_mapping.CLIP_BLOCK))
  return flat


def resolve_clip(model_config: Any, *, logit_bias_ok: bool = False
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(model, image, text) sections with defaults filled, checked to be expressible as CLIP
  (with SigLIP's logit bias too when ``logit_bias_ok``, as open_clip's CLIP has one)."""
  model = builder.resolve_keys(model_config, builder.MODEL_KEYS, "model")
  image = builder.resolve_keys(model["image"], builder.VIT_KEYS, "model.image")
  text = dict(builder.resolve_keys(model["text"], builder.TEXT_KEYS, "model.text"))
  _hf_clip_config(dict(model, logit_bias_init=None) if logit_bias_ok else model, image, text)
  return model, image, text


def clip_to_hf(model_config: Any, params: Params, out_dir: str, *,
               tokenizer_path: str | None = None) -> None:
  """Writes our two-tower ``params`` as an HF CLIP directory: config.json, flax_model.msgpack
  (``transformers.FlaxCLIPModel.from_pretrained``), model.safetensors in PyTorch layout
  (``transformers.CLIPModel.from_pretrained``), and ``tokenizer.json`` when ``tokenizer_path``
  is given (``mmie.models.hf_export`` turns the directory into a full HF model directory).

  HF pools the text at the largest token id whenever ``eos_token_id == 2`` (its legacy rule
  for old checkpoints), and mmie's tokenizers put end-of-text at id 2. Such a model is
  exported with ids 2 and ``vocab_size - 1`` exchanged: in the token embedding, in
  ``eos_token_id`` and in the exported tokenizer, which is therefore required. Text tokenized
  by the exported tokenizer gives, in HF, exactly our embeddings. config.json records the
  exchange (``mmie_token_id_swap``) so ``clip_from_hf`` restores mmie's numbering.
  """
  import transformers  # pylint: disable=g-import-not-at-top

  model = builder.resolve_keys(model_config, builder.MODEL_KEYS, "model")
  image = builder.resolve_keys(model["image"], builder.VIT_KEYS, "model.image")
  text = dict(builder.resolve_keys(model["text"], builder.TEXT_KEYS, "model.text"))
  last = text["vocab_size"] - 1
  renumber = text["pool"] == "eos" and text["eos_id"] == 2 and last != 2
  if renumber:
    if tokenizer_path is None:
      raise ValueError("clip_to_hf: end-of-text is id 2, which HF CLIP reads as legacy argmax"
                       " pooling; pass tokenizer_path= (the run's tokenizer.json) so the export"
                       " moves it to id vocab_size - 1 in the weights and the tokenizer alike.")
    text["eos_id"] = last
  hf_config = transformers.CLIPConfig(**_hf_clip_config(model, image, text))
  flat = clip_hf_flat(params)
  if renumber:
    key = "text_model/embeddings/token_embedding/embedding"
    flat[key] = flat[key].copy()
    flat[key][[2, last]] = flat[key][[last, 2]]
  config_dict = dict(hf_config.to_dict(), architectures=["CLIPModel"])
  if renumber:  # Lets clip_from_hf give back exactly these params, in mmie's numbering.
    config_dict[TOKEN_ID_SWAP_KEY] = [2, last]
  hf_io.write_flax_checkpoint(flat, config_dict, out_dir)
  hf_io.write_pytorch_safetensors(flat, out_dir)
  if tokenizer_path is not None:
    target = os.path.join(out_dir, "tokenizer.json")
    if renumber:
      _swap_token_ids(tokenizer_path, 2, last, target)
    else:
      from mmie.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
      tokenizer_lib.load_tokenizer(tokenizer_lib.resolve_alias(tokenizer_path)).save(target)
