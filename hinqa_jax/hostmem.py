"""Host memory: glibc malloc keeps freed memory for reuse instead of returning it to the OS.

XLA:CPU allocates a step's temporaries afresh on every call. glibc serves each large block with its own
mmap and unmaps it on free, so every step faults its temporaries in again, page by zeroed page: on a
33.6M-parameter LoRA step (batch 4 x 512) 1.37 GB of page faults and ~1 s of kernel time a step, a
tenth to a quarter of the step on a 2-core EPYC. With one arena, no mmap for large blocks and no trimming,
a freed block is reused by the next step and a step faults nothing in.

The cost: freed blocks are not given back, and fragmentation makes the heap settle at a few steps'
temporaries (a probe with 235 MB of temporaries a call settled at 1.5-1.7 GB resident after ~15 calls,
against 0.55 GB with glibc's defaults). Hence only for CPU runs: with HINQA_JAX_MALLOC unset ("auto")
it is applied when JAX_PLATFORMS is cpu, or when jax would find no accelerator plugin (none in its
`jax_plugins` namespace or entry points, as jax discovers CUDA/ROCm plugins, and no libtpu); a GPU or TPU
host, whose host memory holds checkpoints and data rather than step temporaries, keeps glibc's defaults.
HINQA_JAX_MALLOC=keep applies it always, =system never. Not glibc (macOS, musl): nothing changes.

One arena also costs decoding: a decode step's many small allocations from XLA's threads then share one
lock (bench/decode.py, ours: layer34m 210-240 tok/s with it against 264-270 without, same machine). So
only training-dominated processes call `keep_freed_memory()`, first thing, before jax starts its
threads: the CLI's `train` and `run` (`evaluate` keeps glibc's defaults), bench/train.py and
bench/train_cli.py (both sides share the process), and the tests.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc malloc.h
_applied: bool | None = None


def _accelerator_plugin_installed() -> bool:
  """Whether jax would find a PJRT plugin (CUDA, ROCm: the `jax_plugins` namespace package or entry-point
  group, as jax's own discovery looks) or libtpu, without importing jax."""
  if importlib.util.find_spec("libtpu") is not None or importlib.metadata.entry_points(group="jax_plugins"):
    return True
  namespace = importlib.util.find_spec("jax_plugins")
  return namespace is not None and any(pkgutil.iter_modules(namespace.submodule_search_locations or []))


def _cpu_only() -> bool:
  """Whether this process will run on CPU: JAX_PLATFORMS says so, or no accelerator plugin is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not _accelerator_plugin_installed()


def keep_freed_memory() -> bool:
  """Make glibc malloc keep and reuse freed memory (see the module doc); True if applied. Idempotent.

  Call before the threads that allocate start (jax starts XLA's when its backend first initialises):
  the one-arena setting only reaches threads that have not allocated yet."""
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  mode = os.environ.get("HINQA_JAX_MALLOC", "auto")
  if mode not in ("auto", "keep", "system"):
    raise ValueError(f"HINQA_JAX_MALLOC must be auto, keep or system, got {mode!r}")
  if mode == "system" or (mode == "auto" and not _cpu_only()) or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # mallopt returns 1 on success; the order matters little, all three are needed.
  _applied = all(mallopt(param, value) == 1 for param, value in
                 ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
  return _applied
