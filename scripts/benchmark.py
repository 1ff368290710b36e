"""Train-step throughput, compile time and MFU of CLIP architectures; ``--vs`` against peers.

    python scripts/benchmark.py --arch=cpu,default --batch=128 [--steps=8 --rounds=2]
    python scripts/benchmark.py --arch=cpu --vs      # + open_clip (PyTorch) and HF FlaxCLIPModel

Each implementation trains the same architecture on the same random batch with the same
optimizer (AdamW, b2=0.98, eps=1e-6, weight decay 0.1 on matrices, global-norm clip 1.0) and
the symmetric CLIP loss. Timing is robust on a shared machine: each implementation runs in its
own process (so no thread pool of one slows another), with untimed warm-up steps; ``rounds``
passes alternate the implementations, ``steps`` timed steps each, and the median is reported. FLOPs per step are XLA's cost analysis of *our* compiled step
(optimizer included), so the MFU of every row is on the same footing. ``--vs`` needs the
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
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Arch:
  """A symmetric-enough CLIP: ViT image tower and causal text tower."""

  image_size: int
  patch_size: int
  image_width: int
  image_depth: int
  image_heads: int
  text_width: int
  text_depth: int
  text_heads: int
  context_length: int
  vocab_size: int
  embed_dim: int
  mlp_ratio: int = 4


ARCHS: dict[str, Arch] = {
    # Sized for a CPU: image 64, patch 8, width 256, 6 layers per tower, context 32.
    "cpu": Arch(64, 8, 256, 6, 4, 256, 6, 4, 32, 49408, 256),
    # configs/clip.py's default model (the README run).
    "default": Arch(32, 4, 64, 4, 2, 128, 2, 4, 16, 1024, 64),
    "tiny": Arch(32, 8, 32, 1, 2, 32, 1, 2, 16, 1024, 32),
    # CLIP ViT-B/16 (Radford et al. 2021): the accelerator benchmark.
    "b16": Arch(224, 16, 768, 12, 12, 512, 12, 8, 77, 49408, 512),
}
OPTIMIZER = dict(learning_rate=1e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, clip=1.0)
EOS = 2

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


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row: an implementation on an architecture and batch; the rest applies to mmie only."""

  impl: str
  arch: str
  batch: int
  dtype: str = "float32"
  loss: str = "clip"
  attention: str = "xla"
  remat: bool = False
  scan_layers: bool = False

  @property
  def label(self) -> str:
    if self.impl != "mmie":
      return self.impl
    extras = [x for x in (self.loss if self.loss != "clip" else "",
                          "" if self.dtype == "float32" else self.dtype,
                          self.attention if self.attention != "xla" else "",
                          "remat" if self.remat else "",
                          "scan" if self.scan_layers else "") if x]
    return "mmie" + (f" ({', '.join(extras)})" if extras else "")


