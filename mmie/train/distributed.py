"""Joining a multi-process (multi-host) run, and leaving it fast when a peer is gone.

``jax.distributed.initialize`` finds the coordinator by itself on TPU pods, SLURM, Open MPI and
Kubernetes; elsewhere it takes a coordinator address, the process count and this process's
index. CPU hosts need a cross-process collectives backend (gloo); GPU and TPU ignore it.

When one process dies (killed, preempted, a machine lost), the others notice at their next
collective (gloo and NCCL raise "connection closed by peer"), or, if a collective blocks
instead, when the coordination service misses the dead process's heartbeats. A process that
then raises would still wait at JAX's shutdown barrier for the dead peer until the heartbeat
timeout ends it with an abort. :func:`lost_peer` recognises these errors, so the entry point
can say so in one line and leave at once (``mmie.cli.EXIT_PEER_LOST``): the job's scheduler,
or the user, relaunches every process with the same command, which resumes from the newest
checkpoint that all of them committed.
"""

from __future__ import annotations

import re

import jax

from mmie.train.storage import causes

# Texts of the errors a collective or the coordination service raises when a peer is gone.
_LOST_PEER = re.compile(
    r"Gloo \w+ failed|Connection (closed|reset) by peer|heartbeat timeout|"
    r"CoordinationService|Barrier failed|NCCL (error|failure)|Socket closed|"
    r"failed to connect to all addresses|Broken pipe", re.IGNORECASE)


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, heartbeat_timeout_seconds: int = 100) -> None:
  """Joins the run (all arguments None: detected from the cluster environment)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; else unused.
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def lost_peer(error: BaseException) -> bool:
  """Whether ``error`` (or one it came from) says another process of the run is gone."""
  return any(_LOST_PEER.search(str(e)) for e in causes(error))
