"""Each plot writes a readable PNG; PCA matches an eigendecomposition of the covariance."""

import json

import numpy as np
import pytest
from PIL import Image

from mmie.insight import plots


def _png(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    return image.size


@pytest.fixture(scope="module")
def embeddings():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(12, 8))
  image /= np.linalg.norm(image, axis=1, keepdims=True)
  text = image + 0.2 * rng.normal(size=image.shape)
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  return image, text


def test_pca_matches_covariance_eigenvectors():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 4)) * np.array([5.0, 2.0, 1.0, 0.1])
  coords, ratio = plots.pca_2d(x)
  centred = x - x.mean(0)
  values, vectors = np.linalg.eigh(np.cov(centred.T))
  top = vectors[:, ::-1][:, :2]
  np.testing.assert_allclose(np.abs(coords), np.abs(centred @ top), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(ratio, values[::-1][:2] / values.sum(), rtol=1e-6)


def test_training_curves_from_metrics_jsonl(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [{"step": s, "loss": 3.0 / s, "learning_rate": 1e-3, "grad_norm": 1.0 / s}
           for s in range(1, 6)]
  lines.append({"step": 5, "eval/i2t_recall@1": 12.0, "eval/zeroshot_top1": 30.0})
  path.write_text("\n".join(json.dumps(r) for r in lines) + "\n{cut off")
  records = plots.read_metrics(str(path))
  assert len(records) == 6  # The truncated last line is skipped.
  width, height = _png(plots.plot_training_curves(records, str(tmp_path / "curves.png")))
  assert width > 400 and height > 200
  with pytest.raises(ValueError, match="none of the plotted metrics"):
    plots.plot_training_curves([{"step": 1, "other": 2}], str(tmp_path / "x.png"))


def test_array_plots_write_pngs(tmp_path, embeddings):
  image, text = embeddings
  captions = [f"caption {i}" for i in range(12)]
  pictures = np.random.default_rng(2).uniform(size=(12, 16, 16, 3))
  paths = [
      plots.plot_similarity_matrix(image, text, captions, str(tmp_path / "sim.png"), n=6),
      plots.plot_retrieval_grid(pictures, captions, image, text, str(tmp_path / "grid.png"),
                                queries=(0, 3), k=4),
      plots.plot_embedding_pca(image, text, str(tmp_path / "pca.png")),
      plots.plot_attributions(pictures[:2], captions[:2],
                              {"rollout": np.ones((2, 4, 4)) / 16,
                               "ig": np.random.default_rng(3).normal(size=(2, 4, 4))},
                              [["a", "cat"], ["dog"]], [np.array([0.2, -0.1]), np.array([0.3])],
                              str(tmp_path / "attr.png")),
  ]
  for path in paths:
    assert min(_png(path)) > 100
  with pytest.raises(ValueError, match="2 token labels but scores of shape"):
    plots.plot_attributions(pictures[:1], captions[:1], {}, [["a", "b"]], [np.ones(3)],
                            str(tmp_path / "bad.png"))
