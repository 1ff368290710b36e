"""Check a pod config before launch: AOT-compile its train step for a big mesh on fake devices.

    python -m mmie.train.aot --config=configs/clip.py --devices=64 --mesh=data=8,fsdp=8 \
        [--config.batch_size=1024] [--stage=full] [--json=report.json]

The command fakes ``--devices`` CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``,
set before JAX is imported), builds the run on a mesh over them, lowers each stage's jitted train
step from abstract shapes alone (no parameter is ever materialised) and compiles it. It prints,
per device: the sharded state and batch, XLA's argument / output / temporary / code sizes, an
estimated peak, and FLOPs. A config that does not fit (an axis that does not divide, a batch
that does not split, a sharding that leaves a huge tensor replicated) fails here in minutes on a
laptop instead of on the pod.

The numbers come from the CPU compiler. Argument and output sizes (the sharded state) are
exact for any backend; temporaries depend on the backend's fusion and layouts, so treat them as
an estimate for TPU/GPU. The mesh comes from ``--mesh`` (``data=8,fsdp=8``) or, when the config
has one, ``config.mesh``; ``--mesh`` exists because a locked config cannot gain a ``mesh`` key
on the command line.

JAX is imported inside the functions, never at module level, so that the command can set the
device count before anything could start a JAX backend.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from mmie.config import ConfigError

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_COLUMNS = (("state", "state_bytes"), ("batch", "batch_bytes"), ("arguments", "argument_bytes"),
            ("outputs", "output_bytes"), ("aliased", "alias_bytes"), ("temp", "temp_bytes"),
            ("code", "generated_code_bytes"), ("est. peak", "peak_bytes"))


def parse_mesh(text: str) -> dict[str, int]:
  """'data=8,fsdp=8' -> {'data': 8, 'fsdp': 8}; one axis may be -1 (the remaining devices).

  Only the syntax is checked here (JAX must not be imported yet); axis names and sizes are
  checked by ``mmie.sharding.mesh_shape`` when the mesh is built.
  """
  mesh: dict[str, int] = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, size = part.partition("=")
    if not sep or not name.strip().isidentifier() or not re.fullmatch(r"-?\d+", size.strip()):
      raise ConfigError(f"--mesh={text!r}: each entry is axis=size, e.g."
                        f" --mesh=data=8,fsdp=8 (bad entry {part!r}).")
    if name.strip() in mesh:
      raise ConfigError(f"--mesh={text!r} names axis {name.strip()!r} twice.")
    mesh[name.strip()] = int(size)
  if not mesh:
    raise ConfigError(f"--mesh={text!r} is empty; expected e.g. data=8,fsdp=8.")
  return mesh


def mesh_device_count(mesh: Mapping[str, int]) -> int | None:
  """Devices a mesh spec needs; None when empty or an axis is -1 (then --devices must say)."""
  sizes = list(mesh.values())
  return None if not sizes or -1 in sizes else math.prod(sizes)


def fake_devices_env(n_devices: int, environ: dict[str, str] | None = None) -> None:
  """Makes JAX (not yet imported) see ``n_devices`` CPU devices and nothing else.

  Refuses when XLA_FLAGS already asks for a different count, or JAX_PLATFORMS names another
  platform, rather than silently compiling for a mesh other than the one asked for. On a TPU or
  GPU host this also keeps the check off the accelerator, which a training job may be using.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  found = re.findall(rf"{_DEVICE_COUNT_FLAG}=(\d+)", flags)
  if any(int(n) != n_devices for n in found):
    raise ConfigError(f"XLA_FLAGS={flags!r} already sets {_DEVICE_COUNT_FLAG}={found[-1]} but"
                      f" --devices={n_devices}; unset XLA_FLAGS or make them agree.")
  if not found:
    environ["XLA_FLAGS"] = f"{flags} {_DEVICE_COUNT_FLAG}={n_devices}".strip()
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and platforms != "cpu":
    raise ConfigError(f"JAX_PLATFORMS={platforms!r}: the AOT check compiles for fake CPU"
                      " devices; unset JAX_PLATFORMS or set it to 'cpu'.")
  environ["JAX_PLATFORMS"] = "cpu"


