"""Weights load only from safetensors and Flax msgpack files inside the folder given: a PyTorch
pickle (``pytorch_model.bin``) is refused unread, and a sharded index cannot point elsewhere."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.numpy

from mmie.models import hf_io
from tests.hostile import pickled_payload



def test_a_pytorch_pickle_is_refused_and_never_unpickled(tmp_path):
  marker = tmp_path / "code_ran"
  folder = tmp_path / "ckpt"
  folder.mkdir()
  (folder / "pytorch_model.bin").write_bytes(pickled_payload(marker))
  with pytest.raises(FileNotFoundError, match=r"\.bin checkpoints are not supported"):
    hf_io.read_params(str(folder))
  assert not marker.exists()


def _index(folder, shards: dict[str, str]) -> None:
  with open(folder / hf_io.SAFE_INDEX, "w") as f:
    json.dump({"metadata": {"format": "flax"}, "weight_map": shards}, f)


def test_a_sharded_index_reads_its_own_shards_and_refuses_paths_out(tmp_path):
  weights = {"a.kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}
  folder = tmp_path / "ckpt"
  folder.mkdir()
  safetensors.numpy.save_file(weights, str(folder / "part-1.safetensors"),
                              metadata={"format": "flax"})
  _index(folder, {"a.kernel": "part-1.safetensors"})
  np.testing.assert_array_equal(hf_io.read_params(str(folder))["a/kernel"], weights["a.kernel"])

  safetensors.numpy.save_file(weights, str(tmp_path / "elsewhere.safetensors"),
                              metadata={"format": "flax"})
  os.symlink(tmp_path / "elsewhere.safetensors", folder / "link.safetensors")
  for shard in ("../elsewhere.safetensors", str(tmp_path / "elsewhere.safetensors"),
                "link.safetensors"):
    _index(folder, {"a.kernel": shard})
    with pytest.raises(ValueError, match="outside"):
      hf_io.read_params(str(folder))
