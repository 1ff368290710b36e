"""How fast a step runs, against how fast the hardware could: FLOPs, MFU, compile and step time.

FLOPs come from XLA's own cost analysis of the compiled step (what actually runs, optimizer and
all), not from a hand formula. For an SPMD program XLA reports one device's share, so the step's
total is that times the number of devices. MFU (model FLOPs utilisation, PaLM's measure) is
``total FLOPs / (step seconds x peak FLOP/s of the devices used)``.

Peak FLOP/s per device comes from, in order: ``config.profile.peak_flops`` keyed by the
device kind (``jax.devices()[0].device_kind``) or platform ('cpu', 'gpu', 'tpu'); the table
below (vendor dense bf16 figures); on CPU, the fastest of several timed matmuls
(:func:`measure_peak_flops`). On CPU
all (fake) devices share one host, so the host's measured peak is the peak of them all.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device, from vendor data sheets; matched as a substring of the
# device kind. Override (or add float32 figures) with config.profile.peak_flops.
DEFAULT_PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "V100": 125e12,
    "T4": 65e12, "TPU v6 lite": 918e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12,
    "TPU v5e": 197e12, "TPU v4": 275e12, "TPU v3": 123e12, "TPU v2": 45e12,
}


@functools.lru_cache(maxsize=None)
def measure_peak_flops(size: int = 1024, dtype: str = "float32", repeats: int = 10) -> float:
  """Achievable FLOP/s of this host's first device: the fastest of ``repeats`` timed
  ``size``-square matmuls.

  A matmul is the best case for the hardware, so this is the ceiling MFU is measured against
  on CPU (where no data-sheet figure applies). The fastest run, not the median, because other
  load on a shared machine only ever slows a run down. Cached per arguments.
  """
  if size < 16 or repeats < 1:
    raise ValueError(f"measure_peak_flops: size={size} must be >= 16 and repeats={repeats} >= 1.")
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (size, size), jnp.dtype(dtype))
  b = jax.random.normal(key_b, (size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()  # Compile and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2.0 * size ** 3 / min(times)


def peak_flops_per_device(config: Any = None, device: Any = None) -> float | None:
  """The peak FLOP/s of one device (see module docstring); None when unknown (no MFU then)."""
  device = device or jax.devices()[0]
  profile = config.get("profile", {}) if config is not None and hasattr(config, "get") else {}
  overrides = profile.get("peak_flops", {}) if hasattr(profile, "get") else {}
  for key in (device.device_kind, device.platform):
    if overrides and overrides.get(key):
      return float(overrides[key])
  if device.platform == "cpu":
    return measure_peak_flops()
  for name, value in DEFAULT_PEAK_FLOPS.items():
    if name.lower() in device.device_kind.lower():
      return value
  log.warning("No peak FLOP/s known for device kind %r; set config.profile.peak_flops[%r] to"
              " log MFU.", device.device_kind, device.device_kind)
  return None


def compiled_flops(compiled: Any) -> float:
  """FLOPs of one execution of a compiled program on one device (XLA's cost analysis)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per program.
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  if flops is None or flops < 0:
    raise ValueError("XLA's cost analysis reported no FLOP count for this program"
                     f" (got {analysis!r}).")
  return float(flops)


@dataclasses.dataclass(frozen=True)
class StepCost:
  """What the compiler says a step costs, and what the hardware could do."""

  flops: float  # Per step, summed over all devices.
  compile_seconds: float
  num_devices: int
  peak_flops: float | None  # Of all the devices used together, FLOP/s.

  def mfu(self, step_seconds: float) -> float | None:
    """Model FLOPs utilisation in [0, 1] for a measured step time; None without a peak."""
    if self.peak_flops is None or step_seconds <= 0:
      return None
    return self.flops / (step_seconds * self.peak_flops)

  def metrics(self, step_seconds: float | None = None) -> dict[str, float]:
    """Scalars to log: GFLOPs per step, compile seconds, and MFU when a step time is given."""
    out = {"gflops_per_step": self.flops / 1e9, "compile_seconds": self.compile_seconds}
    if step_seconds is not None:
      out["step_seconds"] = step_seconds
      mfu = self.mfu(step_seconds)
      if mfu is not None:
        out["mfu"] = mfu
    return out


def _program_devices(compiled: Any) -> int:
  """How many devices the compiled program spans (from its input shardings)."""
  shardings = jax.tree.leaves(compiled.input_shardings,
                              is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  devices = {d for s in shardings if isinstance(s, jax.sharding.Sharding) for d in s.device_set}
  return max(len(devices), 1)


def compile_with_cost(jitted: Any, *args: Any, config: Any = None, mesh: Any = None,
                      peak_flops: float | None = None) -> tuple[Any, StepCost]:
  """AOT-compiles ``jitted`` for ``args``; returns the executable and its :class:`StepCost`.

  Call it once before the first step and run the returned executable (same shardings and
  donation as ``jitted``) so the program is compiled once. A wrapper exposing the jitted
  function as ``.jitted`` (``mmie.train.setup.TrainStep``) is unwrapped; ``mesh`` is put
  in context while lowering (for losses that name mesh axes). ``peak_flops`` (all devices)
  overrides the lookup by :func:`peak_flops_per_device`.
  """
  jitted = getattr(jitted, "jitted", jitted)
  start = time.perf_counter()
  if mesh is not None:
    with jax.set_mesh(mesh):
      compiled = jitted.lower(*args).compile()
  else:
    compiled = jitted.lower(*args).compile()
  compile_seconds = time.perf_counter() - start
  num_devices = _program_devices(compiled)
  if peak_flops is None:
    per_device = peak_flops_per_device(config)
    if per_device is not None:  # Fake CPU devices share one host: its peak is theirs.
      on_cpu = jax.devices()[0].platform == "cpu"
      peak_flops = per_device if on_cpu else per_device * num_devices
  cost = StepCost(flops=compiled_flops(compiled) * num_devices, compile_seconds=compile_seconds,
                  num_devices=num_devices, peak_flops=peak_flops)
  return compiled, cost


def time_steps(step: Callable[..., Any], carry: Any, inputs: Sequence[Any], *,
               warmup: int = 2, repeats: int = 5) -> tuple[list[float], Any]:
  """Runs ``carry = step(carry, *inputs)[0]`` and times each of ``repeats`` calls after
  ``warmup`` untimed ones; returns (seconds per call, final carry).

  The carry is threaded through so donated state stays valid; each call is waited for.
  """
  times = []
  for i in range(warmup + repeats):
    start = time.perf_counter()
    out = step(carry, *inputs)
    jax.block_until_ready(out)
    if i >= warmup:
      times.append(time.perf_counter() - start)
    carry = out[0] if isinstance(out, tuple) else out
  return times, carry
