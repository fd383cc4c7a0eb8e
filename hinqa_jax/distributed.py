"""Multi-host start-up with JAX's own `jax.distributed`, and the rule for files on a shared workdir.

Start-up, in order of precedence: explicit arguments, then HINQA_COORDINATOR / HINQA_NUM_PROCESSES /
HINQA_PROCESS_ID (set by launch/local.sh and the tests), then JAX's auto-detection (TPU pod metadata,
SLURM variables), which `jax.distributed.initialize()` does by itself when called without arguments.

The workdir rule: every process runs the same program; process 0 alone writes shared files (`main_only`),
the others wait for it at a named barrier; temp files carry host, pid and process index in their name and
are renamed into place (`write_atomic`); Orbax writes from every process as it is designed to. Barriers
and the values process 0 hands to the others go through the coordination service of `jax.distributed`,
not through a device collective: a CPU (gloo) collective gives up after 30 s when one process is busy
writing, a coordination barrier waits as long as it is told.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import jax
import numpy as np

log = logging.getLogger(__name__)
_initialized = False
T = TypeVar("T")
# Process 0 may write for a long time alone (an 8B export, the demo's teachers): waiting is not a failure.
BARRIER_TIMEOUT_S = 3 * 3600
_sequence = itertools.count()  # every process passes the same barriers in the same order: ids match


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


def _client():
  # jax.distributed's coordination client: no public handle in jax 0.10 (Orbax and jax's own
  # array_serialization reach it the same way).
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  if client is None:
    raise RuntimeError(f"{jax.process_count()} processes but jax.distributed is not initialized")
  return client


def _key(name: str) -> str:
  return f"hinqa/{next(_sequence)}/{name}"


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Every process waits here until all have arrived; a no-op on one process."""
  if jax.process_count() > 1:
    _client().wait_at_barrier(_key(name), timeout_s * 1000)


def main_only(name: str, fn: Callable[[], T], timeout_s: int = BARRIER_TIMEOUT_S) -> T:
  """fn() on process 0 alone (it writes shared files); the others wait for it and get its result.

  The result travels as JSON (every process returns the same JSON round trip of it); an exception on
  process 0 is raised on every process, naming the step."""
  if jax.process_count() == 1:
    return json.loads(json.dumps(fn(), default=str))
  key, client = _key(name), _client()
  if is_main():
    try:
      result = json.loads(json.dumps(fn(), default=str))
    except BaseException as err:
      client.key_value_set(key, json.dumps({"error": f"{type(err).__name__}: {err}"}))
      raise
    client.key_value_set(key, json.dumps({"result": result}))
    return result
  reply = json.loads(client.blocking_key_value_get(key, timeout_s * 1000))
  if "error" in reply:
    raise RuntimeError(f"process 0 failed in {name!r}: {reply['error']}")
  return reply["result"]


def write_atomic(path: str | os.PathLike, text: str) -> Path:
  """Write text beside `path` under a name unique to this process, then rename it into place."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}-{jax.process_index()}.tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)
  return path


def check_shared_dir(path: str | os.PathLike) -> None:
  """Fail on every process, before any work, unless `path` is one directory all processes see.

  Process 0 writes a token file there; after a barrier each process reads it back and reports."""
  if jax.process_count() == 1:
    return
  path = Path(path).absolute()

  def write_probe() -> str:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".hinqa-shared-{uuid.uuid4().hex}"
    probe.write_text(probe.name)
    return probe.name

  probe = path / main_only("workdir-probe", write_probe)  # each process looks in its own `path`
  seen = probe.read_text() if probe.is_file() else None
  key, client = _key("workdir-seen"), _client()
  client.key_value_set(f"{key}/{jax.process_index()}", "ok" if seen == probe.name else "missing")
  replies = {i: client.blocking_key_value_get(f"{key}/{i}", BARRIER_TIMEOUT_S * 1000)
             for i in range(jax.process_count())}
  barrier("workdir-probe-read")
  if is_main():
    probe.unlink()
  blind = sorted(i for i, r in replies.items() if r != "ok")
  if blind:
    raise ValueError(f"workdir {path} is not shared by all processes: process(es) {blind} of "
                     f"{jax.process_count()} cannot see {probe.name}, which process 0 wrote there. Put the "
                     "workdir on a filesystem every host mounts (NFS, Lustre, gcsfuse) and pass the same path.")


def to_host(x: Any) -> np.ndarray:
  """The whole value of an array on this host, however it is sharded (over several processes too).

  Call it on every process for an array that spans processes: the gather is a collective."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
