"""Multi-host start-up with JAX's own `jax.distributed`: TPU pods, SLURM/multi-GPU, or explicit settings.

Order of precedence: explicit arguments, then HINQA_COORDINATOR / HINQA_NUM_PROCESSES / HINQA_PROCESS_ID
(set by launch/local.sh and the tests), then JAX's auto-detection (TPU pod metadata, SLURM variables),
which `jax.distributed.initialize()` does by itself when called without arguments.
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
_initialized = False


def _env_settings() -> dict:
  if "HINQA_COORDINATOR" not in os.environ:
    return {}
  return {"coordinator_address": os.environ["HINQA_COORDINATOR"],
          "num_processes": int(os.environ["HINQA_NUM_PROCESSES"]),
          "process_id": int(os.environ["HINQA_PROCESS_ID"])}


def _on_cluster() -> bool:
  """A multi-process launcher JAX can auto-detect: a TPU pod worker or a SLURM job of several tasks."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Join the job once; a single process with nothing configured stays as it is."""
  global _initialized
  if _initialized:
    return
  settings = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  settings = {k: v for k, v in settings.items() if v is not None} or _env_settings()
  if settings:
    # Only the CPU client reads this; it lets CPU processes run collectives with each other (tests, local.sh).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)
  elif _on_cluster():
    jax.distributed.initialize()
  else:
    return
  _initialized = True
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


def is_main() -> bool:
  return jax.process_index() == 0
