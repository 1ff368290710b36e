"""The AOT pod check: compiles from shapes alone, and its memory numbers mean what they say."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmie.configs import clip
from mmie import config as config_lib
from mmie.config import ConfigError
from mmie.models import build_model, unbox
from mmie.models.builder import example_inputs
from mmie.train import aot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = {"data": 2, "fsdp": 4}


def _tiny():
  return config_lib.validate(clip.get_config("tiny"))


@pytest.fixture(scope="module")
def report():
  return aot.aot_compile(_tiny(), MESH, 8)


def test_argument_bytes_are_the_sharded_state(report):
  """XLA's own argument size equals the per-device shards of state and batch: the compile
  really used the FSDP layout, and nothing was materialised whole."""
  (stage,) = report["stages"]
  assert stage["argument_bytes"] == stage["state_bytes"] + stage["batch_bytes"]
  # Independent count: adamw keeps two moments per parameter, so the unsharded state is
  # about 3x the parameters; FSDP over 4 devices must cut the per-device share well below.
  unsharded_state = 3 * report["params_bytes_unsharded"]
  assert stage["state_bytes"] < 0.5 * unsharded_state
  assert stage["params_bytes"] < 0.5 * report["params_bytes_unsharded"]
  # The donated state comes back in place: outputs alias (almost) all of it.
  assert stage["alias_bytes"] >= stage["params_bytes"]
  assert stage["peak_bytes"] >= stage["argument_bytes"]
  assert stage["flops"] and stage["flops"] > 0


def test_report_counts_and_table(report):
  config = _tiny()
  model = build_model(config.model)
  params = jax.eval_shape(lambda: unbox(model.init(jax.random.PRNGKey(0),
                                                   *example_inputs(config.model))["params"]))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert report["num_params"] == n_params
  assert report["mesh"] == {"data": 2, "fsdp": 4, "model": 1}
  assert report["per_device_batch"] == config.batch_size // 8
  table = aot.format_report(report)
  assert "arguments" in table and "est. peak" in table
  assert any(line.startswith("main ") for line in table.splitlines())


def test_lists_big_parameters_left_whole():
  """Two heads do not split over model=4, so the attention kernels stay whole (shapes only)."""
  from mmie import sharding
  from mmie.train import setup
  run = setup.build_run(_tiny(), mesh=sharding.make_mesh({"data": 2, "model": 4}))
  names = [name for name, _ in aot._replicated_params(run, top=100)]
  assert "image/encoder/layer_0/attention/query/kernel" in names
  assert not any("mlp/fc1/kernel" in n for n in names)  # mlp_dim 64 splits over 4.
  run = setup.build_run(_tiny(), mesh=sharding.make_mesh({"data": 8}))
  assert aot._replicated_params(run) == []  # Nothing could split them: nothing to report.


def test_bad_requests_fail_before_compiling():
  with pytest.raises(ConfigError, match="this process has 8 CPU devices"):
    aot.aot_compile(_tiny(), {"data": 16}, 16)
  with pytest.raises(ConfigError, match="not a stage"):
    aot.aot_compile(_tiny(), {"data": 8}, 8, stage="nope")
  with pytest.raises(ConfigError, match="Unknown mesh axis"):
    aot.aot_compile(_tiny(), {"data": 2, "tensor": 4}, 8)


def test_parse_mesh():
  assert aot.parse_mesh("data=8,fsdp=8") == {"data": 8, "fsdp": 8}
  assert aot.parse_mesh(" data=-1 , model=4 ") == {"data": -1, "model": 4}
  assert aot.mesh_device_count({"data": 8, "fsdp": 8}) == 64
  assert aot.mesh_device_count({"data": -1, "fsdp": 8}) is None
  assert aot.mesh_device_count({}) is None
  for bad in ("data8", "data=eight", "data=2,data=4", ""):
    with pytest.raises(ConfigError, match="--mesh"):
      aot.parse_mesh(bad)


def test_fake_devices_env():
  env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
  aot.fake_devices_env(64, env)
  assert env["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false"
                              " --xla_force_host_platform_device_count=64")
  assert env["JAX_PLATFORMS"] == "cpu"
  aot.fake_devices_env(64, env)  # Already agreeing: left as is.
  assert env["XLA_FLAGS"].count("device_count") == 1
  with pytest.raises(ConfigError, match="already sets"):
    aot.fake_devices_env(8, env)
  with pytest.raises(ConfigError, match="JAX_PLATFORMS"):
    aot.fake_devices_env(8, {"JAX_PLATFORMS": "tpu"})


def _cli(*args, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "mmie.train.aot", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_cli_refuses_conflicting_device_count():
  result = _cli("--config=configs/clip.py:tiny", "--mesh=data=2,fsdp=4",
                env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert result.returncode == 2, result.stderr
  assert "already sets --xla_force_host_platform_device_count=4 but --devices=8" in result.stderr


def test_cli_prints_table(report):
  """The command sets up its own fake devices (this subprocess has no conftest). It compiles
  the program the ``report`` fixture compiled, so the shared persistent cache serves it."""
  cache = {"JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
  result = _cli("--config=configs/clip.py:tiny", "--mesh=data=2,fsdp=4", env_extra=cache)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "AOT train step on 8 fake CPU devices, mesh data=2 fsdp=4 model=1" in result.stdout
  assert "global batch 16 (2 per data x fsdp shard)" in result.stdout
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("main ")]
  assert len(line.split()) == 1 + len(aot._COLUMNS) + 2  # Every column has a number.


@pytest.mark.slow
def test_b16_pod_preset_fits_a_16_gib_chip_on_64_devices(tmp_path):
  """configs/clip.py:b16 at batch 16,384 (data=8 x fsdp=8, 256 examples per chip) compiled
  from shapes for 64 chips: CLIP ViT-B/16's published size, and an estimated peak within a
  TPU v4/v5e chip's 16 GiB (at the preset's 32,768 it needs 256 chips: docs/scaling.md)."""
  out = tmp_path / "b16.json"
  result = _cli("--config=configs/clip.py:b16,batch=16384", "--devices=64", f"--json={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    report = json.load(f)
  assert report["mesh"] == {"data": 8, "fsdp": 8, "model": 1}
  assert report["per_device_batch"] == 16384 // 64
  # open_clip's ViT-B-16 has 149,620,737 parameters; ours differs only by the learnable
  # logit scale's parameterisation and biases of that kind (well under 0.1%).
  assert abs(report["num_params"] - 149_620_737) < 1.5e5, report["num_params"]
  (stage,) = report["stages"]
  assert stage["peak_bytes"] <= 16 * 2**30, stage
  # FSDP over 8: each chip holds ~1/8 of the float32 params and both AdamW moments.
  assert stage["state_bytes"] < 3 * 4 * report["num_params"] / 8 * 1.1, stage
