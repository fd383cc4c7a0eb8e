"""cpu_tuning: the model-side switches take effect on CPU only and change no result (losses, gradients,
generated tokens equal with the switches off), and keep_freed_memory makes a repeated XLA:CPU call reuse its
temporaries instead of faulting them in again."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from hinqa_jax import cpu_tuning

glibc = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                           reason="glibc malloc only")

# The gradient of an 8-layer scan over [2048,512] activations (~120 MB of temporaries a call, as a train
# step has), called 30 times: its compiled temporaries (MB) and the minor page faults (MB) of calls 21-30.
_PROBE = textwrap.dedent("""
    import resource
    from hinqa_jax import cpu_tuning
    applied = cpu_tuning.keep_freed_memory()
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


@glibc
def test_repeated_calls_reuse_their_temporaries():
  # The heap grows over the first calls (fragmentation: up to ~5 calls' temporaries seen), then stays:
  # calls 21-30 fault in less than two calls' worth (glibc's defaults: all ten).
  applied, temp, later = _faults_mb("keep")
  assert applied
  assert later < 2 * temp, f"calls 21-30 faulted {later:.0f} MB in ({temp:.0f} MB of temporaries a call): not reused"


@glibc
def test_glibc_defaults_fault_the_temporaries_in_on_every_call():
  # The same probe with the setting off: what keep_freed_memory saves (so the test above can fail).
  applied, temp, later = _faults_mb("system")
  assert not applied
  assert temp > 50, f"the probe has only {temp:.0f} MB of temporaries a call: it no longer measures reuse"
  assert later > 6 * temp, f"calls 21-30 faulted only {later:.0f} MB in with glibc's defaults ({temp:.0f} MB a call)"


@glibc
def test_auto_applies_only_to_cpu_runs(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not cpu_tuning._cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
  assert not cpu_tuning._cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert cpu_tuning._cpu_only()
  monkeypatch.setattr(cpu_tuning, "_applied", None)
  monkeypatch.setenv("HINQA_JAX_MALLOC", "sometimes")
  with pytest.raises(ValueError, match="HINQA_JAX_MALLOC"):
    cpu_tuning.keep_freed_memory()


@glibc
def test_auto_sees_an_accelerator_plugin_as_jax_would(monkeypatch, tmp_path):
  # No JAX_PLATFORMS: a module in the `jax_plugins` namespace (how jax finds its CUDA/ROCm plugins) means
  # an accelerator host, where the setting is not applied.
  import importlib
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  if cpu_tuning._accelerator_plugin_installed():
    pytest.skip("a real accelerator plugin is installed here: the fake one would change nothing")
  (tmp_path / "jax_plugins" / "fake_gpu_plugin").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "fake_gpu_plugin" / "__init__.py").write_text("")
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  assert cpu_tuning._accelerator_plugin_installed()
  assert not cpu_tuning._cpu_only()


# ----------------------------------------------------------------------------- the model's switches
def test_switches_apply_on_cpu_only_and_turn_off(monkeypatch):
  monkeypatch.delenv("HINQA_JAX_CPU_TUNING", raising=False)
  assert cpu_tuning.flat_tokens("cpu", "float32") and not cpu_tuning.flat_tokens("cpu", "bfloat16")
  assert not cpu_tuning.flat_tokens("tpu", "float32") and not cpu_tuning.flat_tokens("gpu", "float32")
  assert cpu_tuning.unroll_layers("auto", "cpu") and not cpu_tuning.unroll_layers("auto", "tpu")
  assert not cpu_tuning.unroll_layers("auto", "cpu", prefill=True)  # a prefill keeps no residuals: scanned
  assert cpu_tuning.unroll_layers("unroll", "tpu") and not cpu_tuning.unroll_layers("scan", "cpu")
  assert cpu_tuning.decode_compiler_options("cpu") == cpu_tuning.DECODE_OPTIONS
  assert cpu_tuning.decode_compiler_options("gpu") is None
  monkeypatch.setenv("HINQA_JAX_CPU_TUNING", "off")
  assert not cpu_tuning.flat_tokens("cpu", "float32") and not cpu_tuning.unroll_layers("auto", "cpu")
  assert cpu_tuning.unroll_layers("unroll", "cpu")  # an explicit layer_loop is not a tuning choice
  assert cpu_tuning.decode_compiler_options("cpu") is None
  monkeypatch.setenv("HINQA_JAX_CPU_TUNING", "maybe")
  with pytest.raises(ValueError, match="HINQA_JAX_CPU_TUNING"):
    cpu_tuning.enabled()


def _lora_setup():
  import jax
  from hinqa_jax import lora, model
  cfg = model.ModelConfig.preset("tiny", vocab_size=256)
  params = model.init(cfg, jax.random.key(0))
  lcfg = lora.LoraConfig(rank=4, alpha=8, dropout=0.1)
  ad = jax.tree.map(lambda a: a + 0.01, lora.init(cfg, lcfg, jax.random.key(1)))
  tokens = jax.random.randint(jax.random.key(2), (2, 24), 0, 256)
  return cfg, params, lcfg, ad, tokens