def _shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  import jax
  import numpy as np

  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def abstract_batch(run: Any) -> dict[str, Any]:
  """The global batch as ShapeDtypeStructs split over the mesh's batch axes."""
  import jax
  from mmie.train import setup

  example = setup.example_batch(run.config, run.config.batch_size)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=run.batch_sharding)
          for k, v in example.items()}


def _replicated_params(run: Any, top: int = 3) -> list[tuple[str, int]]:
  """The largest parameters (>= 1% of all) left whole on every device on a splitting mesh."""
  import numpy as np
  from jax.tree_util import tree_flatten_with_path
  from mmie.sharding import path_name

  if math.prod(run.mesh.shape[a] for a in ("fsdp", "model")) == 1:
    return []
  shardings = dict((path_name(p), s) for p, s in tree_flatten_with_path(run.param_shardings)[0])
  sizes = [(path_name(p), int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize)
           for p, x in tree_flatten_with_path(run.abstract_params)[0]]
  total = sum(size for _, size in sizes)
  whole = [(name, size) for name, size in sizes
           if shardings[name].is_fully_replicated and size >= 0.01 * total]
  return sorted(whole, key=lambda item: -item[1])[:top]


def _flops(compiled: Any) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX returned one dict per program.
    cost = cost[0] if cost else None
  return None if not cost or "flops" not in cost else float(cost["flops"])


def compile_stage(run: Any, stage: Any) -> dict[str, Any]:
  """Lowers and compiles one stage's train step from shapes; XLA's per-device numbers."""
  import jax
  from mmie.train import setup

  stage_run = setup.build_stage(run, stage)
  state = setup.abstract_state(run, stage_run)
  batch = abstract_batch(run)
  step = setup.jit_train_step(run, stage_run)
  start = time.perf_counter()
  with jax.set_mesh(run.mesh):  # As when training: losses may name the mesh's axes.
    compiled = step.jitted.lower(state, batch).compile()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  report = {
      "stage": stage.name,
      "state_bytes": _shard_bytes(state),
      "params_bytes": _shard_bytes(state.params),
      "batch_bytes": _shard_bytes(batch),
      "argument_bytes": int(memory.argument_size_in_bytes),
      "output_bytes": int(memory.output_size_in_bytes),
      "alias_bytes": int(memory.alias_size_in_bytes),
      "temp_bytes": int(memory.temp_size_in_bytes),
      "generated_code_bytes": int(memory.generated_code_size_in_bytes),
      "flops": _flops(compiled),
      "compile_seconds": seconds,
  }
  # Donated state is aliased to the output, so it is counted once.
  report["peak_bytes"] = (report["argument_bytes"] + report["output_bytes"]
                          - report["alias_bytes"] + report["temp_bytes"]
                          + report["generated_code_bytes"])
  return report


def aot_compile(config: Any, mesh_spec: Mapping[str, int] | None, n_devices: int,
                stage: str | None = None) -> dict[str, Any]:
  """Compiles every stage's (or one ``stage``'s) train step on ``n_devices`` CPU devices.

  ``mesh_spec`` ({'data': 8, 'fsdp': 8}) defaults to ``config.mesh``. The process must already
  have that many CPU devices: the command line sets them up; tests have 8.
  """
  import jax
  import numpy as np
  from mmie import sharding
  from mmie.train import setup

  devices = jax.devices("cpu")
  if len(devices) < n_devices:
    raise ConfigError(f"AOT compile for {n_devices} devices, but this process has"
                      f" {len(devices)} CPU devices. Run `python -m mmie.train.aot`, which sets"
                      f" XLA_FLAGS={_DEVICE_COUNT_FLAG}=N before JAX starts.")
  if mesh_spec is None:
    mesh_spec = config.get("mesh", None) or {}
  mesh_spec = dict(mesh_spec.items())
  mesh = sharding.make_mesh(mesh_spec or None, devices=devices[:n_devices])
  run = setup.build_run(config, mesh=mesh)
  stages = [s for s in run.stages if stage is None or s.name == stage]
  if not stages:
    raise ConfigError(f"--stage={stage!r} is not a stage of this config; stages are"
                      f" {[s.name for s in run.stages]}.")
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.abstract_params))
  param_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                    for x in jax.tree.leaves(run.abstract_params))
  return {
      "devices": n_devices,
      "mesh": dict(mesh.shape),
      "batch_size": int(config.batch_size),
      "per_device_batch": int(config.batch_size) // sharding.data_parallel_size(mesh),
      "num_params": n_params,
      "params_bytes_unsharded": param_bytes,
      "largest_replicated": _replicated_params(run),
      "stages": [compile_stage(run, s) for s in stages],
  }


