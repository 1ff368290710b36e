"""A trained two-tower run as a complete Hugging Face CLIP directory, tokenizer and image
preprocessing included, so PyTorch users load it with ``from_pretrained`` and no extra code.

``convert.clip_to_hf`` writes the weights (PyTorch safetensors and Flax msgpack) and the run's
tokenizer.json, renumbered where HF needs it. This module adds what ``AutoTokenizer`` and
``CLIPImageProcessor`` read:

* tokenizer.json gains a post-processor (``<bos> $A <eos>``), truncation and padding to the
  context length, so ``tokenizers.Tokenizer.from_file(...).encode(text)`` gives exactly the
  row MMIE's ``Tokenizer.encode`` gives (the EOS kept when the text is cut);
* tokenizer_config.json and special_tokens_map.json (``PreTrainedTokenizerFast``, with
  ``model_max_length`` = context length, right padding);
* preprocessor_config.json (``CLIPImageProcessor``): bicubic resize of the shorter side and a
  centre crop to the image size, the run's normalisation mean and std. For RGB images this is
  MMIE's evaluation view (largest centred square, bicubic resize); MMIE composites
  transparent images on white first, which HF's RGB conversion does not.
"""

from __future__ import annotations

import json
import os
from typing import Any

Params = dict[str, Any]


def _token(backend: Any, token_id: int) -> str:
  token = backend.id_to_token(token_id)
  if token is None:
    raise ValueError(f"the tokenizer has no token with id {token_id}.")
  return token


def finish_tokenizer(out_dir: str, context_length: int) -> None:
  """Turns ``out_dir/tokenizer.json`` (an mmie tokenizer, possibly renumbered) into a fast HF
  tokenizer directory that adds BOS/EOS and pads to ``context_length`` by itself."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import processors  # pylint: disable=g-import-not-at-top

  from mmie.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  path = os.path.join(out_dir, "tokenizer.json")
  ours = tokenizer_lib.load_tokenizer(path)  # Finds the pad/bos/eos roles by name.
  backend = tokenizers.Tokenizer.from_file(path)
  pad, bos, eos = (_token(backend, i) for i in (ours.pad_id, ours.bos_id, ours.eos_id))
  backend.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}",
      special_tokens=[(bos, ours.bos_id), (eos, ours.eos_id)])
  backend.enable_truncation(max_length=context_length)
  backend.enable_padding(length=context_length, pad_id=ours.pad_id, pad_token=pad)
  unk = "<unk>" if backend.token_to_id("<unk>") is not None else None
  # transformers rewrites the pre-tokenizer's add_prefix_space to its own default (False)
  # unless told the backend's value, which changes how the first word splits.
  pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
  fast = transformers.PreTrainedTokenizerFast(
      add_prefix_space=bool(pre.get("add_prefix_space", False)),
      tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
      model_max_length=context_length, padding_side="right",
      model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False)
  fast.save_pretrained(out_dir)


def write_image_processor(out_dir: str, image_size: int, mean: tuple[float, ...],
                          std: tuple[float, ...]) -> None:
  """preprocessor_config.json for ``CLIPImageProcessor`` / ``AutoImageProcessor``."""
  import transformers  # pylint: disable=g-import-not-at-top

  transformers.CLIPImageProcessor(
      do_resize=True, size={"shortest_edge": image_size}, resample=3,  # PIL bicubic.
      do_center_crop=True, crop_size={"height": image_size, "width": image_size},
      do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(mean),
      image_std=list(std), do_convert_rgb=True).save_pretrained(out_dir)


def export_hf(model_config: Any, params: Params, data_config: Any, tokenizer_path: str,
              out_dir: str) -> None:
  """Writes a Hugging Face CLIP directory for a trained two-tower model: weights for
  ``CLIPModel`` (PyTorch) and ``FlaxCLIPModel``, the tokenizer for ``AutoTokenizer`` and
  the image preprocessing for ``CLIPImageProcessor``."""
  from mmie.data import augment  # pylint: disable=g-import-not-at-top
  from mmie.models import convert  # pylint: disable=g-import-not-at-top

  convert.clip_to_hf(model_config, params, out_dir, tokenizer_path=tokenizer_path)
  finish_tokenizer(out_dir, int(model_config.text.context_length))
  write_image_processor(out_dir, int(model_config.image.image_size),
                        *augment.normalisation(data_config))
