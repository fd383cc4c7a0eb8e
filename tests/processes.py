"""Waiting for a test's worker processes: each is reaped, none is left running after the test, and a hang
fails with what every process wrote."""
from __future__ import annotations

import contextlib
import subprocess
import time


def finish(procs: list[subprocess.Popen], timeout: float, what: str = "workers") -> list[tuple[str, str]]:
  """Every process's (stdout, stderr) once all have exited within `timeout` seconds in all; else every one is
  killed and an AssertionError shows the tail of what each wrote."""
  deadline = time.time() + timeout
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=max(1.0, deadline - time.time())))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    tails = [f"process {i}:\n{(o or '')[-2000:]}{(e or '')[-2000:]}" for i, (o, e) in
             enumerate(p.communicate() for p in procs)]
    raise AssertionError(f"{what}: hung past {timeout:.0f} s\n" + "\n".join(tails)) from None
  return outs


@contextlib.contextmanager
def reaped(procs: list[subprocess.Popen]):
  """The block runs; afterwards, however it ended, no process of `procs` is left running."""
  try:
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
