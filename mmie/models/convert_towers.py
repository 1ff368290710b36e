"""Exact weight import of single towers: BERT text encoders and ViT image encoders from HF.

``bert_from_hf`` is how a pretrained text tower (the offline MiniLM of DATA.md) enters a
LiT model: its config section and params drop into ``config.model.text`` and ``params['text']``.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mmie.models import builder
from mmie.models import hf_io
from mmie.models import hf_mapping

Params = dict[str, Any]


def bert_text_config(hf: Any, *, pool: str = "mean") -> ml_collections.ConfigDict:
  """A ``transformers.BertConfig`` -> our ``config.model.text`` section (post-LN,
  bidirectional, token types, embedding LayerNorm, no final LayerNorm)."""
  if getattr(hf, "position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"position_embedding_type={hf.position_embedding_type!r} is not "
                     "supported; only 'absolute' BERT positions are.")
  return ml_collections.ConfigDict(dict(
      name="text_transformer", vocab_size=hf.vocab_size,
      context_length=hf.max_position_embeddings, width=hf.hidden_size,
      depth=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
      mlp_dim=hf.intermediate_size, causal=False, pool=pool,
      eos_id=getattr(hf, "sep_token_id", None), pad_id=hf.pad_token_id,
      type_vocab_size=hf.type_vocab_size, embed_norm=True, final_norm=False, norm="post",
      activation=hf_mapping.activation_name(hf),
      layer_norm_eps=hf.layer_norm_eps))


def bert_params(path: str, hf: Any, *, scan_layers: bool = False) -> Params:
  """Our text-tower params from the BERT checkpoint in ``path`` (pooler head dropped)."""
  ckpt = hf_mapping.Checkpoint(
      hf_io.strip_prefix(hf_io.read_params(path), ("bert/",)), path)
  params = {
      "token_embed": {"embedding": ckpt["embeddings/word_embeddings/embedding"]},
      "pos_embed": {"embedding": ckpt["embeddings/position_embeddings/embedding"]},
      "type_embed": {"embedding": ckpt["embeddings/token_type_embeddings/embedding"]},
      "embed_norm": hf_mapping.norm(ckpt, "embeddings/LayerNorm"),
      "encoder": hf_mapping.encoder_from_hf(
          ckpt, "encoder/layer", hf_mapping.BERT_BLOCK,
          hf.num_hidden_layers, hf.num_attention_heads, scan_layers),
  }
  ckpt.check_all_used(ignored_prefixes=("pooler/", "cls/"))
  return params


def bert_from_hf(path: str, *, pool: str = "none",
                 scan_layers: bool = False) -> tuple[nn.Module, Params]:
  """HF BERT directory -> (TextTransformer, params).

  With the default ``pool='none'``, ``model.apply({'params': params}, input_ids,
  attention_mask)`` gives BERT's last hidden states; ``pool='mean'`` gives the
  sentence-transformers mean-pooled embedding. Without an attention_mask, tokens equal to
  pad_token_id are masked (HF would attend to them).
  """
  import transformers  # pylint: disable=g-import-not-at-top

  hf = transformers.BertConfig.from_dict(hf_io.read_config(path))
  tower = builder.build_tower(bert_text_config(hf, pool=pool), scan_layers=scan_layers)
  params = bert_params(path, hf, scan_layers=scan_layers)
  tokens = jnp.zeros((1, hf.max_position_embeddings), jnp.int32)
  return tower, hf_mapping.check_shapes(tower, params, tokens)


def vit_image_config(hf: Any, *, pool: str = "none") -> ml_collections.ConfigDict:
  """A ``transformers.ViTConfig`` -> our ``config.model.image`` section."""
  if not hf.qkv_bias:
    raise ValueError("ViT checkpoints with qkv_bias=False are not supported.")
  return ml_collections.ConfigDict(dict(
      name="vit", image_size=hf.image_size, patch_size=hf.patch_size, width=hf.hidden_size,
      depth=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
      mlp_dim=hf.intermediate_size, pool=pool, class_token=True, ln_pre=False, patch_bias=True,
      num_channels=hf.num_channels,
      activation=hf_mapping.activation_name(hf),
      layer_norm_eps=hf.layer_norm_eps))


def vit_from_hf(path: str, *, pool: str = "none",
                scan_layers: bool = False) -> tuple[nn.Module, Params]:
  """HF ViT directory -> (VisionTransformer, params); with ``pool='none'`` the output on NHWC
  images equals FlaxViTModel's last_hidden_state (pool='cls' gives its token 0)."""
  import transformers  # pylint: disable=g-import-not-at-top

  hf = transformers.ViTConfig.from_dict(hf_io.read_config(path))
  ckpt = hf_mapping.Checkpoint(
      hf_io.strip_prefix(hf_io.read_params(path), ("vit/",)), path)
  params = {
      "patch_embed": {
          "kernel": ckpt["embeddings/patch_embeddings/projection/kernel"],
          "bias": ckpt["embeddings/patch_embeddings/projection/bias"]},
      "cls_token": ckpt["embeddings/cls_token"].reshape(-1),
      "pos_embed": ckpt["embeddings/position_embeddings"][0],
      "encoder": hf_mapping.encoder_from_hf(
          ckpt, "encoder/layer", hf_mapping.VIT_BLOCK,
          hf.num_hidden_layers, hf.num_attention_heads, scan_layers),
      "ln_post": hf_mapping.norm(ckpt, "layernorm"),
  }
  ckpt.check_all_used(ignored_prefixes=("pooler/", "classifier/"))
  tower = builder.build_tower(vit_image_config(hf, pool=pool), scan_layers=scan_layers)
  images = jnp.zeros((1, hf.image_size, hf.image_size, hf.num_channels), jnp.float32)
  return tower, hf_mapping.check_shapes(tower, params, images)
