"""The matching evaluator on a tiny random FusionModel: ITM accuracy and re-ranked recall
equal a NumPy transcription built from the model's own N x N match logits, and re-ranking
never changes recall at k = rerank_k (it permutes a fixed candidate set)."""

import ml_collections
import numpy as np
import pytest

from mmie.configs import clip
from mmie.evaluate import EvalContext
from mmie.evaluate import matching
from mmie.models import fusion
from tests.model_utils import random_params

N, LENGTH, RERANK_K = 12, 16, 4
SPEC = {"type": "matching", "split": "validation", "batch_size": 8, "ks": (1, 2, 4, 5),
        "rerank_k": RERANK_K, "prefix": "eval/"}


def _split(seed: int = 0) -> dict[str, np.ndarray]:
  """N random images and N captions [BOS, words..., EOS, pad...] of random lengths."""
  rng = np.random.default_rng(seed)
  text = np.zeros((N, LENGTH), np.int32)
  for i, length in enumerate(rng.integers(3, LENGTH - 1, size=N)):
    text[i, 0], text[i, 1:length], text[i, length] = 1, rng.integers(3, 1024, length - 1), 2
  image = rng.normal(size=(N, 32, 32, 3)).astype(np.float32)
  return {"image": image, "text": text, "label": -np.ones(N, np.int32), "class_names": []}


def _context(model, split):
  return EvalContext(ml_collections.ConfigDict(), model, load_split=lambda name: split,
                     encode_prompts=lambda *_: None, decode=lambda ids: "")


def _model() -> fusion.FusionModel:
  config = clip.get_config("tiny").model
  del config.logit_bias_init
  config.name = "fusion"
  config.fusion = ml_collections.ConfigDict(dict(kind="cross_attention", depth=1, num_heads=2,
                                                 mlp_dim=32))
  return fusion.build_fusion_model(config)


def _reference(model, params, split):
  """(similarity [N, N], match probability [N, N]) of every image-text pair, in one call each."""
  out = model.apply({"params": params}, split["image"], split["text"], None, train=False,
                    method="encode")
  similarity = np.asarray(out["image_emb"], np.float64) @ np.asarray(out["text_emb"]).T
  rows, cols = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
  logits = model.apply({"params": params}, out["image_tokens"][rows.ravel()],
                       out["text_tokens"][cols.ravel()], out["text_valid"][cols.ravel()],
                       train=False, method="match")
  logits = np.asarray(logits, np.float64).reshape(N, N, 2)
  probs = np.exp(logits[..., 1]) / np.exp(logits).sum(-1)  # Softmax, class 1 = match.
  return similarity, probs


def _numpy_rerank(scores: np.ndarray, probs: np.ndarray, k: int, depth: int) -> float:
  """Recall@k (percent) of query i (row) finding key i after re-ranking its top ``depth``."""
  top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
  found = 0
  for i, candidates in enumerate(top):
    reranked = candidates[np.argsort(-probs[i, candidates], kind="stable")]
    found += i in reranked[:k]
  return 100.0 * found / len(scores)


@pytest.fixture(scope="module")
def run():
  """One model, one evaluator, one evaluation and the NumPy reference (compiled once)."""
  model, split = _model(), _split()
  params = random_params(model, split["image"][:2], split["text"][:2])
  evaluate = matching.matching(dict(SPEC), _context(model, split))
  similarity, probs = _reference(model, params, split)
  return evaluate, evaluate(params), similarity, probs


def test_metric_names_and_chance(run):
  evaluate, metrics, _, _ = run
  for direction in ("i2t", "t2i"):
    for k in (1, 2, 4, 5):
      assert f"{direction}_recall@{k}" in metrics
    for k in (1, 2, 4):
      assert f"itm_{direction}_recall@{k}" in metrics
      assert f"rerank_gain_{direction}@{k}" in metrics
    assert f"itm_{direction}_recall@5" not in metrics  # 5 > rerank_k: not re-ranked.
    assert f"{direction}_median_rank" in metrics
  assert "itm_accuracy" in metrics
  assert all(0.0 <= metrics[k] <= 100.0 for k in metrics if "recall" in k or "accuracy" in k)
  assert evaluate.chance["recall@1"] == pytest.approx(100 / N)
  assert evaluate.chance["itm_accuracy"] == 50.0


