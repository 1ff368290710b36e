"""PNG plots of a run: training curves, similarity matrix, retrieval grid, attribution overlays,
and a 2-D PCA of both modalities' embeddings.

Each ``plot_*`` function takes plain arrays, writes one PNG and returns its path, so it is easy
to test and to reuse; :func:`make_run_plots` makes all of them for a trained model
(the training loop calls it at the end, ``scripts/explain.py`` for an existing workdir).
Matplotlib runs on the Agg backend: no display is needed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_CURVE_PANELS = (
    ("loss", lambda k: k == "loss"),
    ("learning rate", lambda k: k == "learning_rate"),
    ("norms", lambda k: k in ("grad_norm", "update_norm")),
    ("retrieval recall (%)", lambda k: k.endswith("recall@1") or k.endswith("recall@5")),
    ("zero-shot / probe accuracy (%)", lambda k: k.endswith("_top1")),
    ("examples / s", lambda k: k == "examples_per_second"),
)


def _save(fig: Any, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` (a line cut by a kill is skipped)."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def plot_training_curves(records: Sequence[dict[str, Any]], path: str) -> str:
  """One panel per metric family present in ``records`` (loss, lr, norms, eval, throughput)."""
  panels = []
  for title, wanted in _CURVE_PANELS:
    keys = sorted({k for r in records for k in r if k != "step" and wanted(k)})
    if keys:
      panels.append((title, keys))
  if not panels:
    raise ValueError("plot_training_curves: the records hold none of the plotted metrics"
                     f" ({[t for t, _ in _CURVE_PANELS]}).")
  cols = min(3, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
  for ax, (title, keys) in zip(axes.flat, panels):
    for key in keys:
      points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3, label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    if title == "norms":
      ax.set_yscale("log")
    if len(keys) > 1:
      ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  return _save(fig, path)


def plot_similarity_matrix(image_emb: np.ndarray, text_emb: np.ndarray,
                           captions: Sequence[str], path: str, n: int = 24) -> str:
  """Heatmap of cosine similarities of the first ``n`` images (rows) and captions (columns)."""
  n = min(n, len(image_emb), len(text_emb))
  sims = image_emb[:n] @ text_emb[:n].T
  fig, ax = plt.subplots(figsize=(0.35 * n + 3, 0.35 * n + 2))
  im = ax.imshow(sims, cmap="viridis")
  ax.set_xticks(range(n), [c[:28] for c in captions[:n]], rotation=90, fontsize=7)
  ax.set_yticks(range(n), [f"image {i}" for i in range(n)], fontsize=7)
  ax.set_title("image-caption cosine similarity (diagonal = true pairs)")
  fig.colorbar(im, ax=ax, fraction=0.04)
  return _save(fig, path)


def plot_retrieval_grid(display_images: np.ndarray, captions: Sequence[str],
                        image_emb: np.ndarray, text_emb: np.ndarray, path: str, *,
                        queries: Sequence[int] = (0, 1, 2, 3, 4, 5), k: int = 5,
                        text_image_ids: np.ndarray | None = None) -> str:
  """Text->image retrieval: each row is a caption query and its top-``k`` images.

  The correct image has a green frame and a tick; wrong ones a grey frame.
  """
  owners = np.arange(len(text_emb)) if text_image_ids is None else np.asarray(text_image_ids)
  k = min(k, len(image_emb))
  fig, axes = plt.subplots(len(queries), k, figsize=(1.6 * k + 2.5, 1.7 * len(queries)),
                           squeeze=False)
  for row, q in enumerate(queries):
    top = np.argsort(-(text_emb[q] @ image_emb.T))[:k]
    for col, index in enumerate(top):
      ax = axes[row, col]
      ax.imshow(display_images[index])
      ax.set_xticks([])
      ax.set_yticks([])
      correct = index == owners[q]
      for spine in ax.spines.values():
        spine.set_edgecolor("limegreen" if correct else "lightgrey")
        spine.set_linewidth(4 if correct else 1)
      ax.set_title(("\u2713 " if correct else "") + f"#{col + 1}", fontsize=8,
                   color="green" if correct else "black")
    axes[row, 0].set_ylabel(captions[q][:24], rotation=0, ha="right", va="center", fontsize=8)
  fig.suptitle(f"text -> image retrieval, top {k} (green = the caption's image)")
  fig.tight_layout()
  return _save(fig, path)


def _overlay(ax: Any, image: np.ndarray, heat: np.ndarray, title: str) -> None:
  """``heat`` over ``image``: signed maps on a zero-centred diverging scale, others on inferno."""
  ax.imshow(image)
  size = image.shape[0]
  signed = float(np.min(heat)) < 0
  limit = float(np.max(np.abs(heat))) or 1.0
  ax.imshow(heat, cmap="RdBu_r" if signed else "inferno", alpha=0.55,
            vmin=-limit if signed else None, vmax=limit if signed else None,
            extent=(0, size, size, 0), interpolation="nearest")
  ax.set_title(title, fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_attributions(display_images: np.ndarray, captions: Sequence[str],
                      maps: dict[str, np.ndarray], token_labels: Sequence[Sequence[str]],
                      token_scores: Sequence[np.ndarray], path: str) -> str:
  """Per example: the image, one overlay per patch map (rollout, IG, ...), token bar chart.

  ``maps`` name -> [B, g, g]; ``token_labels[b]`` the caption's tokens and
  ``token_scores[b]`` their attributions, one per label.
  """
  b = len(display_images)
  cols = 2 + len(maps)
  fig, axes = plt.subplots(b, cols, figsize=(2.3 * cols + 1.5, 2.3 * b), squeeze=False)
  for i in range(b):
    axes[i, 0].imshow(display_images[i])
    axes[i, 0].set_title(captions[i], fontsize=8)
    axes[i, 0].axis("off")
    for j, (name, heat) in enumerate(maps.items()):
      _overlay(axes[i, j + 1], display_images[i], heat[i], name)
    ax = axes[i, -1]
    labels = list(token_labels[i])
    scores = np.asarray(token_scores[i], np.float64)
    if scores.shape != (len(labels),):
      raise ValueError(f"plot_attributions: example {i} has {len(labels)} token labels but"
                       f" scores of shape {scores.shape}.")
    ax.barh(range(len(labels)), scores, color=["tab:red" if s > 0 else "tab:blue"
                                               for s in scores])
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title("token attribution", fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Projection of rows onto the top-2 principal components, and their explained variance ratio."""
  centred = np.asarray(x, np.float64) - np.mean(x, axis=0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  variance = s ** 2
  return centred @ vt[:2].T, variance[:2] / max(variance.sum(), 1e-12)


def plot_embedding_pca(image_emb: np.ndarray, text_emb: np.ndarray, path: str,
                       pairs: int = 30) -> str:
  """Both modalities in one PCA plane; grey lines join the first ``pairs`` true pairs."""
  n = len(image_emb)
  coords, ratio = pca_2d(np.concatenate([image_emb, text_emb]))
  img, txt = coords[:n], coords[n:]
  fig, ax = plt.subplots(figsize=(6, 5))
  for i in range(min(pairs, n, len(txt))):
    ax.plot([img[i, 0], txt[i, 0]], [img[i, 1], txt[i, 1]], color="lightgrey", lw=0.6)
  ax.scatter(img[:, 0], img[:, 1], s=10, label="images", color="tab:orange")
  ax.scatter(txt[:, 0], txt[:, 1], s=10, label="captions", color="tab:blue")
  ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% var)")
  ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% var)")
  ax.set_title("embeddings, PCA of both modalities")
  ax.legend()
  return _save(fig, path)


def make_run_plots(workdir: str, config: Any, params: Any, model: Any, *,
                   examples: Sequence[int] | None = None) -> list[str]:
  """Writes every plot for a trained two-tower model into ``workdir/plots``; returns the paths.

  ``examples`` picks the evaluation-split indices used for the retrieval grid and the
  attribution overlays (default: the first six and four).
  """
  from mmie.insight import report  # The model-running half lives beside it.

  return report.make_run_plots(workdir, config, params, model, examples=examples)
