"""``python -m mmie.export`` and ``config.init_from`` on a really trained tiny CLIP run.

The exports are loaded the way their users load them: Hugging Face's Flax model, fast
tokenizer and image processor here; PyTorch ``CLIPModel`` and open_clip in a second venv built
from requirements-bench.txt (``MMIE_TORCH_PYTHON``, which ``.ci/run`` sets), so PyTorch stays
out of the main one. Every comparison is with MMIE's own embeddings of the same inputs, within
float32 rounding (tests/tolerance.py).

Slow: the module trains one tiny run (about half a minute) and every test reads it.
"""

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from mmie import config as config_lib
from mmie.configs import clip as clip_config
from mmie.data import augment, spec
from mmie.train import setup, trained
from tests.tolerance import float32_sum_atol

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["red heart", "flag: Tanzania", "round pushpin",
         "grinning face with big eyes and a name longer than the context length"]
# Deepest float32 contraction chain of the tiny towers (patch 8*8*3, width 32, mlp 64, one
# layer each): the rounding of two implementations of the same maths differs by its sqrt.
TERMS = 8 * 8 * 3 + 32 + 64 + 16


def _images(size: int = 48, count: int = 3) -> np.ndarray:
  """Square RGB images larger than the model's input, so both preprocessings resize."""
  return np.random.default_rng(0).integers(0, 256, (count, size, size, 3)).astype(np.uint8)


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A trained tiny CLIP workdir and its HF and open_clip exports (one through the command)."""
  root = tmp_path_factory.mktemp("export")
  workdir, hf_dir, oc_dir = root / "run", root / "hf", root / "open_clip"
  train = _run("main.py", "--config=configs/clip.py:tiny", f"--workdir={workdir}")
  assert train.returncode == 0, train.stderr[-3000:]
  export = _run("-m", "mmie.export", f"--workdir={workdir}", f"--out={hf_dir}")
  assert export.returncode == 0, export.stderr[-3000:]
  assert "Exported step 6" in export.stdout
  from mmie import export  # pylint: disable=g-import-not-at-top
  assert export.export_run(str(workdir), str(oc_dir), fmt="open_clip") == 6
  config, model, params, step = trained.load_trained(str(workdir))
  tokenizer = spec.tokenizer_for(config.data)
  ours = dict(config=config, model=model, params=params, step=step, workdir=workdir,
              hf=hf_dir, open_clip=oc_dir,
              ids=tokenizer.encode(TEXTS, config.model.text.context_length))
  mean, std = augment.normalisation(config.data)
  size = config.model.image.image_size
  ours["pixels"] = augment.normalize(
      np.stack([augment.center_crop_resize(i, size) for i in _images()]), mean, std)
  apply = jax.jit(model.apply, static_argnames="method")
  ours["text"] = np.asarray(apply({"params": params}, ours["ids"], method=model.encode_text))
  ours["image"] = np.asarray(apply({"params": params}, ours["pixels"],
                                   method=model.encode_image))
  return ours


def _swapped(ids: np.ndarray, a: int = 2, b: int = 1023) -> np.ndarray:
  """Our ids with a and b exchanged, as the HF export renumbers end-of-text."""
  return np.where(ids == a, b, np.where(ids == b, a, ids))


def _close(theirs, ours):
  ours = np.asarray(ours)
  assert np.abs(ours).max() > 0.1  # Not trivially small.
  np.testing.assert_allclose(np.asarray(theirs), ours, rtol=0,
                             atol=float32_sum_atol(ours, TERMS))


def test_hf_export_tokenizer_adds_bos_eos_and_pads(run):
  import tokenizers  # pylint: disable=g-import-not-at-top

  expected = _swapped(run["ids"])
  raw = tokenizers.Tokenizer.from_file(str(run["hf"] / "tokenizer.json"))
  np.testing.assert_array_equal([e.ids for e in raw.encode_batch(TEXTS)], expected)
  assert raw.encode(TEXTS[3]).ids[-1] == 1023  # Cut text keeps its end-of-text token.
  auto = transformers.AutoTokenizer.from_pretrained(str(run["hf"]))
  batch = auto(TEXTS, padding="max_length", truncation=True, return_tensors="np")
  np.testing.assert_array_equal(batch["input_ids"], expected)
  assert sorted(batch) == ["attention_mask", "input_ids"]
  assert auto.decode(batch["input_ids"][0], skip_special_tokens=True).strip() == TEXTS[0]


def test_hf_export_image_processor_is_our_evaluation_view(run):
  processor = transformers.CLIPImageProcessor.from_pretrained(str(run["hf"]))
  pixels = processor(images=list(_images()), return_tensors="np")["pixel_values"]
  # Both resize with pillow's bicubic filter; normalising divides by std in float32.
  np.testing.assert_allclose(pixels.transpose(0, 2, 3, 1), run["pixels"], rtol=0, atol=1e-5)


def test_hf_export_loads_in_flax_clip_with_our_embeddings(run):
  hf = transformers.FlaxCLIPModel.from_pretrained(str(run["hf"]))
  ids = _swapped(run["ids"])
  _close(hf.get_text_features(ids, attention_mask=(ids != 0).astype(np.int32)), run["text"])
  _close(hf.get_image_features(run["pixels"].transpose(0, 3, 1, 2)), run["image"])


def _torch_python() -> str:
  python = os.environ.get("MMIE_TORCH_PYTHON")
  if python:
    assert os.access(python, os.X_OK), f"MMIE_TORCH_PYTHON={python} is not executable"
    return python
  local = os.path.join(ROOT, ".venv-bench", "bin", "python")
  if not os.access(local, os.X_OK):
    pytest.skip("needs a PyTorch venv: python -m venv .venv-bench && .venv-bench/bin/pip "
                "install -r requirements-bench.txt (CI builds it and sets MMIE_TORCH_PYTHON)")
  return local


def _siglip_export(out_dir):
  """An untrained tiny SigLIP (random params, logit bias) exported to open_clip, with its
  model inputs and our embeddings of them."""
  from mmie import models  # pylint: disable=g-import-not-at-top
  from mmie.configs import siglip  # pylint: disable=g-import-not-at-top
  from mmie.models import open_clip_export  # pylint: disable=g-import-not-at-top

  config = config_lib.validate(siglip.get_config("tiny"))
  model = models.build_model(config.model)
  images, tokens = models.example_inputs(config.model, batch_size=2)
  params = models.unbox(model.init(jax.random.key(1), images, tokens)["params"])
  open_clip_export.export_open_clip(config.model, params, config.data,
                                    spec.tokenizer_path_for(config.data), str(out_dir))
  pixels = np.random.default_rng(1).normal(size=images.shape).astype(np.float32)
  ids = spec.tokenizer_for(config.data).encode(TEXTS, config.model.text.context_length)
  apply = jax.jit(model.apply, static_argnames="method")
  return dict(pixels=pixels, ids=ids, bias=np.asarray(params["logit_bias"]),
              image=np.asarray(apply({"params": params}, pixels, method=model.encode_image)),
              text=np.asarray(apply({"params": params}, ids, method=model.encode_text)))


def test_pytorch_and_open_clip_load_the_exports_with_our_embeddings(run, tmp_path):
  siglip = _siglip_export(tmp_path / "siglip")
  np.savez(tmp_path / "in.npz", images=_images(), texts=np.asarray(TEXTS),
           sig_pixels=siglip["pixels"], sig_ids=siglip["ids"])
  result = subprocess.run(
      [_torch_python(), os.path.join(ROOT, "tests", "interop_torch.py"),
       str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), str(run["hf"]),
       str(run["open_clip"]), str(tmp_path / "siglip")], capture_output=True, text=True,
      timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / "out.npz")
  np.testing.assert_array_equal(out["hf_ids"], _swapped(run["ids"]))
  np.testing.assert_array_equal(out["hf_raw_ids"], _swapped(run["ids"]))
  np.testing.assert_array_equal(out["oc_ids"], run["ids"])  # open_clip pools at eos_id 2.
  for key in ("hf_pixels", "oc_pixels"):
    np.testing.assert_allclose(out[key].transpose(0, 2, 3, 1), run["pixels"], rtol=0,
                               atol=1e-5)
  for prefix in ("hf", "oc"):
    _close(out[f"{prefix}_text"], run["text"])
    _close(out[f"{prefix}_image"], run["image"])
  for key in ("hf_logit_scale", "oc_logit_scale"):
    assert out[key].shape == ()
    assert out[key] == np.asarray(run["params"]["logit_scale"])
  _close(out["sig_image"], siglip["image"])
  _close(out["sig_text"], siglip["text"])
  assert out["sig_logit_bias"] == siglip["bias"]


def _initial_params(init_from, **model_overrides):
  """The params a tiny CLIP run starts from with ``init_from`` (no step taken)."""
  cfg = clip_config.get_config("tiny")
  cfg.init_from = init_from
  for key, value in model_overrides.items():
    cfg.model.text[key] = value
  run = setup.build_run(config_lib.validate(cfg))
  state = setup.init_state(run, setup.build_stage(run, run.stages[0]))
  return jax.device_get(state.params)


def _equal(actual, desired):
  jax.tree_util.tree_map(np.testing.assert_array_equal, actual, desired)


def test_init_from_an_export_or_a_run_gives_back_the_trained_params(run):
  trained_params = jax.device_get(run["params"])
  _equal(_initial_params(f"hf:{run['hf']}"), trained_params)
  _equal(_initial_params(f"mmie:{run['workdir']}"), trained_params)
  _, _, at_3, _ = trained.load_trained(str(run["workdir"]), step=3)
  _equal(_initial_params(f"mmie:{run['workdir']}@3"), jax.device_get(at_3))
  _equal(_initial_params(f"mmie:{run['workdir']}/checkpoints/3"), jax.device_get(at_3))
  image_only = _initial_params(ml_collections.ConfigDict({"image": f"hf:{run['hf']}"}))
  _equal(image_only["image"], trained_params["image"])
  assert not np.array_equal(image_only["text"]["token_embed"]["embedding"],
                            trained_params["text"]["token_embed"]["embedding"])


def test_init_from_fails_loudly_on_another_architecture(run):
  with pytest.raises(config_lib.ConfigError, match="does not fit the configured model.*"
                     "with another shape"):
    _initial_params(f"hf:{run['hf']}", mlp_dim=48)
  with pytest.raises(config_lib.ConfigError, match="has no checkpoint at step 5"):
    _initial_params(f"mmie:{run['workdir']}@5")
  with pytest.raises(config_lib.ConfigError, match="is one tower; name the subtree"):
    _initial_params(f"vit:{run['hf']}")


def test_loaded_tower_frozen_by_a_param_rule_stays_loaded(run, tmp_path):
  """LiT's recipe with weights from an export: the image tower loaded and frozen."""
  workdir = tmp_path / "lit"
  result = _run("main.py", "--config=configs/clip.py:tiny", f"--workdir={workdir}",
                f"--config.init_from=hf:{run['hf']}",
                "--config.param_rules=(('image/.*', 'frozen'), ('(?!image/).*', 1.0))")
  assert result.returncode == 0, result.stderr[-3000:]
  _, _, params, _ = trained.load_trained(str(workdir))
  params, start = jax.device_get(params), jax.device_get(run["params"])
  _equal(params["image"], start["image"])
  assert not np.array_equal(params["text"]["token_embed"]["embedding"],
                            start["text"]["token_embed"]["embedding"])


def test_export_refuses_what_it_cannot_write(run, tmp_path, monkeypatch):
  from mmie import export  # pylint: disable=g-import-not-at-top
  from mmie.configs import vit_classify  # pylint: disable=g-import-not-at-top

  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("mine")
  with pytest.raises(ValueError, match="is not empty"):
    export.export_run(str(run["workdir"]), str(tmp_path / "full"))
  assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
  bad = _run("-m", "mmie.export", f"--workdir={tmp_path / 'nowhere'}",
             f"--out={tmp_path / 'out'}")
  assert bad.returncode == 2 and "config.json does not exist" in bad.stderr
  classifier = config_lib.validate(vit_classify.get_config("tiny"))
  monkeypatch.setattr(trained, "load_trained", lambda *a, **k: (classifier, None, {}, 0))
  with pytest.raises(ValueError, match="two-tower CLIP/SigLIP models only"):
    export.export_run("unused", str(tmp_path / "vit"))
