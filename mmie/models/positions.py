"""Position encodings: fixed sinusoidal (1-D text, 2-D image patches) and rotary (RoPE).

Learned position tables are plain parameters owned by the towers; the fixed tables here are
computed from shapes alone so they cost no parameters and extend to any length.
"""

import jax.numpy as jnp
import numpy as np

POSITION_KINDS = ("learned", "sinusoidal", "rope")


def check_position_kind(kind: str, *, where: str) -> None:
  """Raises a clear error when ``kind`` is not a known position encoding."""
  if kind not in POSITION_KINDS:
    raise ValueError(f"{where}: positions={kind!r} is not known; choose one of {POSITION_KINDS}.")


def sinusoidal_1d(length: int, dim: int, base: float = 10_000.0) -> np.ndarray:
  """Vaswani et al. (2017) table: PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(...)."""
  if dim % 2:
    raise ValueError(f"sinusoidal positions need an even width; got width={dim}.")
  positions = np.arange(length, dtype=np.float64)[:, None]
  inv_freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
  angles = positions * inv_freq[None, :]
  table = np.zeros((length, dim), dtype=np.float32)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles)
  return table


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """2-D sin-cos table for a patch grid (as in big_vision / MoCo v3): [height * width, dim].

  A quarter of the channels encode sin(y), cos(y), sin(x), cos(x) each, row-major over the grid,
  which is the order the patch embedding flattens patches in.
  """
  if dim % 4:
    raise ValueError(f"2-D sin-cos positions need a width divisible by 4; got width={dim}.")
  y, x = np.mgrid[:height, :width]
  omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4 - 1 or 1))
  y_angles = y.reshape(-1)[:, None] * omega[None, :]
  x_angles = x.reshape(-1)[:, None] * omega[None, :]
  table = np.concatenate(
      [np.sin(x_angles), np.cos(x_angles), np.sin(y_angles), np.cos(y_angles)], axis=1
  )
  return table.astype(np.float32)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, base: float = 10_000.0) -> jnp.ndarray:
  """Rotates feature pairs (i, i + d/2) of ``x`` [B, T, heads, d] by angle position * base^(-2i/d).

  The half-split pairing is the GPT-NeoX / LLaMA convention; ``positions`` is [B, T] or [T].
  Computed in float32 and cast back so bfloat16 activations keep exact relative phases.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"rotary positions need an even head_dim; got head_dim={head_dim}.")
  half = head_dim // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)
  positions = jnp.asarray(positions, jnp.float32)
  if positions.ndim == 1:
    positions = positions[None, :]
  angles = positions[:, :, None, None] * inv_freq  # [B, T, 1, half]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x32 = x.astype(jnp.float32)
  first, second = x32[..., :half], x32[..., half:]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)
