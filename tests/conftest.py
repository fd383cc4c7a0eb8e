"""Test setup: 8 fake CPU devices and exact float32 matmuls, set before anything imports jax."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hinqa_jax import hostmem  # noqa: E402

hostmem.keep_freed_memory()  # as the CLI does (fewer page faults, faster XLA:CPU steps)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
