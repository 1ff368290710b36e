"""notebooks/quickstart.ipynb runs top to bottom (so it never goes stale) and shows its plots."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_executes(monkeypatch):
  # The kernel inherits the environment: share the tests' compilation cache with it.
  cache = os.environ.get("MMIE_TEST_JAX_CACHE", os.path.join(ROOT, ".jax_cache"))
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.path.abspath(cache))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 5  # Curves, similarity, retrieval grid, PCA, attributions.
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "Final evaluation:" in text and "eval/i2t_recall@1" in text
