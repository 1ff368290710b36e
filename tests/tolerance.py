"""Tolerances derived from float32 arithmetic rather than picked from one run.

A float32 sum of ``n`` terms, taken in a different order (rematerialisation, micro-batches,
another device layout), differs by about ``sqrt(n) * eps`` relative to the largest magnitude
involved (random-walk rounding; the worst case is ``n * eps``). Comparing two such results
element by element therefore needs an absolute tolerance scaled by the tensor's largest entry:
a near-zero entry of a large gradient carries the rounding of the large terms it was summed
from, not a rounding relative to itself.
"""

import jax
import numpy as np

FLOAT32_EPS = float(np.finfo(np.float32).eps)
# Headroom over the random-walk estimate: rounding of n terms is a sum of n errors of up to
# eps/2 each with unknown signs, so a few standard deviations cover every element of a leaf.
SAFETY = 8.0


def float32_sum_atol(reference, terms: int) -> float:
  """Absolute tolerance for an array computed by float32 sums of about ``terms`` terms."""
  scale = float(np.max(np.abs(reference))) if np.size(reference) else 0.0
  return SAFETY * np.sqrt(terms) * FLOAT32_EPS * scale


def assert_trees_close(actual, desired, terms: int) -> None:
  """Leaf by leaf, equal up to reordered float32 sums of ``terms`` terms.

  The scale is the whole tree's largest entry, not each leaf's: a gradient that is zero in
  exact arithmetic (attention key biases, which softmax cancels) is the cancellation of terms
  as large as the rest of the gradient, so its rounding is of their size.
  """
  flat = jax.tree_util.tree_flatten_with_path(desired)[0]
  actual_leaves = jax.tree.leaves(actual)
  assert len(actual_leaves) == len(flat), (len(actual_leaves), len(flat))
  scale = max(float(np.max(np.abs(x))) for _, x in flat if np.size(x))
  atol = float32_sum_atol(scale, terms)
  for (path, want), got in zip(flat, actual_leaves):
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))
