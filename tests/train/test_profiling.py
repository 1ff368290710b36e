"""FLOPs from XLA's cost analysis, MFU arithmetic, peak look-up, step timing."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmie.train import profiling

M, K, N = 64, 32, 16


def test_cost_of_a_matmul_is_two_m_k_n():
  matmul = jax.jit(lambda a, b: a @ b)
  compiled, cost = profiling.compile_with_cost(matmul, jnp.ones((M, K)), jnp.ones((K, N)),
                                               peak_flops=1e9)
  assert profiling.compiled_flops(compiled) == 2 * M * K * N
  assert cost.flops == 2 * M * K * N and cost.num_devices == 1
  assert cost.compile_seconds > 0
  assert cost.mfu(2 * M * K * N / 1e9) == pytest.approx(1.0)  # Ran exactly at peak.
  metrics = cost.metrics(step_seconds=0.5)
  assert metrics["mfu"] == pytest.approx(2 * M * K * N / 0.5 / 1e9)
  assert metrics["gflops_per_step"] == pytest.approx(2 * M * K * N / 1e9)
  np.testing.assert_allclose(compiled(jnp.ones((M, K)), jnp.ones((K, N))), K)


def test_sharded_program_counts_all_devices():
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  matmul = jax.jit(lambda a, b: a @ b, in_shardings=(NamedSharding(mesh, P("data")), None))
  _, cost = profiling.compile_with_cost(matmul, np.ones((M, K), np.float32),
                                        np.ones((K, N), np.float32), peak_flops=1.0)
  # XLA reports one device's share; the step's total is the whole matmul.
  assert cost.num_devices == 8
  assert cost.flops == 2 * M * K * N


def test_peak_flops_from_config_table_and_measurement():
  gpu = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu")
  odd = types.SimpleNamespace(device_kind="Mystery accelerator", platform="gpu")
  config = {"profile": {"peak_flops": {"Mystery accelerator": 5e12}}}
  assert profiling.peak_flops_per_device(None, gpu) == 989e12
  assert profiling.peak_flops_per_device(config, odd) == 5e12
  assert profiling.peak_flops_per_device({"profile": {"peak_flops": {"gpu": 7.0}}}, odd) == 7.0
  assert profiling.peak_flops_per_device(None, odd) is None
  measured = profiling.measure_peak_flops(size=128, repeats=2)
  assert np.isfinite(measured) and measured > 1e6
  assert profiling.StepCost(1.0, 0.0, 1, None).mfu(1.0) is None


def test_time_steps_threads_the_carry():
  step = jax.jit(lambda c, x: (c + x, c * 2))
  times, carry = profiling.time_steps(step, jnp.zeros(()), (jnp.ones(()),), warmup=2, repeats=3)
  assert len(times) == 3 and all(t > 0 for t in times)
  assert float(carry) == 5.0


def test_bad_measurement_arguments():
  with pytest.raises(ValueError, match="size=4"):
    profiling.measure_peak_flops(size=4)
