"""Multi-host start-up with JAX's own `jax.distributed`, and the rule for files on a shared workdir.

Start-up, in order of precedence: explicit arguments, then HINQA_COORDINATOR / HINQA_NUM_PROCESSES /
HINQA_PROCESS_ID (set by launch/local.sh and the tests), then JAX's auto-detection (TPU pod metadata,
SLURM variables), which `jax.distributed.initialize()` does by itself when called without arguments.

The workdir rule: every process runs the same program; process 0 alone writes shared files (`main_only`),
the others wait for it at a named barrier; temp files carry host and pid in their name and
are renamed into place (`files.write_atomic`); Orbax writes from every process as it is designed to. Barriers
and the values process 0 hands to the others go through the coordination service of `jax.distributed`,
not through a device collective: a CPU (gloo) collective gives up after 30 s when one process is busy
writing, a coordination barrier waits as long as it is told.

Every synchronisation (barrier, main_only, all_gather_json) has a name, and the processes compare the
names: one that took another path (skipped a step on one process) fails there, naming both, instead
of waiting at a mismatched barrier. An error on any process reaches all of them (`failing_together`):
each process watches one key of the coordination service and exits within a second when another
process has put its error there. A preemption notice (SIGTERM) stops training at a step boundary that
every process agrees on (`Preemption`).
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # private: see _client
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)
_initialized = False
T = TypeVar("T")
# Process 0 may write for a long time alone (an 8B export, the demo's teachers): waiting is not a failure.
BARRIER_TIMEOUT_S = 3 * 3600
_sequence = itertools.count()  # every process passes the same synchronisations in the same order
FAILED_KEY = "hinqa/failed"  # the first error of any process: {"process": i, "error": "..."}


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
  if jax.process_count() > 1:
    watcher = threading.Thread(target=_watch_failures, name="hinqa-failure-watch", daemon=True)
    watcher.start()
    # Stopped before jax.distributed's own atexit shutdown (atexit runs last-registered first): a poll
    # in flight while the client is torn down aborts the process.
    atexit.register(lambda: (_stop_watching.set(), watcher.join(timeout=5)))
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


def is_main() -> bool:
  return jax.process_index() == 0


def _client():
  # jax.distributed's coordination client: no public handle in jax 0.10 (Orbax and jax's own
  # array_serialization reach it the same way).
  client = jax_distributed.global_state.client
  if client is None:
    raise RuntimeError(f"{jax.process_count()} processes but jax.distributed is not initialized")
  return client


def _open(name: str) -> str:
  """The key prefix of the next synchronisation; this process's name for it goes under <prefix>/name/<i>."""
  key = f"hinqa/{next(_sequence)}"
  _client().key_value_set(f"{key}/name/{jax.process_index()}", name)
  return key


