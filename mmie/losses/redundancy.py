"""Non-contrastive heads: VICReg, Barlow Twins, and the prototype's two regularisers.

These need batch statistics only (no negatives), so under `jax.jit` on a globally sharded
batch they already see every device's examples; no gather is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]

FEATURE_CONSISTENCY_KINDS = ("mse", "cosine", "l1")


def _check_pair(a: Array, b: Array, head: str) -> None:
  if a.ndim != 2 or a.shape != b.shape or a.shape[0] < 2:
    raise ValueError(f"{head}: expected two [batch, dim] arrays of the same shape with batch >= 2, "
                     f"got {tuple(a.shape)} and {tuple(b.shape)}.")


def _off_diagonal_sq_sum(m: Array) -> Array:
  # Masking, not sum(m**2) - sum(diag**2): the subtraction cancels catastrophically when the
  # off-diagonal is near zero, which is exactly where these regularisers sit at convergence.
  off = jnp.where(jnp.eye(m.shape[0], dtype=bool), 0.0, m)
  return jnp.sum(off * off)


def vicreg(z_a: Array, z_b: Array, *, sim_coeff: float = 25.0, std_coeff: float = 25.0,
           cov_coeff: float = 1.0, gamma: float = 1.0, eps: float = 1e-4
           ) -> tuple[Array, Metrics]:
  """VICReg (Bardes et al. 2022), as the reference code computes it.

  invariance: mean squared error; variance: mean over dims of relu(gamma - sqrt(var + eps))
  (unbiased variance), averaged over the two branches; covariance: sum of squared
  off-diagonal entries of each branch's covariance (1/(N-1)), divided by dim, summed.
  """
  _check_pair(z_a, z_b, "vicreg")
  n, d = z_a.shape
  invariance = jnp.mean((z_a - z_b) ** 2)

  def stats(z):
    z = z - jnp.mean(z, axis=0)
    std = jnp.sqrt(jnp.sum(z * z, axis=0) / (n - 1) + eps)
    cov = z.T @ z / (n - 1)
    return jnp.mean(jax.nn.relu(gamma - std)), _off_diagonal_sq_sum(cov) / d

  var_a, cov_a = stats(z_a)
  var_b, cov_b = stats(z_b)
  variance = 0.5 * (var_a + var_b)
  covariance = cov_a + cov_b
  loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
  return loss, {"loss": loss, "invariance": invariance, "variance": variance,
                "covariance": covariance}


def _standardize(z: Array, eps: float) -> Array:
  """Per-dimension batch standardisation (BatchNorm without affine: biased variance)."""
  z = z - jnp.mean(z, axis=0)
  return z * jax.lax.rsqrt(jnp.mean(z * z, axis=0) + eps)


def barlow_twins(z_a: Array, z_b: Array, *, lambda_: float = 5e-3, eps: float = 1e-5
                 ) -> tuple[Array, Metrics]:
  """Barlow Twins (Zbontar et al. 2021): ``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2``.

  ``C`` is the cross-correlation of the per-dimension batch-standardised embeddings.
  """
  _check_pair(z_a, z_b, "barlow_twins")
  c = _standardize(z_a, eps).T @ _standardize(z_b, eps) / z_a.shape[0]
  on_diagonal = jnp.sum((1.0 - jnp.diagonal(c)) ** 2)
  off_diagonal = _off_diagonal_sq_sum(c)
  loss = on_diagonal + lambda_ * off_diagonal
  return loss, {"loss": loss, "on_diagonal": on_diagonal, "off_diagonal": off_diagonal}


def decorrelation(z: Array, *, eps: float = 1e-5) -> tuple[Array, Metrics]:
  """Mean squared off-diagonal correlation between embedding dimensions over the batch.

  The prototype's redundancy regulariser: 0 when dimensions are uncorrelated, 1 when all are
  perfectly (anti-)correlated; invariant to each dimension's scale and offset.
  """
  if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 2:
    raise ValueError(f"decorrelation: expected [batch >= 2, dim >= 2], got {tuple(z.shape)}.")
  d = z.shape[1]
  corr = _standardize(z, eps).T @ _standardize(z, eps) / z.shape[0]
  loss = _off_diagonal_sq_sum(corr) / (d * (d - 1))
  return loss, {"loss": loss}


def feature_consistency(z: Array, z_ref: Array, *, kind: str = "mse") -> tuple[Array, Metrics]:
  """Keeps features close to a fixed reference (e.g. a frozen or earlier-stage encoder).

  ``z_ref`` is a target: no gradient flows into it. kind: ``mse`` (mean squared error),
  ``l1`` (mean absolute error) or ``cosine`` (mean of 1 - cosine similarity per row).
  """
  if z.shape != z_ref.shape:
    raise ValueError(f"feature_consistency: z {tuple(z.shape)} and z_ref {tuple(z_ref.shape)} "
                     f"must have the same shape.")
  z_ref = jax.lax.stop_gradient(z_ref)
  if kind == "mse":
    loss = jnp.mean((z - z_ref) ** 2)
  elif kind == "l1":
    loss = jnp.mean(jnp.abs(z - z_ref))
  elif kind == "cosine":
    num = jnp.sum(z * z_ref, axis=-1)
    den = jnp.sqrt(jnp.maximum(jnp.sum(z * z, -1) * jnp.sum(z_ref * z_ref, -1), 1e-24))
    loss = jnp.mean(1.0 - num / den)
  else:
    raise ValueError(f"feature_consistency: unknown kind {kind!r}; choose one of "
                     f"{FEATURE_CONSISTENCY_KINDS}.")
  return loss, {"loss": loss}
