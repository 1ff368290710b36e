"""Train-step throughput, compile time and MFU of CLIP architectures; ``--vs`` against peers.

    python scripts/benchmark.py --arch=cpu,default --batch=128 [--steps=8 --rounds=2]
    python scripts/benchmark.py --arch=cpu --vs      # + open_clip (PyTorch) and HF FlaxCLIPModel

Each implementation trains the same architecture on the same random batch with the same
optimizer (AdamW, b2=0.98, eps=1e-6, weight decay 0.1 on matrices, global-norm clip 1.0) and
the symmetric CLIP loss. Timing is robust on a shared machine: each implementation runs in its
own process (so no thread pool of one slows another), with untimed warm-up steps; ``rounds``
passes alternate the implementations, ``steps`` timed steps each, and the median is reported.
MFU is model FLOPs (``bench_models.model_flops``: 3x the forward's matmuls) over the step
time and the device's peak, the same numerator for every row; XLA's own count of our compiled
step is printed beside it. The models are in ``scripts/bench_models.py``. ``--vs`` needs the
optional extras: ``pip install -r requirements-bench.txt`` (see that file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # Its sibling bench_models.
from bench_models import ARCHS, IMPLS, Variant, model_flops  # noqa: E402  (what rows train)


_ARCH = flags.DEFINE_list("arch", ["cpu"], f"Architectures: {sorted(ARCHS)}.")
_BATCH = flags.DEFINE_list("batch", ["128"], "Global batch sizes.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per implementation and round.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating timing passes over implementations.")
_VS = flags.DEFINE_bool("vs", False, "Also time open_clip (PyTorch) and HF FlaxCLIPModel.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype of mmie's rows (weights stay float32).")
_LOSS = flags.DEFINE_list("loss", ["clip"], "mmie's losses: clip and/or siglip (one row each).")
_ATTENTION = flags.DEFINE_list("attention", ["xla"],
                               "mmie's attention implementations: xla and/or cudnn.")
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialise each block in mmie's rows.")
_SCAN = flags.DEFINE_list("scan_layers", ["false"],
                          "mmie's layer stacks: false (unrolled) and/or true (one nn.scan).")
_WORKER = flags.DEFINE_string("worker", None, "Internal: the JSON variant to run in this process.")


def worker(variant: Variant, steps: int, warmup: int) -> dict:
  """Runs in its own process: build, compile, warm up, time ``steps`` steps."""
  import time

  impl = IMPLS[variant.impl](ARCHS[variant.arch], variant.batch, variant)
  for _ in range(warmup):
    impl.step()
  for _ in range(steps):
    start = time.perf_counter()
    impl.step()
    impl.times.append(time.perf_counter() - start)
  name = variant.label if variant.impl == "mmie" else impl.name
  return {"name": name, "compile": impl.compile_seconds, "gflops": impl.xla_gflops,
          "times": impl.times}


def _spawn(variant: Variant, cache_dir: str) -> dict:
  """One worker process; each implementation runs alone, so none slows another's threads."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
  cmd = [sys.executable, os.path.abspath(__file__),
         f"--worker={json.dumps(dataclasses.asdict(variant))}",
         f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}"]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
  if done.returncode or not lines:
    raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def _load() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "uptime unavailable"


