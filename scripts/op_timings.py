"""The train step's own ops timed alone, in JAX (XLA:CPU) and in PyTorch, at the step's shapes.

    python scripts/op_timings.py --arch=cpu,default --batch=128

For ``scripts/benchmark.py``'s architectures this times, forward and backward together, each
kind of op the CLIP step spends its time on (``scripts/profile_step.py``): the four matmuls of
a transformer block of each tower, exact GELU, LayerNorm and the attention core (QK^T, softmax,
AV). JAX runs each op jitted alone (XLA:CPU, the backend every JAX row of the benchmark uses);
PyTorch runs it eagerly (open_clip's backend: oneDNN/MKL matmuls, vectorised GELU and
LayerNorm kernels, ``scaled_dot_product_attention``). Same shapes, float32, the medians of
``--repeats`` timed runs after warm-ups; JAX is timed first, then PyTorch, each with all cores.
The ratio column says how much faster PyTorch's kernel is: where it is about 1, the
backends are level on that op; where it is above 1, that op is where open_clip's lead comes
from. Needs the benchmark extras (``requirements-bench.txt``).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import bench_models  # noqa: E402  (scripts/bench_models.py: the architectures)
import benchmark  # noqa: E402  (its flags --arch and --batch are reused)

_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed runs per op (after 3 warm-ups).")


def op_shapes(arch: bench_models.Arch, batch: int) -> list[tuple[str, str, tuple[int, ...]]]:
  """(name, kind, shape) of each op of one block per tower, at the step's shapes."""
  ops = []
  towers = (("image", (arch.image_size // arch.patch_size) ** 2 + 1, arch.image_width,
             arch.image_heads),
            ("text", arch.context_length, arch.text_width, arch.text_heads))
  for tower, tokens, width, heads in towers:
    rows, mlp = batch * tokens, arch.mlp_ratio * width
    ops += [(f"{tower} q/k/v/out projection", "matmul", (rows, width, width)),
            (f"{tower} MLP fc1", "matmul", (rows, width, mlp)),
            (f"{tower} MLP fc2", "matmul", (rows, mlp, width)),
            (f"{tower} GELU", "gelu", (rows, mlp)),
            (f"{tower} LayerNorm", "layernorm", (rows, width)),
            (f"{tower} attention core", "attention", (batch, tokens, heads, width // heads))]
  return ops


def _median_seconds(run: Callable[[], Any], repeats: int) -> float:
  for _ in range(3):
    run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_op(kind: str, shape: tuple[int, ...]) -> Callable[[], Any]:
  """One jitted forward + backward of the op in JAX; returns a call that waits for it."""
  import jax
  import jax.numpy as jnp
  import flax.linen as nn

  rng = np.random.default_rng(0)
  if kind == "matmul":
    rows, inner, cols = shape
    args = (rng.normal(size=(rows, inner)), rng.normal(size=(inner, cols)))
    fn = lambda x, w: x @ w
  elif kind == "gelu":
    args = (rng.normal(size=shape),)
    fn = lambda x: jax.nn.gelu(x, approximate=False)
  elif kind == "layernorm":
    args = (rng.normal(size=shape), np.ones(shape[-1]), np.zeros(shape[-1]))
    norm = nn.LayerNorm()
    fn = lambda x, s, b: norm.apply({"params": {"scale": s, "bias": b}}, x)
  else:
    q = rng.normal(size=shape)
    args = (q, q.copy(), q.copy())
    fn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v)
  args = tuple(jnp.asarray(a, jnp.float32) for a in args)

  def forward_backward(*a):
    out, vjp = jax.vjp(fn, *a)
    return out, vjp(jnp.ones_like(out))

  compiled = jax.jit(forward_backward).lower(*args).compile()
  return lambda: jax.block_until_ready(compiled(*args))


def torch_op(kind: str, shape: tuple[int, ...]) -> Callable[[], Any]:
  """The same op in eager PyTorch, forward + backward."""
  import torch
  import torch.nn.functional as F

  gen = torch.Generator().manual_seed(0)
  if kind == "matmul":
    rows, inner, cols = shape
    args = [torch.randn(rows, inner, generator=gen), torch.randn(inner, cols, generator=gen)]
    fn = lambda x, w: x @ w
  elif kind == "gelu":
    args = [torch.randn(*shape, generator=gen)]
    fn = F.gelu
  elif kind == "layernorm":
    args = [torch.randn(*shape, generator=gen), torch.ones(shape[-1]), torch.zeros(shape[-1])]
    fn = lambda x, s, b: F.layer_norm(x, (shape[-1],), s, b, 1e-6)
  else:
    b, t, h, d = shape
    q = torch.randn(b, h, t, d, generator=gen)  # PyTorch's attention layout: [B, H, T, D].
    args = [q, q.clone(), q.clone()]
    fn = F.scaled_dot_product_attention
  for a in args:
    a.requires_grad_(True)

  def run():
    out = fn(*args)
    out.backward(torch.ones_like(out))
    for a in args:
      a.grad = None

  return run


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  print(f"load: {benchmark._load()}")
  for arch_name in benchmark._ARCH.value:
    for batch in (int(b) for b in benchmark._BATCH.value):
      ops = op_shapes(bench_models.ARCHS[arch_name], batch)
      jax_ms = [1e3 * _median_seconds(jax_op(kind, shape), _REPEATS.value)
                for _, kind, shape in ops]
      torch_ms = [1e3 * _median_seconds(torch_op(kind, shape), _REPEATS.value)
                  for _, kind, shape in ops]
      print(f"\n{arch_name} arch, batch {batch} (forward + backward, ms, median of"
            f" {_REPEATS.value}):\n")
      print("| op | shape | JAX (XLA:CPU) | PyTorch (eager) | PyTorch faster by |")
      print("|---|---|---:|---:|---:|")
      for (name, _, shape), j, t in zip(ops, jax_ms, torch_ms):
        print(f"| {name} | {'x'.join(map(str, shape))} | {j:.2f} | {t:.2f} | {j / t:.2f}x |")
  print(f"\nload: {benchmark._load()}")


if __name__ == "__main__":
  app.run(main)