def _same_name(key: str, name: str, process: int, timeout_s: int) -> None:
  theirs = _client().blocking_key_value_get(f"{key}/name/{process}", timeout_s * 1000)
  if theirs != name:
    raise RuntimeError(f"process {jax.process_index()} is at {name!r} but process {process} at {theirs!r} "
                       f"(synchronisation {key}): the processes took different paths through the program")


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Every process waits here until all have arrived, then checks they all arrived at `name`."""
  if jax.process_count() == 1:
    return
  key = _open(name)
  _client().wait_at_barrier(f"{key}/barrier", timeout_s * 1000)
  for i in range(jax.process_count()):
    _same_name(key, name, i, timeout_s)


def main_only(name: str, fn: Callable[[], T], timeout_s: int = BARRIER_TIMEOUT_S) -> T:
  """fn() on process 0 alone (it writes shared files); the others wait for it and get its result.

  The result travels as JSON (every process returns the same JSON round trip of it); an exception on
  process 0 is raised on every process, naming the step."""
  if jax.process_count() == 1:
    return json.loads(json.dumps(fn(), default=str))
  key, client = _open(name), _client()
  if is_main():
    try:
      result = json.loads(json.dumps(fn(), default=str))
    except BaseException as err:
      client.key_value_set(f"{key}/result", json.dumps({"error": f"{type(err).__name__}: {err}"}))
      raise
    client.key_value_set(f"{key}/result", json.dumps({"result": result}))
    return result
  _same_name(key, name, 0, timeout_s)
  reply = json.loads(client.blocking_key_value_get(f"{key}/result", timeout_s * 1000))
  if "error" in reply:
    raise RuntimeError(f"process 0 failed in {name!r}: {reply['error']}")
  return reply["result"]


def all_gather_json(name: str, value: Any, timeout_s: int = BARRIER_TIMEOUT_S) -> list:
  """[value of process 0, value of process 1, ...] on every process (small JSON values: verdicts, tokens)."""
  if jax.process_count() == 1:
    return [json.loads(json.dumps(value, default=str))]
  key, client = _open(name), _client()
  client.key_value_set(f"{key}/value/{jax.process_index()}", json.dumps(value, default=str))
  out = []
  for i in range(jax.process_count()):
    _same_name(key, name, i, timeout_s)
    out.append(json.loads(client.blocking_key_value_get(f"{key}/value/{i}", timeout_s * 1000)))
  return out


def _exit_after_failure(client, me: int, acks_s: float = 10.0) -> None:
  """Acknowledge the failure; process 0 (it serves the coordination service) first waits until every
  process has read it, so none is left waiting on a service that is gone."""
  with contextlib.suppress(Exception):
    client.key_value_set(f"{FAILED_KEY}/ack/{me}", "1")
  if me == 0:
    for i in range(1, jax.process_count()):
      with contextlib.suppress(Exception):
        client.blocking_key_value_get(f"{FAILED_KEY}/ack/{i}", int(acks_s * 1000))
  sys.stderr.flush()
  logging.shutdown()
  os._exit(1)


_stop_watching = threading.Event()


def _watch_failures() -> None:
  client, me = _client(), jax.process_index()
  while not _stop_watching.wait(0.5):
    try:
      reply = client.key_value_try_get(FAILED_KEY)
    except Exception as err:  # noqa: BLE001
      if "NOT_FOUND" in str(err):
        continue
      return  # the client is shut down: the job is over
    failure = json.loads(reply)
    if failure["process"] == me:
      return  # this process reported it and is exiting itself
    print(f"hinqa: process {failure['process']} failed, so process {me} stops too: {failure['error']}",
          file=sys.stderr)
    _exit_after_failure(client, me)


@contextlib.contextmanager
def failing_together():
  """An exception on one process ends every process within seconds, each printing it (several processes;
  one process: the exception just propagates). SystemExit (a preemption's 143) passes through."""
  try:
    yield
  except SystemExit:
    raise
  except BaseException as err:
    if not _initialized or jax.process_count() == 1:
      raise
    client, me = _client(), jax.process_index()
    traceback.print_exc()
    with contextlib.suppress(Exception):  # another process may have failed first: its error stands
      client.key_value_set(FAILED_KEY, json.dumps({"process": me, "error": f"{type(err).__name__}: {err}"}))
    _exit_after_failure(client, me)


class Preemption:
  """A preemption notice (SIGTERM) makes a training loop save a checkpoint at its next step boundary and exit 143.

  One process: a SIGTERM handler sets a flag the loop reads each step. If the loop does not reach a step
  boundary within `grace_s` (blocked in I/O, in a compile), the process exits 143 anyway; a second SIGTERM
  exits at once. Several processes: JAX's preemption service (started by jax.distributed.initialize) takes
  SIGTERM on any host and agrees a sync step with the others in the background; `reached(n)` is a local
  read of that agreement, so no host-level collective runs per step and every host saves the same step.
  """

  def __init__(self, grace_s: float):
    self.grace_s = grace_s
    self.flag = False
    self._old = None
    self._timer = None

  def __enter__(self):
    if jax.process_count() == 1:
      try:
        self._old = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread: no preemption handling
        self._old = None
    return self

  def _handle(self, *_):
    if self.flag:  # a second notice: stop now
      os._exit(143)
    self.flag = True

    def too_late():
      log.error("SIGTERM: no step boundary within %.0f s (checkpoint.preempt_grace_s); exiting without a "
                "checkpoint, the last saved one stands", self.grace_s)
      logging.shutdown()
      os._exit(143)
    self._timer = threading.Timer(self.grace_s, too_late)
    self._timer.daemon = True
    self._timer.start()

  def __exit__(self, *exc):  # the loop got out (saved and raised SystemExit, or failed): no forced exit
    if self._timer is not None:
      self._timer.cancel()
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)

  def reached(self, step: int) -> bool:
    """Whether the loop must save and exit after `step`: this process's SIGTERM, or the hosts' agreed sync step."""
    if jax.process_count() == 1:
      return self.flag
    return multihost_utils.reached_preemption_sync_point(step)


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
  replies = dict(enumerate(all_gather_json("workdir-seen", "ok" if seen == probe.name else "missing")))
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
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