def test_reranked_recall_matches_numpy(run):
  _, metrics, similarity, probs = run
  for k in (1, 2, 4):
    assert metrics[f"itm_i2t_recall@{k}"] == pytest.approx(
        _numpy_rerank(similarity, probs, k, RERANK_K))
    assert metrics[f"itm_t2i_recall@{k}"] == pytest.approx(
        _numpy_rerank(similarity.T, probs.T, k, RERANK_K))
    for direction in ("i2t", "t2i"):
      assert metrics[f"rerank_gain_{direction}@{k}"] == pytest.approx(
          metrics[f"itm_{direction}_recall@{k}"] - metrics[f"{direction}_recall@{k}"])


def test_itm_accuracy_matches_numpy(run):
  _, metrics, similarity, probs = run
  hardest = np.where(np.eye(N, dtype=bool), -np.inf, similarity).argmax(1)
  correct = np.sum(np.diag(probs) > 0.5) + np.sum(probs[np.arange(N), hardest] <= 0.5)
  assert metrics["itm_accuracy"] == pytest.approx(100.0 * correct / (2 * N))


def test_recall_at_rerank_k_cannot_change(run):
  _, metrics, similarity, probs = run
  for direction in ("i2t", "t2i"):
    assert metrics[f"itm_{direction}_recall@{RERANK_K}"] == metrics[
        f"{direction}_recall@{RERANK_K}"]
    assert metrics[f"rerank_gain_{direction}@{RERANK_K}"] == 0.0
  # Not vacuous: the fusion model does reorder some query's candidates.
  top = np.argsort(-similarity, axis=1, kind="stable")[:, :RERANK_K]
  reordered = [np.argsort(-probs[i, c], kind="stable") for i, c in enumerate(top)]
  assert any((order != np.arange(RERANK_K)).any() for order in reordered)


def test_several_captions_per_image_against_numpy():
  """Texts 2i and 2i+1 describe image i: recall counts either caption, as retrieval does."""
  model, split = _model(), _split(1)
  owners = np.arange(N) // 2
  split = {**split, "image": split["image"][:N // 2], "text_image_ids": owners}
  params = random_params(model, split["image"][:2], split["text"][:2])
  metrics = matching.matching(dict(SPEC, ks=(1, 2)), _context(model, split))(params)
  image_split = {**split, "image": split["image"][owners]}  # Image of every caption, [N].
  similarity, probs = _reference(model, params, image_split)
  similarity, probs = similarity[::2], probs[::2]  # Rows: the N/2 distinct images.
  for k in (1, 2):
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :RERANK_K]
    hits = [np.isin(np.flatnonzero(owners == i),
                    c[np.argsort(-probs[i, c], kind="stable")][:k]).any()
            for i, c in enumerate(top)]
    assert metrics[f"itm_i2t_recall@{k}"] == pytest.approx(100.0 * np.mean(hits))
    top = np.argsort(-similarity.T, axis=1, kind="stable")[:, :RERANK_K]
    hits = [owners[t] in c[np.argsort(-probs[c, t], kind="stable")][:k]
            for t, c in enumerate(top)]
    assert metrics[f"itm_t2i_recall@{k}"] == pytest.approx(100.0 * np.mean(hits))
  hardest = np.where(owners[None, :] == np.arange(N // 2)[:, None], -np.inf,
                     similarity).argmax(1)
  correct = (np.sum(probs[owners, np.arange(N)] > 0.5)
             + np.sum(probs[owners, hardest[owners]] <= 0.5))
  assert metrics["itm_accuracy"] == pytest.approx(100.0 * correct / (2 * N))


def test_a_split_with_one_image_is_rejected():
  split = _split()
  split = {**split, "image": split["image"][:1], "text_image_ids": np.zeros(N, np.int32)}
  with pytest.raises(ValueError, match="at least 2 images"):
    matching.matching(dict(SPEC), _context(_model(), split))
