"""The models ``scripts/benchmark.py`` times: one CLIP architecture trained three ways.

``ours`` is mmie's own train step (configs/clip.py or siglip.py at the architecture's sizes);
``hf_flax`` is Hugging Face's FlaxCLIPModel and ``open_clip_torch`` open_clip in PyTorch, each
with the same optimizer, loss and batch. ``model_flops`` is the analytic MFU numerator.
``scripts/profile_step.py`` and ``scripts/op_timings.py`` use the same definitions.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


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
