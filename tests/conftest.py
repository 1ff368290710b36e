"""Test-wide setup: 8 fake CPU devices and JAX's persistent compilation cache.

Both must happen before JAX is imported anywhere, which is why they live here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

_CACHE_DIR = os.environ.get(
    "MMIE_TEST_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Property tests: the suite is reproducible by default (the same examples on every machine,
# so a CI failure replays locally); MMIE_HYPOTHESIS=explore draws fresh random examples on
# every run, for hunting numerical edge cases before a change lands.
from hypothesis import settings  # noqa: E402

settings.register_profile("reproducible", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("MMIE_HYPOTHESIS", "reproducible"))
