"""One process of a multi-process run on this machine (used by test_multihost.py).

    python tests/train/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR [DATA_NAME]

Each process has 4 fake CPU devices; gloo carries the collectives between processes. The
processes train configs/clip.py:tiny with the real loop: each reads its own shard of the
data, the batch is assembled across hosts, and checkpoints are written collectively.
DATA_NAME replaces the config's ``data.name`` (a streamed source, say).
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main() -> None:
  process_id, num_processes, port, workdir = (int(sys.argv[1]), int(sys.argv[2]),
                                              int(sys.argv[3]), sys.argv[4])
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=num_processes, process_id=process_id)
  assert jax.process_count() == num_processes and jax.device_count() == 4 * num_processes

  from mmie.configs import clip as clip_config
  from mmie import config as config_lib
  from mmie.train import loop

  config = clip_config.get_config("tiny")
  if len(sys.argv) > 5:
    config.data.name = sys.argv[5]
  loop.train_and_evaluate(config_lib.validate(config), workdir)
  print(f"process {process_id} done", flush=True)


if __name__ == "__main__":
  main()