def _unit(largest: int) -> tuple[str, int]:
  for name, size in (("GiB", 2**30), ("MiB", 2**20)):
    if largest >= size:
      return name, size
  return "KiB", 2**10


def format_report(report: Mapping[str, Any]) -> str:
  """The report as a table of MiB per device (and GFLOPs per device)."""
  mesh = " ".join(f"{k}={v}" for k, v in report["mesh"].items())
  unit, size = _unit(max(s["peak_bytes"] for s in report["stages"]))
  fmt = lambda n: f"{n / size:,.1f}"
  params_unit, params_size = _unit(report["params_bytes_unsharded"])
  lines = [f"AOT train step on {report['devices']} fake CPU devices, mesh {mesh}; global batch"
           f" {report['batch_size']} ({report['per_device_batch']} per data x fsdp shard).",
           f"Parameters: {report['num_params']:,}"
           f" ({report['params_bytes_unsharded'] / params_size:,.1f} {params_unit} unsharded).",
           f"Per device, {unit} (state = params + optimizer + loss state + EMA, as sharded):"]
  header = ["stage"] + [name for name, _ in _COLUMNS] + ["GFLOPs", "compile s"]
  rows = [[s["stage"]] + [fmt(s[key]) for _, key in _COLUMNS]
          + ["?" if s["flops"] is None else f"{s['flops'] / 1e9:,.2f}",
             f"{s['compile_seconds']:.1f}"] for s in report["stages"]]
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  for row in [header] + rows:
    lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths))))
  if report["largest_replicated"]:
    lines.append("Largest parameters replicated on every device (no rule splits them, or a"
                 " dimension does not divide): " + ", ".join(
                     f"{name} ({b / params_size:,.2f} {params_unit})"
                     for name, b in report["largest_replicated"]))
  lines.append("est. peak = arguments + outputs - aliased + temp + code. Argument and output"
               " sizes hold on any backend; temp is the CPU compiler's and only indicative for"
               " TPU/GPU.")
  return "\n".join(lines)


def _define_flags() -> tuple[Any, ...]:
  """Flags are defined only when run as a command, so importing this module defines none."""
  from absl import flags
  from mmie import cli  # pylint: disable=g-import-not-at-top

  return (
      cli.define_config_flag("config", "Config file[:preset]."),
      flags.DEFINE_integer("devices", None, "Fake CPU devices (default: the mesh's product)."),
      flags.DEFINE_string("mesh", None, "Mesh axes, e.g. data=8,fsdp=8 (default: config.mesh)."),
      flags.DEFINE_string("stage", None, "Compile only this stage (default: every stage)."),
      flags.DEFINE_string("json", None, "Also write the report to this JSON file."),
  )


def main() -> None:
  from absl import app

  config_flag, devices_flag, mesh_flag, stage_flag, json_flag = _define_flags()

  def run(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if config_flag.value is None:
      raise app.UsageError("--config is required, e.g. --config=configs/clip.py.")
    from mmie import config as config_lib

    try:
      config = config_lib.validate(config_flag.value)
      mesh = (parse_mesh(mesh_flag.value) if mesh_flag.value
              else dict((config.get("mesh", None) or {}).items()))
      n_devices = devices_flag.value or mesh_device_count(mesh)
      if not n_devices:
        raise ConfigError(f"Mesh {mesh or '(none)'} does not fix the device count; pass"
                          " --devices=N.")
      fake_devices_env(n_devices)
      report = aot_compile(config, mesh, n_devices, stage=stage_flag.value)
    except ConfigError as e:
      cli.config_error_exit(str(e))
    print(format_report(report), flush=True)
    if json_flag.value:
      import json
      with open(json_flag.value, "w") as f:
        json.dump(report, f, indent=1)

  from mmie import cli  # pylint: disable=g-import-not-at-top
  app.run(run, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  main()