def bench(variants: list[Variant], peak: float, cache_dir: str) -> list[dict[str, Any]]:
  """``rounds`` passes over the variants (alternating, against drifting load); the first
  pass's compile time is reported (later ones hit the compilation cache). A variant that does
  not fit in device memory gives an 'out of memory' row instead of ending the run."""
  results: dict[Variant, dict] = {}
  failed: dict[Variant, str] = {}
  for round_index in range(_ROUNDS.value):
    for variant in variants:
      if variant in failed:
        continue
      try:
        out = _spawn(variant, cache_dir)
      except RuntimeError as error:  # One variant's failure is its row, not the run's end.
        text = str(error)
        oom = "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
        failed[variant] = "out of memory" if oom else "failed (see log)"
        print(f"  {variant.label} {variant.arch} batch {variant.batch}: {failed[variant]}\n"
              f"{'' if oom else text}", flush=True)
        continue
      print(f"  round {round_index + 1} {variant.label} {variant.arch} batch {variant.batch}:"
            f" median step {statistics.median(out['times']):.3f} s ({_load()})", flush=True)
      if variant in results:
        results[variant]["times"] += out["times"]
      else:
        results[variant] = out
  base = next((v for v in variants if v.impl == "mmie" and v in results), None)
  base_median = statistics.median(results[base]["times"]) if base else float("nan")
  rows = []
  for variant in variants:
    arch = ARCHS[variant.arch]
    flops = model_flops(arch, variant.batch)
    row = dict(impl=variant.label, arch=variant.arch, batch=variant.batch,
               model_gflops=flops / 1e9, failed=failed.get(variant))
    if variant in results:
      times = results[variant]["times"]
      median = statistics.median(times)
      row.update(impl=results[variant]["name"], compile=results[variant]["compile"],
                 step=median, spread=(np.percentile(times, 75) - np.percentile(times, 25))
                 / median, ex_s=variant.batch / median, mfu=flops / (median * peak),
                 xla_gflops=results[variant]["gflops"], vs_ours=base_median / median)
    rows.append(row)
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  head = ("| implementation | arch | batch | compile s | step s (median) | IQR/median | ex/s |"
          " MFU | model GFLOP/step | XLA GFLOP/step | speed vs mmie |")
  lines = [head, "|" + "---|" * 11]
  for r in rows:
    if r.get("failed"):
      lines.append(f"| {r['impl']} | {r['arch']} | {r['batch']} | {r['failed']} | - | - | - |"
                   f" - | {r['model_gflops']:.1f} | - | - |")
      continue
    compile_s = "-" if r["compile"] is None else f"{r['compile']:.1f}"
    gflops = "-" if r["xla_gflops"] is None else f"{r['xla_gflops']:.1f}"
    lines.append(f"| {r['impl']} | {r['arch']} | {r['batch']} | {compile_s} | {r['step']:.3f} |"
                 f" {100 * r['spread']:.0f}% | {r['ex_s']:.1f} | {100 * r['mfu']:.1f}% |"
                 f" {r['model_gflops']:.1f} | {gflops} | {r['vs_ours']:.2f}x |")
  return "\n".join(lines)


def variants_for(arch_name: str, batch: int) -> list[Variant]:
  """mmie's rows (every loss x attention, at the chosen dtype and remat), then the peers."""
  ours_rows = [Variant("mmie", arch_name, batch, _DTYPE.value, loss, attention, _REMAT.value,
                       scan == "true")
               for loss in _LOSS.value for attention in _ATTENTION.value
               for scan in _SCAN.value]
  peers = [Variant(name, arch_name, batch) for name in ("open_clip", "hf_flax")] \
      if _VS.value else []
  return ours_rows + peers


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  if _WORKER.value:
    variant = Variant(**json.loads(_WORKER.value))
    print("RESULT " + json.dumps(worker(variant, _STEPS.value, _WARMUP.value)), flush=True)
    return
  unknown = [a for a in _ARCH.value if a not in ARCHS]
  if unknown:
    raise app.UsageError(f"--arch: unknown {unknown}; choose from {sorted(ARCHS)}.")
  for name, values, allowed in (("loss", _LOSS.value, ("clip", "siglip")),
                                ("attention", _ATTENTION.value, ("xla", "cudnn")),
                                ("scan_layers", _SCAN.value, ("false", "true"))):
    if not values or any(v not in allowed for v in values):
      raise app.UsageError(f"--{name}={','.join(values)}: choose from {allowed}.")
  batches = [int(b) for b in _BATCH.value]
  if _VS.value:
    _check_peers()
  import jax

  from mmie.train import profiling

  print(f"load before: {_load()}", flush=True)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
  peak = profiling.peak_flops_per_device()
  rows = []
  with tempfile.TemporaryDirectory(prefix="mmie-bench-cache-") as cache_dir:
    for arch_name in _ARCH.value:
      for batch in batches:
        new = bench(variants_for(arch_name, batch), peak, cache_dir)
        print(format_table(new), flush=True)
        rows += new
  print(f"load after: {_load()}")
  if device.platform == "cpu":  # Measured again: load only ever lowers it.
    profiling.measure_peak_flops.cache_clear()
    after = profiling.peak_flops_per_device()
    rows = [dict(r, mfu=r["mfu"] * peak / max(peak, after)) if "mfu" in r else r for r in rows]
    peak = max(peak, after)
  print(f"peak: {peak / 1e9:.1f} GFLOP/s per device (CPU: best matmul before and after;"
        " accelerators: the vendor's dense bf16 figure)")
  print("\n" + format_table(rows))
  print("\nspeed vs mmie: > 1 means faster than the first mmie row. MFU: model FLOPs per step"
        " (3x the forward's matmuls, attention included; the same for every row of an arch and"
        " batch) / (step time x peak).")


def _check_peers() -> None:
  missing = []
  for module in ("torch", "open_clip", "torchvision"):
    try:
      __import__("importlib.util").util.find_spec(module) or missing.append(module)
    except ImportError:
      missing.append(module)
  if missing:
    raise app.UsageError(f"--vs needs {missing}: pip install -r requirements-bench.txt"
                         " (see the comments in that file).")


if __name__ == "__main__":
  app.run(main)
