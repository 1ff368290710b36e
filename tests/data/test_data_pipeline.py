"""The grain pipeline: shapes, determinism from the seed, exact resume, disjoint host shards."""

from __future__ import annotations

import json
import itertools

import numpy as np
import pytest

from mmie.data import augment, pipeline
from mmie.data.records import LazyImages, Records


def take(iterator, n: int) -> list[dict]:
  return [next(iterator) for _ in range(n)]


def fingerprints(batches: list[dict]) -> list[bytes]:
  """One id per example: its image and text bytes (unaugmented, these identify a record)."""
  return [b["image"][i].tobytes() + b["text"][i].tobytes()
          for b in batches for i in range(len(b["text"]))]


def assert_same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["text"], y["text"])


def test_batch_shapes_dtypes_and_token_layout(make_data_config):
  batch = next(pipeline.build_train_iterator(make_data_config(), batch_size=8, seed=0))
  assert set(batch) == {"image", "text"}
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["text"].shape == (8, 16) and batch["text"].dtype == np.int32
  assert (batch["text"][:, 0] == 1).all() and ((batch["text"] == 2).sum(axis=1) == 1).all()


def test_same_seed_same_batches_other_seed_other_order(make_data_config):
  config = make_data_config()
  a = take(pipeline.build_train_iterator(config, batch_size=8, seed=3), 3)
  b = take(pipeline.build_train_iterator(config, batch_size=8, seed=3), 3)
  c = take(pipeline.build_train_iterator(config, batch_size=8, seed=4), 3)
  assert_same(a, b)
  assert fingerprints(a) != fingerprints(c)


def test_each_epoch_is_a_new_permutation_of_the_whole_split(make_data_config):
  config = make_data_config(train_split="validation")  # 189 records: quick epochs.
  evaluation = pipeline.load_eval_split(config, "validation")
  everything = sorted(e.tobytes() + t.tobytes() for e, t in zip(evaluation["image"], evaluation["text"]))
  n = len(everything)
  stream = fingerprints(take(pipeline.build_train_iterator(config, batch_size=1, seed=0), 2 * n))
  first, second = stream[:n], stream[n:]
  assert sorted(first) == everything and sorted(second) == everything
  assert first != second


def test_resume_from_state_continues_with_the_same_batches(make_data_config):
  config = make_data_config(augment={"random_flip": True, "random_resized_crop": True})
  straight = pipeline.build_train_iterator(config, batch_size=4, seed=1)
  take(straight, 5)
  state = json.loads(json.dumps(straight.get_state()))  # Must survive a JSON checkpoint.
  expected = take(straight, 3)
  resumed = pipeline.build_train_iterator(config, batch_size=4, seed=1)
  resumed.set_state(state)
  assert_same(take(resumed, 3), expected)


def test_process_indices_read_disjoint_shards_covering_the_split(make_data_config):
  config = make_data_config(train_split="validation")
  evaluation = pipeline.load_eval_split(config, "validation")
  everything = sorted(e.tobytes() + t.tobytes() for e, t in zip(evaluation["image"], evaluation["text"]))
  n = len(everything)
  shards = []
  for index in range(2):
    iterator = pipeline.build_train_iterator(config, batch_size=2, seed=0, process_index=index,
                                             process_count=2)
    shards.append(fingerprints(take(iterator, len(range(index, n, 2)))))
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == everything


def test_flip_augmentation_is_per_example_and_seeded(make_data_config):
  plain = make_data_config(train_split="validation")
  flipped = make_data_config(train_split="validation", augment={"random_flip": True})
  a = take(pipeline.build_train_iterator(plain, batch_size=32, seed=0), 2)
  b = take(pipeline.build_train_iterator(flipped, batch_size=32, seed=0), 2)
  outcomes = []
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["text"], y["text"])  # Augmentation leaves order alone.
    for i in range(32):
      same = np.array_equal(x["image"][i], y["image"][i])
      mirrored = np.array_equal(x["image"][i][:, ::-1], y["image"][i])
      assert same or mirrored
      outcomes.append(mirrored and not same)
  assert 10 < sum(outcomes) < 54  # About half of 64, not all or none.


def test_batch_size_must_divide_by_process_count(make_data_config):
  with pytest.raises(ValueError, match="multiple of the process count 3"):
    pipeline.build_train_iterator(make_data_config(), batch_size=8, seed=0, process_count=3)


def test_eval_split_matches_the_raw_files(make_data_config, raw_emoji):
  images, rows = raw_emoji
  split = pipeline.load_eval_split(make_data_config())
  validation = {r["caption"]: (images[i], r) for i, r in enumerate(rows) if r["split"] == "validation"}
  assert sorted(split["captions"]) == sorted(validation)
  assert split["image"].dtype == np.float32 and split["text"].dtype == np.int32
  assert split["class_names"][0] == "smileys & emotion" and len(split["class_names"]) == 9
  mean, std = np.array(augment.CLIP_MEAN), np.array(augment.CLIP_STD)
  for caption, image, label in itertools.islice(zip(split["captions"], split["image"], split["label"]), 20):
    raw, row = validation[caption]
    np.testing.assert_allclose(image, (raw / 255.0 - mean) / std, atol=1e-5)
    assert split["class_names"][label] == row["category"].lower()


