"""Retrieval and zero-shot metrics against hand-computed cases."""

import numpy as np
import pytest

from mmie.evaluate import class_embeddings, retrieval_metrics, zeroshot_metrics


def test_hand_computed_recall():
  # Image 0 and 1 find their captions first; image 2's caption is ranked third.
  image = np.eye(3, dtype=np.float32)
  text = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0.5, 0.1]], np.float32)
  m = retrieval_metrics(image, text, ks=(1, 2, 3))
  # i2t ranks: image0 -> [1, 0, .6] caption0 best (rank 0); image1 -> rank 0;
  # image2 -> scores [0, 0, .1]: caption 2 best, rank 0.
  assert m["i2t_recall@1"] == pytest.approx(100.0)
  # t2i: caption2 scores images [.6, .5, .1] -> its image is third (rank 2).
  assert m["t2i_recall@1"] == pytest.approx(200 / 3)
  assert m["t2i_recall@2"] == pytest.approx(200 / 3)
  assert m["t2i_recall@3"] == pytest.approx(100.0)
  assert m["t2i_median_rank"] == 1.0


def test_blocks_do_not_change_the_result():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(37, 8)).astype(np.float32)
  text = image + 0.8 * rng.normal(size=(37, 8)).astype(np.float32)
  whole = retrieval_metrics(image, text, block=64)
  blocked = retrieval_metrics(image, text, block=5)
  assert whole == blocked
  # Independent numpy: rank of the diagonal in each row of the full matrix.
  s = image @ text.T
  ranks = (s > np.diag(s)[:, None]).sum(1)
  assert whole["i2t_recall@5"] == pytest.approx(100 * np.mean(ranks < 5))


def test_several_captions_per_image():
  image = np.eye(2, dtype=np.float32)
  text = np.array([[0, 1.0], [1.0, 0], [0.9, 0.1]], np.float32)
  m = retrieval_metrics(image, text, np.array([0, 0, 1]), ks=(1,))
  assert m["i2t_recall@1"] == 50.0  # Image 0 finds caption 1 (its own); image 1 finds caption 0.
  assert m["t2i_recall@1"] == pytest.approx(100 / 3)


def test_perfect_classifier_zero_shot():
  rng = np.random.default_rng(1)
  prompts = rng.normal(size=(4, 3, 16))
  prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
  classes = class_embeddings(prompts)
  labels = np.array([0, 1, 2, 3, 2, 1])
  m = zeroshot_metrics(classes[labels], classes, labels, ks=(1, 5))
  assert m["zeroshot_top1"] == 100.0
  assert m["zeroshot_mean_per_class"] == 100.0
  assert "zeroshot_top5" not in m  # Only 4 classes.
  wrong = zeroshot_metrics(classes[(labels + 1) % 4], classes, labels, ks=(1,))
  assert wrong["zeroshot_top1"] == 0.0
