"""Loads mmie exports the way a PyTorch user does and writes what they compute (not a test).

Run by tests/test_export_torch.py with the Python of a venv built from requirements-bench.txt
(PyTorch, transformers, open_clip): ``python tests/interop_torch.py IN.npz OUT.npz HF_DIR
OPEN_CLIP_DIR [SIGLIP_OPEN_CLIP_DIR]``. IN.npz holds ``images`` (uint8 RGB [N, H, W, 3]) and ``texts``; OUT.npz gets
the ids each exported tokenizer gives and the features each loaded model computes, using only
the libraries' own one-line loads.
"""

import sys
import types

import numpy as np


def main(in_file: str, out_file: str, hf_dir: str, open_clip_dir: str,
         siglip_dir: str = "") -> None:
  # torchvision's meta registrations break against the CPU torch wheel; open_clip does not use
  # them (as in scripts/benchmark.py).
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  import open_clip
  import tokenizers
  import torch
  import transformers
  from PIL import Image

  torch.set_num_threads(1)
  inputs = np.load(in_file)
  texts = [str(t) for t in inputs["texts"]]
  images = [Image.fromarray(i) for i in inputs["images"]]
  out = {}
  with torch.no_grad():
    model = transformers.CLIPModel.from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    processor = transformers.CLIPImageProcessor.from_pretrained(hf_dir)
    batch = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    out["hf_ids"] = batch["input_ids"].numpy()
    out["hf_raw_ids"] = np.asarray(
        [e.ids for e in tokenizers.Tokenizer.from_file(f"{hf_dir}/tokenizer.json")
         .encode_batch(texts)])
    out["hf_pixels"] = pixels.numpy()
    out["hf_text"] = model.get_text_features(**batch).numpy()
    out["hf_image"] = model.get_image_features(pixel_values=pixels).numpy()
    out["hf_logit_scale"] = model.logit_scale.numpy()

    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    oc.eval()
    oc_tokenizer = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")
    ids = oc_tokenizer(texts)
    oc_pixels = torch.stack([preprocess(i) for i in images])
    out["oc_ids"] = ids.numpy()
    out["oc_pixels"] = oc_pixels.numpy()
    out["oc_text"] = oc.encode_text(ids).numpy()
    out["oc_image"] = oc.encode_image(oc_pixels).numpy()
    out["oc_logit_scale"] = oc.logit_scale.numpy()

    if siglip_dir:  # A SigLIP model (logit bias) on given model inputs: NHWC pixels and ids.
      sig, _, _ = open_clip.create_model_and_transforms(f"local-dir:{siglip_dir}")
      sig.eval()
      out["sig_image"] = sig.encode_image(
          torch.from_numpy(inputs["sig_pixels"]).permute(0, 3, 1, 2)).numpy()
      out["sig_text"] = sig.encode_text(torch.from_numpy(inputs["sig_ids"]).long()).numpy()
      out["sig_logit_bias"] = sig.logit_bias.numpy()
  np.savez(out_file, **out)


if __name__ == "__main__":
  main(*sys.argv[1:])
