"""The accelerator-compiler suite (`make aot`): needs .venv-aot's libtpu and CUDA plugin. Under `make aot`
(HINQA_AOT=1) a missing compiler is an error; elsewhere these tests are skipped, saying why."""
import os

import jax
import pytest

from hinqa_jax import targets

# What `plan` compiles in its own process: the default matmul precision (tests/conftest.py asks for
# "highest" for the CPU parity tests), and no persistent cache (a deviceless executable cannot be read back).
jax.config.update("jax_default_matmul_precision", None)
jax.config.update("jax_enable_compilation_cache", False)


def pytest_collection_modifyitems(config, items):
  missing = [p for p in ("tpu", "gpu") if not targets.compiler_installed(p)]
  if not missing:
    return
  if os.environ.get("HINQA_AOT") == "1":
    raise pytest.UsageError(f"make aot: the {' and '.join(missing)} compiler(s) are not installed in this venv "
                            f"(requirements-aot.txt)")
  skip = pytest.mark.skip(reason=f"no {'/'.join(missing)} compiler in this Python: run `make aot`")
  for item in items:
    if "tests/aot" in str(item.fspath):
      item.add_marker(skip)