def test_the_switches_change_no_result(monkeypatch):
  """LoRA loss and gradients (with dropout), and greedy tokens: tuned and untuned XLA:CPU agree."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from hinqa_jax import decode, loss, model
  cfg, params, lcfg, ad, tokens = _lora_setup()
  weights = jnp.ones((2, 23), jnp.float32)

  def run():
    def f(a):
      x = model.forward_hidden(cfg, params, tokens, adapters=a, lora_cfg=lcfg, dropout_rng=jax.random.key(5))
      return loss.next_token_nll(cfg, params, x, tokens, weights)
    value, grads = jax.jit(jax.value_and_grad(f))(ad)  # a fresh jit: the switches are read when tracing
    return value, grads, decode.generate(cfg, params, [[1, 2, 3, 4, 5], [9, 8]], 8, eos_ids=[], adapters=ad,
                                         lora_cfg=lcfg)

  monkeypatch.delenv("HINQA_JAX_CPU_TUNING", raising=False)
  tuned = run()
  monkeypatch.setenv("HINQA_JAX_CPU_TUNING", "off")
  untuned = run()
  np.testing.assert_allclose(tuned[0], untuned[0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), tuned[1], untuned[1])
  assert tuned[2] == untuned[2]


def test_the_switches_reach_the_lowered_program(monkeypatch):
  """Each switch takes effect where it is consulted. Tuned: no projection multiplies a [B,T,.] operand (tokens
  flattened to [B*T,.], down_proj's and LoRA's inputs included), the layers are unrolled, a prefill still
  scans them, bf16 keeps its batch axes, and generate compiles with the CPU options; off: none of it."""
  import re

  import jax
  from hinqa_jax import decode, model
  cfg, params, lcfg, ad, tokens = _lora_setup()
  per_row = re.compile(r"dot_general.*\(tensor<2x24x\d+x(f32|bf16)>,")
  flat = re.compile(r"dot_general.*\(tensor<48x\d+xf32>,")

  def lowered(c=cfg, prefill: bool = False) -> tuple[list[str], int]:
    text = jax.jit(lambda p, a, t: model.forward_hidden(c, p, t, adapters=a, lora_cfg=lcfg, return_kv=prefill)).lower(
        params, ad, tokens).as_text()
    return [line for line in text.splitlines() if "dot_general" in line], text.count("stablehlo.while")

  monkeypatch.delenv("HINQA_JAX_CPU_TUNING", raising=False)
  dots, loops = lowered()
  assert loops == 0 and any(flat.search(d) for d in dots) and not any(per_row.search(d) for d in dots)
  # One layer's body (lowered once, called per layer): 7 projections, each with its two LoRA products.
  assert sum(bool(flat.search(d)) for d in dots) == 7 * 3
  assert lowered(prefill=True)[1] == 1  # a prefill keeps no residuals: scanned
  bf16_dots, _ = lowered(cfg.replace(dtype="bfloat16"))
  assert any(per_row.search(d) for d in bf16_dots)  # bf16 is not flattened
  assert decode.generate_fn("cpu") is decode._generate_cpu
  monkeypatch.setenv("HINQA_JAX_CPU_TUNING", "off")
  dots, loops = lowered()
  assert loops == 1 and not any(flat.search(d) for d in dots)
  assert sum(bool(per_row.search(d)) for d in dots) == 7 * 3  # the same products, laid out per row
  assert decode.generate_fn("cpu") is decode._generate


def test_decoding_takes_the_choice_of_the_platform_it_is_compiled_for():
  """A decode step lowered for a TPU (plan --target on this CPU machine) keeps [B,1,D] products; for XLA:CPU
  it multiplies [B,D]: the choice follows the target, not the process's backend."""
  import jax
  import jax.numpy as jnp
  from hinqa_jax import decode, model
  cfg = model.ModelConfig.preset("tiny", vocab_size=256)
  params = model.init(cfg, jax.random.key(0))
  layers = decode.split_layers(params["layers"])
  caches = decode.init_cache(cfg, 2, 8)
  tokens, positions = jnp.ones((2, 1), jnp.int32), jnp.full((2, 1), 3, jnp.int32)
  segments = jnp.ones((2, 8), jnp.int32)

  def dots(platform: str) -> list[str]:
    text = jax.jit(lambda: decode.forward_cached(cfg, params, layers, None, tokens, positions, caches, segments, 3,
                                                 platform=platform)).lower().as_text()
    return [line for line in text.splitlines() if "dot_general" in line]

  per_row, flat = f"(tensor<2x1x{cfg.dim}xf32>,", f"(tensor<2x{cfg.dim}xf32>,"
  on_cpu, on_tpu = dots("cpu"), dots("tpu")
  assert any(flat in d for d in on_cpu) and not any(per_row in d for d in on_cpu)
  assert any(per_row in d for d in on_tpu) and not any(flat in d for d in on_tpu)
