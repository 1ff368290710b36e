"""Benchmark dense against chunked contrastive losses: peak memory and time of value-and-grad.

    python scripts/bench_losses.py                      # clip and siglip, batch 1k..16k, dim 512
    python scripts/bench_losses.py --batches=1024,2048 --repeats=1 --no-time

Peak memory is what XLA plans for the compiled value-and-grad (``memory_analysis()``:
temporaries + arguments + outputs), so it is exact for the program and needs no run. Time is
the median wall clock of ``--repeats`` runs after one warm-up, on whatever backend JAX picks;
a form whose plan exceeds ``--run-below-gib`` (half the machine's memory by default) is
compiled for its memory figure but not run ("-").
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmie import losses  # noqa: E402  (after the path fix so the script runs from anywhere)

HEADS: dict[str, Callable[..., tuple[jax.Array, dict]]] = {
    "clip": lambda a, b, s, **kw: losses.clip(a, b, logit_scale=s, **kw),
    "siglip": lambda a, b, s, **kw: losses.siglip(a, b, logit_scale=s, logit_bias=-10.0, **kw),
}


def _compiled(head: str, batch: int, dim: int, block_size: int | None):
  fn = HEADS[head]
  grad_fn = jax.jit(jax.value_and_grad(lambda a, b, s: fn(a, b, s, block_size=block_size)[0],
                                       argnums=(0, 1, 2)))
  shape = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
  return grad_fn.lower(shape, shape, jax.ShapeDtypeStruct((), jnp.float32)).compile()


def _peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes


def _seconds(compiled, batch: int, dim: int, repeats: int) -> float:
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (batch, dim), jnp.float32)
  b = jax.random.normal(k2, (batch, dim), jnp.float32)
  a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
  b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
  scale = jnp.float32(10.0)
  jax.block_until_ready(compiled(a, b, scale))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(a, b, scale))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _half_the_memory_gib() -> float:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**31


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--heads", default="clip,siglip")
  parser.add_argument("--batches", default="1024,2048,4096,8192,16384")
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--block-size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-time", action="store_true", help="memory only (compile, no run)")
  parser.add_argument("--run-below-gib", type=float, default=_half_the_memory_gib(),
                      help="run (time) a form only if XLA plans less memory than this")
  args = parser.parse_args(argv)

  print(f"backend: {jax.default_backend()} ({jax.device_count()} device(s)), dim {args.dim}, "
        f"chunked block_size {args.block_size}, value_and_grad in float32")
  print("| head | batch | dense MiB | chunked MiB | chunked/dense | dense s | chunked s |"
        " time chunked/dense |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for head in args.heads.split(","):
    for batch in (int(b) for b in args.batches.split(",")):
      row = {}
      for mode, block in (("dense", None), ("chunked", args.block_size)):
        compiled = _compiled(head, batch, args.dim, block)
        mib = _peak_bytes(compiled) / 2**20
        fits = mib / 1024 < args.run_below_gib
        row[mode] = (mib, _seconds(compiled, batch, args.dim, args.repeats)
                     if fits and not args.no_time else math.nan)
        del compiled
      (dm, dt), (cm, ct) = row["dense"], row["chunked"]
      show = lambda t: "-" if math.isnan(t) else f"{t:.3f}"
      print(f"| {head} | {batch} | {dm:,.0f} | {cm:,.0f} | {cm / dm:.3f} | {show(dt)} |"
            f" {show(ct)} | {show(ct / dt)} |", flush=True)


if __name__ == "__main__":
  main()
