"""Source call-strings, mixtures, caption sampling, cache equivalence, TFDS-by-name."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmie.data import pipeline, prepare, sources


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory) -> str:
  """Six solid-colour images, each with three captions 'image K caption J'."""
  root = tmp_path_factory.mktemp("captions")
  rows = []
  for k in range(6):
    Image.fromarray(np.full((16, 16, 3), 40 * k, np.uint8)).save(root / f"{k}.png")
    rows += [{"file": f"{k}.png", "caption": f"image {k} caption {j}"} for j in range(3)]
  (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(root)


def test_parse_mixture_terms_and_weights():
  assert sources.parse_mixture("emoji") == [("emoji", 1.0)]
  assert sources.parse_mixture("emoji + folder(path='a + b') * 3 + fashion_mnist * 0.5") == [
      ("emoji", 1.0), ("folder(path='a + b')", 3.0), ("fashion_mnist", 0.5)]
  with pytest.raises(ValueError, match="positive number"):
    sources.parse_mixture("emoji * -1")
  with pytest.raises(ValueError, match="does not parse"):
    sources.parse_mixture("emoji +")


def test_unknown_source_suggests_the_closest_name(make_data_config):
  with pytest.raises(KeyError, match="Did you mean 'emoji'"):
    sources.sources_for(make_data_config(name="emojj"))


def test_each_epoch_draws_a_random_caption_per_image(make_data_config, caption_folder):
  config = make_data_config(name=f"folder(path='{caption_folder}', validation_fraction=0.0)")
  tok = pipeline.tokenizer_for(config)
  stream = pipeline.build_train_iterator(config, batch_size=6, seed=0)
  seen = collections.defaultdict(list)  # image -> caption index drawn in each epoch
  for _ in range(40):
    for text in next(stream)["text"]:
      words = tok.decode(text).split()
      seen[int(words[1])].append(int(words[3]))
  assert sorted(seen) == list(range(6)) and all(len(v) == 40 for v in seen.values())
  for draws in seen.values():  # Every caption is used, roughly uniformly (40 draws of 3).
    assert min(collections.Counter(draws)[j] for j in range(3)) >= 5


def test_eval_split_keeps_every_caption_with_its_image(make_data_config, caption_folder):
  config = make_data_config(name=f"folder(path='{caption_folder}', validation_fraction=0.0)")
  split = pipeline.load_eval_split(config, "train")
  assert split["image"].shape[0] == 6 and split["text"].shape[0] == 18
  for caption, owner in zip(split["captions"], split["text_image_ids"]):
    colour = (split["image"][owner, 0, 0] * np.array(pipeline.augment.CLIP_STD)
              + np.array(pipeline.augment.CLIP_MEAN)) * 255
    assert round(float(colour[0]) / 40) == int(caption.split()[1])


def test_mixture_interleaves_in_proportion_to_weight_times_size(make_data_config, caption_folder):
  folder = f"folder(path='{caption_folder}', validation_fraction=0.0)"
  config = make_data_config(name=f"emoji + {folder} * 50", train_split="train")
  tok = pipeline.tokenizer_for(config)
  batches = [next(it) for it in [pipeline.build_train_iterator(config, batch_size=64, seed=0)]
             for _ in range(8)]
  from_folder = sum(tok.decode(t).startswith(" image") or tok.decode(t).startswith("image")
                    for b in batches for t in b["text"])
  expected = 512 * (50 * 6) / (50 * 6 + 1717)  # weight x size: 300 vs 1717 emoji.
  assert abs(from_folder - expected) < 0.1 * expected + 3


def test_cache_does_not_change_the_stream(make_data_config):
  aug = {"random_flip": True, "random_resized_crop": True}
  cached = make_data_config(augment=aug, cache_mb=1024)
  uncached = make_data_config(augment=aug, cache_mb=0)
  for a, b in zip([next(it) for it in [pipeline.build_train_iterator(cached, batch_size=16, seed=5)]
                   for _ in range(3)],
                  [next(it) for it in [pipeline.build_train_iterator(uncached, batch_size=16, seed=5)]
                   for _ in range(3)]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["text"], b["text"])


class MmieTestCaptions(tfds.core.GeneratorBasedBuilder):
  """A tiny TFDS dataset standing in for coco_captions (nested caption texts)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        "label": tfds.features.ClassLabel(names=["Red", "Blue"]),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(4), "test": self._generate_examples(2)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": Image.fromarray(np.full((8, 8, 3), i, np.uint8)),
                "captions": {"text": [f"thing {i}", f"other {i}"]}, "label": i % 2}


def test_any_tfds_dataset_by_name_with_text_or_label_keys(make_data_config, tmp_path):
  base = "tfds(name='mmie_test_captions', eval_split='test'"
  config = make_data_config(name=base + ", text_key='captions/text')", data_dir=str(tmp_path))
  split = pipeline.load_eval_split(config)
  assert sorted(split["captions"]) == ["other 0", "other 1", "thing 0", "thing 1"]
  for caption, owner in zip(split["captions"], split["text_image_ids"]):
    assert split["captions"][2 * owner].split()[1] == caption.split()[1]  # Same image.
  assert split["class_names"] == [] and split["text"].shape[0] == 4
  labelled = make_data_config(name=base + ", label_key='label', templates=('a {} one',))",
                              data_dir=str(tmp_path))
  split = pipeline.load_eval_split(labelled)
  assert split["class_names"] == ["red", "blue"]
  assert sorted(split["captions"]) == ["a Blue one", "a Red one"]
  batch = next(pipeline.build_train_iterator(labelled, batch_size=2, seed=0))
  assert batch["image"].shape == (2, 32, 32, 3)
  with pytest.raises(ValueError, match="has splits"):
    sources.sources_for(make_data_config(name="tfds(name='mmie_test_captions', label_key='label')",
                                         data_dir=str(tmp_path)))


def test_prepare_command_line(caption_folder, tmp_path, capsys):
  prepare.main([f"--source=folder(path='{caption_folder}')", f"--out={tmp_path}"])
  printed = capsys.readouterr().out
  assert "kept=6" in printed and "duplicate=0" in printed
  assert sources.read_prepared(str(tmp_path)).splits
  with pytest.raises(ValueError, match="needs no preparation"):
    prepare.main(["--source=emoji", f"--out={tmp_path}"])


def test_mixture_resumes_exactly(make_data_config, caption_folder):
  config = make_data_config(name=f"emoji + folder(path='{caption_folder}', validation_fraction=0.0) * 20")
  straight = pipeline.build_train_iterator(config, batch_size=8, seed=2)
  for _ in range(3):
    next(straight)
  state = json.loads(json.dumps(straight.get_state()))
  expected = [next(straight) for _ in range(2)]
  resumed = pipeline.build_train_iterator(config, batch_size=8, seed=2)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["text"], want["text"])


def test_one_catalog_of_sources_of_both_kinds():
  """``data.name`` resolves through one catalog: image-text, parallel-text and text-record
  sources alike."""
  # pylint: disable=g-import-not-at-top
  from mmie.data import catalog, parallel, sources, text_records
  assert set(catalog.CATALOG) == (set(sources.SOURCES) | set(parallel.PAIR_SOURCES)
                                  | set(text_records.RECORD_SOURCES))
  assert catalog.kind_of("emoji + folder(path='x') * 3") == "image_text"
  assert catalog.kind_of("sword") == "parallel_text"
  assert catalog.kind_of("sword_text + jsonl(path='x')") == "text_records"
  with pytest.raises(KeyError, match="unknown data source 'swrod'. Did you mean 'sword'"):
    catalog.kind_of("swrod")
