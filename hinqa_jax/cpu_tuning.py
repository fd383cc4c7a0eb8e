"""XLA:CPU performance choices, all in one module: the switches the model and decoding consult, and the
host-memory setting of training processes. None applies on GPU or TPU, and none changes a result (the
same losses, gradients and tokens: tests/test_cpu_tuning.py); each was measured against its alternative
in one process on a 2-core EPYC (bench/RESULTS.md, "XLA:CPU choices"). HINQA_JAX_CPU_TUNING=off turns
the three model-side switches off, to measure them again; HINQA_JAX_MALLOC governs the fourth.

flat_tokens      float32 projections multiply the tokens flattened to one axis, [B*T,D] @ [D,O]. With
                 [B,T,D] operands XLA:CPU lays a weight gradient's dot out as [O, B*T] and transposes
                 every [B,T,O] output gradient to get there. bf16 keeps its batch axes (flattened, the 8B
                 bf16 plan's temporaries grew).
unroll_layers    layer_loop "auto": the decoder layers unrolled in a training or evaluation forward (XLA:CPU
                 then keeps each layer's residuals apart instead of in stacked [L,...] buffers), scanned for
                 a prefill (no residuals to keep) and on accelerators (one compiled layer, as MaxText's
                 scan_layers).
DECODE_OPTIONS   generate compiles with XLA's YNNPACK dot fusions off (XLA's own dot emitter instead): a
                 decode step is ~60 [8,D] x [D,O] products that only stream weights, where the library path
                 was slower. Training keeps the default: its large matmuls are faster with YNNPACK.
keep_freed_memory  glibc malloc keeps and reuses freed memory (below).

Host memory: glibc malloc keeps freed memory for reuse instead of returning it to the OS. XLA:CPU
allocates a step's temporaries afresh on every call; glibc serves each large block with its own mmap and
unmaps it on free, so every step faults its temporaries in again, page by zeroed page (on a LoRA step of
the layer34m bench model, about a gigabyte and a half of page faults and a tenth to a quarter of the
step in kernel time). With one arena, no mmap for large blocks and no trimming, a freed block is reused
by the next step and a step faults nothing in.

The cost: freed blocks are not given back, and fragmentation makes the heap settle at a few steps'
temporaries (tests/test_cpu_tuning.py measures both). Hence only for CPU runs: with HINQA_JAX_MALLOC
unset ("auto") it is applied when JAX_PLATFORMS is cpu, or when jax would find no accelerator plugin (none
in its `jax_plugins` namespace or entry points, as jax discovers CUDA/ROCm plugins, and no libtpu); a GPU
or TPU host, whose host memory holds checkpoints and data rather than step temporaries, keeps glibc's
defaults. HINQA_JAX_MALLOC=keep applies it always, =system never. Not glibc (macOS, musl): nothing changes.

One arena also costs decoding: a decode step's many small allocations from XLA's threads then share one
lock. So only training-dominated processes call `keep_freed_memory()`, first thing, before jax starts
its threads: the CLI's `train` and `run` (`evaluate` keeps glibc's defaults), bench/train.py and
bench/train_cli.py (both sides share the process), and the tests.

This module imports nothing of jax (keep_freed_memory must run before jax starts).
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


# ----------------------------------------------------------------------------- the model's switches
def enabled() -> bool:
  """Whether the model-side switches apply (HINQA_JAX_CPU_TUNING=off: none does, for A/B measurements)."""
  mode = os.environ.get("HINQA_JAX_CPU_TUNING", "on")
  if mode not in ("on", "off"):
    raise ValueError(f"HINQA_JAX_CPU_TUNING must be on or off, got {mode!r}")
  return mode == "on"


def flat_tokens(platform: str, dtype: str) -> bool:
  """Whether a layer's projections run on its tokens flattened to [B*T, D] (XLA:CPU, float32)."""
  return platform == "cpu" and str(dtype) == "float32" and enabled()


def unroll_layers(layer_loop: str, platform: str, prefill: bool = False) -> bool:
  """Whether forward_hidden unrolls its layer loop: layer_loop "scan"/"unroll" as set; "auto" unrolls on
  XLA:CPU except for a prefill."""
  if layer_loop != "auto":
    return layer_loop == "unroll"
  return platform == "cpu" and not prefill and enabled()


DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def decode_compiler_options(platform: str) -> dict | None:
  """XLA compiler options of generate: DECODE_OPTIONS on CPU, none elsewhere."""
  return dict(DECODE_OPTIONS) if platform == "cpu" and enabled() else None


# ----------------------------------------------------------------------------- host memory


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
