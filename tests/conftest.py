"""Test setup: 8 fake CPU devices and exact float32 matmuls, set before anything imports jax."""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One XLA compilation cache for the session and every process it starts (CLI runs, multi-process tests):
# the same programs compile in many of them. A fresh directory per session, removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="hinqa-jax-xla-cache-")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from hinqa_jax import cpu_tuning  # noqa: E402

cpu_tuning.keep_freed_memory()  # as the CLI does (fewer page faults, faster XLA:CPU steps)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