def model_flops(arch: Arch, batch: int) -> float:
  """Model FLOPs of one training step (PaLM's MFU numerator): 3x the forward's matmul FLOPs
  (forward, and backward for inputs and weights), attention's two [T, T] products included;
  elementwise work, the optimizer and any rematerialised recomputation are not counted."""

  def tower(tokens: int, width: int, depth: int) -> float:
    per_token = 2 * (4 * width * width + 2 * width * arch.mlp_ratio * width)
    return depth * tokens * (per_token + 2 * 2 * tokens * width)

  grid = (arch.image_size // arch.patch_size) ** 2
  image = (2 * grid * arch.patch_size ** 2 * 3 * arch.image_width
           + tower(grid + 1, arch.image_width, arch.image_depth)
           + 2 * arch.image_width * arch.embed_dim)
  text = (tower(arch.context_length, arch.text_width, arch.text_depth)
          + 2 * arch.text_width * arch.embed_dim)
  logits = 2 * batch * arch.embed_dim  # Per example: one row of the [B, B] similarity.
  return 3.0 * batch * (image + text + logits)


def random_batch(arch: Arch, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Normalised-looking images and captions ``tokens... EOS`` (EOS = the largest id for
  open_clip's argmax pooling is set by its wrapper)."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, arch.image_size, arch.image_size, 3)).astype(np.float32)
  text = rng.integers(3, arch.vocab_size - 1, size=(batch, arch.context_length)).astype(np.int32)
  text[:, -1] = EOS
  return {"image": images, "text": text}


def our_config(arch: Arch, batch: int, variant: Variant | None = None) -> Any:
  """configs/clip.py (or siglip.py) with the architecture, batch, benchmark optimizer and the
  variant's dtype, attention and remat swapped in."""
  from mmie.configs import clip, siglip
  from mmie import config as config_lib

  variant = variant or Variant("mmie", "", batch)
  c = (siglip if variant.loss == "siglip" else clip).get_config("default")
  c.model.update(dtype=variant.dtype, attention=variant.attention, remat=variant.remat,
                 scan_layers=variant.scan_layers)
  c.batch_size, c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = batch, 10, 1, 0, 0
  c.model.embed_dim = arch.embed_dim
  c.model.image.update(image_size=arch.image_size, patch_size=arch.patch_size,
                       width=arch.image_width, depth=arch.image_depth,
                       num_heads=arch.image_heads, mlp_dim=arch.mlp_ratio * arch.image_width)
  c.model.text.update(vocab_size=arch.vocab_size, context_length=arch.context_length,
                      width=arch.text_width, depth=arch.text_depth, num_heads=arch.text_heads,
                      mlp_dim=arch.mlp_ratio * arch.text_width, eos_id=EOS)
  c.optimizer.update(learning_rate=OPTIMIZER["learning_rate"], warmup_steps=0,
                     b1=OPTIMIZER["b1"], b2=OPTIMIZER["b2"], eps=OPTIMIZER["eps"],
                     weight_decay=OPTIMIZER["weight_decay"], grad_clip_norm=OPTIMIZER["clip"])
  return config_lib.validate(c)


@dataclasses.dataclass
class Timed:
  """One implementation's step, ready to time: ``step()`` runs and waits for one step."""

  name: str
  step: Callable[[], None]
  compile_seconds: float | None
  xla_gflops: float | None = None
  times: list[float] = dataclasses.field(default_factory=list)
  compiled: Any = None  # The XLA executable, for scripts/profile_step.py (JAX rows only).



def ours(arch: Arch, batch: int, variant: Variant | None = None) -> tuple[Timed, Any]:
  """MMIE's real train step (loss, AdamW, non-finite guard, metrics), AOT-compiled."""
  import jax

  from mmie.train import profiling
  from mmie.train import setup

  config = our_config(arch, batch, variant)
  run = setup.build_run(config)
  stage_run = setup.build_stage(run, run.stages[0])
  holder = {"state": setup.init_state(run, stage_run)}
  data = setup.to_global(run, random_batch(arch, batch))
  compiled, cost = profiling.compile_with_cost(setup.jit_train_step(run, stage_run),
                                               holder["state"], data, config=config,
                                               mesh=run.mesh)

  def step():
    holder["state"], metrics = compiled(holder["state"], data)
    jax.block_until_ready(metrics["loss"])

  return Timed("mmie (JAX)", step, cost.compile_seconds, cost.flops / 1e9,
               compiled=compiled), cost


def hf_flax(arch: Arch, batch: int) -> Timed:
  """transformers 4.57 FlaxCLIPModel (exact GELU, as ours) with the same loss and optimizer."""
  import time

  import jax
  import jax.numpy as jnp
  import optax
  from transformers import CLIPConfig, FlaxCLIPModel

  from mmie.train import profiling

  tower = lambda width, depth, heads: dict(hidden_size=width, intermediate_size=arch.mlp_ratio
                                           * width, num_hidden_layers=depth,
                                           num_attention_heads=heads, hidden_act="gelu")
  config = CLIPConfig(
      text_config=dict(**tower(arch.text_width, arch.text_depth, arch.text_heads),
                       vocab_size=arch.vocab_size, max_position_embeddings=arch.context_length,
                       eos_token_id=EOS),
      vision_config=dict(**tower(arch.image_width, arch.image_depth, arch.image_heads),
                         image_size=arch.image_size, patch_size=arch.patch_size),
      projection_dim=arch.embed_dim)
  model = FlaxCLIPModel(config, input_shape=((1, arch.context_length),
                                             (1, arch.image_size, arch.image_size, 3)))
  module, params = model.module, model.params
  tx = optax.chain(optax.clip_by_global_norm(OPTIMIZER["clip"]), optax.adamw(
      OPTIMIZER["learning_rate"], b1=OPTIMIZER["b1"], b2=OPTIMIZER["b2"], eps=OPTIMIZER["eps"],
      weight_decay=OPTIMIZER["weight_decay"], mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
  data = random_batch(arch, batch)

  def loss_fn(p, images, tokens):
    out = module.apply({"params": p}, input_ids=tokens, pixel_values=images,
                       attention_mask=jnp.ones_like(tokens), position_ids=jnp.broadcast_to(
                           jnp.arange(tokens.shape[1]), tokens.shape), deterministic=True)
    with jax.named_scope("loss"):  # Scopes as in mmie's step, for scripts/profile_step.py.
      logits = out.logits_per_image
      labels = jnp.arange(logits.shape[0])
      return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                    + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())

  def train_step(p, opt_state, images, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(p, images, tokens)
    with jax.named_scope("optimizer"):
      updates, opt_state = tx.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state, loss

  images = jnp.asarray(data["image"])  # The module takes NHWC (its wrapper transposes NCHW).
  tokens = jnp.asarray(data["text"])
  holder = {"p": params, "o": tx.init(params)}
  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(
      holder["p"], holder["o"], images, tokens).compile()
  compile_seconds = time.perf_counter() - start

  def step():
    holder["p"], holder["o"], loss = compiled(holder["p"], holder["o"], images, tokens)
    jax.block_until_ready(loss)

  return Timed("HF FlaxCLIPModel", step, compile_seconds,
               profiling.compiled_flops(compiled) / 1e9, compiled=compiled)


def open_clip_torch(arch: Arch, batch: int) -> Timed:
  """open_clip's CLIP in PyTorch eager (CPU wheel), same sizes, loss and optimizer."""
  import types

  # torchvision's meta registrations break against the CPU torch wheel and open_clip does not
  # need them: an empty module stands in before anything imports torchvision.
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  import open_clip
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  model = open_clip.CLIP(
      arch.embed_dim,
      vision_cfg=open_clip.CLIPVisionCfg(layers=arch.image_depth, width=arch.image_width,
                                         head_width=arch.image_width // arch.image_heads,
                                         mlp_ratio=arch.mlp_ratio, patch_size=arch.patch_size,
                                         image_size=arch.image_size),
      text_cfg=open_clip.CLIPTextCfg(context_length=arch.context_length,
                                     vocab_size=arch.vocab_size, width=arch.text_width,
                                     heads=arch.text_heads, layers=arch.text_depth,
                                     mlp_ratio=arch.mlp_ratio))
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": OPTIMIZER["weight_decay"]},
       {"params": no_decay, "weight_decay": 0.0}], lr=OPTIMIZER["learning_rate"],
      betas=(OPTIMIZER["b1"], OPTIMIZER["b2"]), eps=OPTIMIZER["eps"])
  loss_fn = open_clip.ClipLoss()
  data = random_batch(arch, batch)
  images = torch.from_numpy(data["image"].transpose(0, 3, 1, 2).copy())
  text = torch.from_numpy(data["text"].astype(np.int64))
  text[:, -1] = arch.vocab_size - 1  # open_clip pools at argmax(token id): the end token.
  model.train()

  def step():
    optimizer.zero_grad(set_to_none=True)
    image_features, text_features, scale = model(images, text)
    loss = loss_fn(image_features, text_features, scale)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIMIZER["clip"])
    optimizer.step()

  return Timed("open_clip (PyTorch)", step, None)


IMPLS: dict[str, Callable[[Arch, int, Variant], Timed]] = {
    "mmie": lambda arch, batch, variant: ours(arch, batch, variant)[0],
    "open_clip": lambda arch, batch, variant: open_clip_torch(arch, batch),
    "hf_flax": lambda arch, batch, variant: hf_flax(arch, batch),
}


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
