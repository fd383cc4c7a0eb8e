"""Attention by backend: the TPU splash and GPU Triton kernels (Pallas interpret mode), each against the blocked XLA path (itself checked against transformers in test_model.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hinqa_jax import attention

B, T, H, K, E = 2, 256, 4, 2, 64


@pytest.fixture(scope="module")
def qkv():
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (B, T, H, E))
  k = jax.random.normal(ks[1], (B, T, K, E))
  v = jax.random.normal(ks[2], (B, T, K, E))
  seg = np.zeros((B, T), np.int32)  # row 0: two packed segments then padding; row 1: one full segment
  seg[0, :100], seg[0, 100:230], seg[1] = 1, 2, 1
  seg = jnp.asarray(seg)
  cotangent = jax.random.normal(ks[3], q.shape) * (seg > 0)[:, :, None, None]  # padding rows carry no loss
  return q, k, v, seg, cotangent


def _values_and_grads(impl, qkv, **kw):
  q, k, v, seg, cot = qkv
  f = lambda a, b, c: attention.causal_attention(a, b, c, seg, impl=impl, **kw)  # noqa: E731
  out = jax.jit(f)(q, k, v)
  grads = jax.jit(jax.grad(lambda a, b, c: jnp.sum(f(a, b, c) * cot), argnums=(0, 1, 2)))(q, k, v)
  return np.asarray(out) * (np.asarray(seg) > 0)[:, :, None, None], grads


def test_splash_kernel_in_interpret_mode_equals_the_xla_path(qkv):
  """The TPU kernel itself (Pallas splash, causal mask + segment ids, GQA) run by the Pallas interpreter."""
  ref_out, ref_grads = _values_and_grads("xla", qkv)
  out, grads = _values_and_grads("splash", qkv, interpret=True)
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=5e-5, rtol=1e-5)


def test_triton_kernel_in_interpret_mode_equals_the_xla_path(qkv):
  """The GPU kernel itself (Pallas Triton flash attention, causal, segment ids read in the kernel, GQA by
  repeated kv heads) run by the Pallas interpreter; tests/aot compiles it for an H100."""
  ref_out, ref_grads = _values_and_grads("xla", qkv)
  out, grads = _values_and_grads("triton", qkv, interpret=True)
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=5e-5, rtol=1e-5)


def test_kernel_follows_the_platform():
  assert attention.default_impl("gpu") == "triton" and attention.default_impl("tpu") == "splash"
  assert attention.default_impl("cpu") == "xla"


def test_bad_shapes_and_impl(qkv):
  q, k, v, seg, _ = qkv
  with pytest.raises(ValueError, match="impl must be one of"):
    attention.causal_attention(q, k, v, seg, impl="flash")
  with pytest.raises(ValueError, match=r"H % K == 0"):
    attention.causal_attention(q[:, :, :3], k, v, seg)


def test_rematted_block_scan_equals_the_unrolled_blocks(qkv):
  """Under remat the XLA path runs its query blocks in a rematted scan over all keys (memory: one block's
  scores live at a time); values and gradients are those of the unrolled triangular blocks."""
  ref_out, ref_grads = _values_and_grads("xla", qkv)
  out, grads = _values_and_grads("xla", qkv, remat_blocks=True)
  np.testing.assert_allclose(out, ref_out, atol=1e-6, rtol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-6)