def test_encode_prompts_formats_each_class_with_each_template(make_data_config):
  config = make_data_config()
  prompts = pipeline.encode_prompts(config, ["flags", "objects"], ["{}", "an emoji of {}"])
  assert prompts.shape == (2, 2, 16) and prompts.dtype == np.int32
  tok = pipeline.tokenizer_for(config)
  np.testing.assert_array_equal(prompts[1, 1], tok.encode(["an emoji of objects"], 16)[0])
  with pytest.raises(ValueError, match="must contain"):
    pipeline.encode_prompts(config, ["flags"], ["no placeholder"])


@pytest.mark.slow  # Spawning two worker processes takes ~20 s on 2 cores.
def test_worker_processes_give_the_same_batches_and_resume(make_data_config):
  from absl import flags  # grain reads absl flags in workers; outside absl.app they must be parsed.

  flags.FLAGS.mark_as_parsed()
  config = make_data_config(augment={"random_flip": True, "random_resized_crop": True})
  expected = take(pipeline.build_train_iterator(config, batch_size=8, seed=0), 4)
  parallel = pipeline.build_train_iterator(make_data_config(worker_count=2, **{
      "augment": {"random_flip": True, "random_resized_crop": True}}), batch_size=8, seed=0)
  first = take(parallel, 2)
  state = json.loads(json.dumps(parallel.get_state()))
  assert_same(first + take(parallel, 2), expected)
  resumed = pipeline.build_train_iterator(make_data_config(worker_count=2, **{
      "augment": {"random_flip": True, "random_resized_crop": True}}), batch_size=8, seed=0)
  resumed.set_state(state)
  assert_same(take(resumed, 2), expected[2:])


def test_text_view_is_the_captions_of_the_image_text_view(make_data_config):
  """The LM's ``text`` view draws the same caption at the same stream position as the
  image-text view, without any image in the batch; resume is exact in it too."""
  config = make_data_config()
  image_text = take(pipeline.build_train_iterator(config, batch_size=8, seed=5), 3)
  stream = pipeline.build_train_iterator(config, batch_size=8, seed=5, view="text")
  text = take(stream, 2)
  state = stream.get_state()
  text.append(next(stream))
  assert all(set(b) == {"text"} for b in text)
  for a, b in zip(image_text, text):
    np.testing.assert_array_equal(a["text"], b["text"])
  resumed = pipeline.build_train_iterator(config, batch_size=8, seed=5, view="text")
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["text"], text[2]["text"])
  split = pipeline.load_eval_split(config, view="text")
  assert set(split) == {"text", "label", "captions", "class_names"}
  assert len(split["captions"]) == len(split["text"])


def test_a_view_of_the_wrong_kind_is_refused(make_data_config):
  with pytest.raises(ValueError, match="data view 'parallel_text' reads parallel-text"):
    pipeline.build_train_iterator(make_data_config(), batch_size=8, seed=0,
                                  view="parallel_text")
  with pytest.raises(ValueError, match="unknown data view 'pixels'"):
    pipeline.build_train_iterator(make_data_config(), batch_size=8, seed=0, view="pixels")


def test_lazy_eval_images_equal_the_decoded_split(make_data_config):
  config = make_data_config()
  eager = pipeline.load_eval_split(config)
  lazy = pipeline.load_eval_split(config, lazy_images=True)
  assert isinstance(lazy["image"], LazyImages)
  assert lazy["image"].shape == eager["image"].shape and len(lazy["image"]) == len(eager["label"])
  np.testing.assert_array_equal(lazy["image"][[3, 0, 5]], eager["image"][[3, 0, 5]])
  np.testing.assert_array_equal(np.asarray(lazy["image"]), eager["image"])
  for key in eager.keys() - {"image"}:
    np.testing.assert_array_equal(np.asarray(lazy[key]), np.asarray(eager[key]))


def test_lazy_images_decode_a_row_only_when_indexed():
  decoded = []

  def working(record: int) -> dict:
    decoded.append(record)
    return {"image": np.full((2, 2, 3), record, np.uint8)}

  images = LazyImages(Records(list(range(10)), working, cache=True),
                      lambda pixels: pixels.astype(np.float32) / 255.0, (2, 2, 3))
  window = images.window(8, 4)  # The padded last batch: rows 8, 9, 9, 9.
  assert decoded == [] and window.shape == (4, 2, 2, 3)
  np.testing.assert_array_equal(np.asarray(window)[:, 0, 0, 0] * 255.0, [8, 9, 9, 9])
  assert set(decoded) == {8, 9}
  # The index make_array_from_callback passes: a tuple of slices, one per dimension.
  part = images[(slice(2, 4), slice(None), slice(0, 1), slice(None))]
  assert part.shape == (2, 2, 1, 3) and set(decoded) == {2, 3, 8, 9}
  assert images[7].shape == (2, 2, 3) and set(decoded) == {2, 3, 7, 8, 9}
