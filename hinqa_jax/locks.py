"""One writer per directory: a lock file that names its holder, refreshed while held.

`hold(dir, what)` creates dir/.lock with O_EXCL (atomic on local filesystems and NFSv3+), writes the
holder's host, pid and task into it, and touches it every HEARTBEAT_S seconds while the work runs. A
second writer (another `train` on the same stage, another `gen synthesize` on the same out_dir and
shard, another `prepare` of the same data) is refused with the holder's name. A lock is stale, and is
taken over with a warning, when its pid is gone on this host, or when no host has touched it for
STALE_S seconds (a killed job on another node of a pod); otherwise the message says how to clear it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
HEARTBEAT_S = 15.0
STALE_S = 120.0


def _holder(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):  # being written this instant, or not ours: judge by its age alone
    return {}


def _stale(path: Path, holder: dict) -> str | None:
  """Why the lock at path can be taken over, or None while its holder may be alive."""
  if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
    try:
      os.kill(holder["pid"], 0)
    except ProcessLookupError:
      return f"pid {holder['pid']} is gone"
    except PermissionError:
      pass  # alive, another user's
  try:
    age = time.time() - path.stat().st_mtime
  except FileNotFoundError:
    return "released"
  return f"not refreshed for {age:.0f} s" if age > STALE_S else None


@contextlib.contextmanager
def hold(directory: str | os.PathLike, what: str, name: str = ".lock") -> Iterator[Path]:
  """Hold directory/name while the block runs; RuntimeError naming the holder if someone else does."""
  path = Path(directory) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  me = {"host": socket.gethostname(), "pid": os.getpid(), "what": what, "since": time.time()}
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      break
    except FileExistsError:
      holder = _holder(path)
      why = _stale(path, holder)
      if why is None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
        raise RuntimeError(
            f"{path.parent} is being written by {holder.get('what', '?')} (host {holder.get('host', '?')}, pid "
            f"{holder.get('pid', '?')}, since {since}): a second writer is refused. If that run is gone, wait "
            f"{STALE_S:.0f} s or delete {path}") from None
      log.warning("%s: taking over a stale lock of %s (%s)", path, holder.get("what", "?"), why)
      with contextlib.suppress(FileNotFoundError):
        path.unlink()  # two takers: O_EXCL above lets one of them in
  with os.fdopen(fd, "w") as f:
    json.dump(me, f)
  stop = threading.Event()

  def heartbeat():
    while not stop.wait(HEARTBEAT_S):
      with contextlib.suppress(OSError):
        os.utime(path)
  thread = threading.Thread(target=heartbeat, name=f"lock {path}", daemon=True)
  thread.start()
  try:
    yield path
  finally:
    stop.set()
    if _holder(path) == me:  # still ours (not taken over as stale): release it
      with contextlib.suppress(FileNotFoundError):
        path.unlink()
