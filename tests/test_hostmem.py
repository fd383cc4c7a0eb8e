"""hostmem.keep_freed_memory: a repeated XLA:CPU call reuses its temporaries instead of faulting them in again."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                                reason="glibc malloc only")

# The gradient of an 8-layer scan over [2048,512] activations (~120 MB of temporaries a call, as a train
# step has), called 30 times: its compiled temporaries (MB) and the minor page faults (MB) of calls 21-30.
_PROBE = textwrap.dedent("""
    import resource
    from hinqa_jax import hostmem
    applied = hostmem.keep_freed_memory()
    import jax, jax.numpy as jnp
    def loss(ws, x):
      h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)
      return jnp.sum(h)
    f = jax.jit(jax.grad(loss))
    ws, x = jnp.ones((8, 512, 512)) * 1e-3, jnp.ones((2048, 512))
    temp = f.lower(ws, x).compile().memory_analysis().temp_size_in_bytes / 1e6
    faults = []
    for _ in range(30):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(ws, x).block_until_ready()
      faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize() / 1e6)
    print(applied, temp, sum(faults[20:]))
""")


def _faults_mb(malloc: str) -> tuple[bool, float, float]:
  """(applied, MB of temporaries a call, MB faulted in by calls 21-30) in a fresh process."""
  env = dict(os.environ, HINQA_JAX_MALLOC=malloc, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-2000:]
  applied, temp, later = out.stdout.split()[-3:]
  return applied == "True", float(temp), float(later)


def test_repeated_calls_reuse_their_temporaries():
  # The heap grows over the first calls (fragmentation: up to ~5 calls' temporaries seen), then stays:
  # calls 21-30 fault in less than two calls' worth (glibc's defaults: all ten).
  applied, temp, later = _faults_mb("keep")
  assert applied
  assert later < 2 * temp, f"calls 21-30 faulted {later:.0f} MB in ({temp:.0f} MB of temporaries a call): not reused"


def test_glibc_defaults_fault_the_temporaries_in_on_every_call():
  # The same probe with the setting off: what keep_freed_memory saves (so the test above can fail).
  applied, temp, later = _faults_mb("system")
  assert not applied
  assert temp > 50, f"the probe has only {temp:.0f} MB of temporaries a call: it no longer measures reuse"
  assert later > 6 * temp, f"calls 21-30 faulted only {later:.0f} MB in with glibc's defaults ({temp:.0f} MB a call)"


def test_auto_applies_only_to_cpu_runs(monkeypatch):
  from hinqa_jax import hostmem
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not hostmem._cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
  assert not hostmem._cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert hostmem._cpu_only()
  monkeypatch.setattr(hostmem, "_applied", None)
  monkeypatch.setenv("HINQA_JAX_MALLOC", "sometimes")
  with pytest.raises(ValueError, match="HINQA_JAX_MALLOC"):
    hostmem.keep_freed_memory()


def test_auto_sees_an_accelerator_plugin_as_jax_would(monkeypatch, tmp_path):
  # No JAX_PLATFORMS: a module in the `jax_plugins` namespace (how jax finds its CUDA/ROCm plugins) means
  # an accelerator host, where the setting is not applied.
  import importlib
  from hinqa_jax import hostmem
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  if hostmem._accelerator_plugin_installed():
    pytest.skip("a real accelerator plugin is installed here: the fake one would change nothing")
  (tmp_path / "jax_plugins" / "fake_gpu_plugin").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "fake_gpu_plugin" / "__init__.py").write_text("")
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  assert hostmem._accelerator_plugin_installed()
  assert not hostmem._cpu_only()
