"""The projections' product x [..., I] @ w [I, O], one policy for the model's kernels and quant.py's
dequantized ones: below float32 it accumulates in float32 and rounds once (forward and backward)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def _matmul_lowp(x, w):
  return jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _matmul_lowp_fwd(x, w):
  # symbolic_zeros: a frozen kernel (LoRA's base) is not perturbed, so its [I,O] gradient is never formed.
  need_w = w.perturbed
  x, w = x.value, w.value
  return _matmul_lowp(x, w), (x, w, need_w)


def _matmul_lowp_bwd(res, g):
  x, w, need_w = res
  dx = jnp.einsum("...o,io->...i", g, w, preferred_element_type=jnp.float32).astype(x.dtype)
  dw = None
  if need_w:
    dw = jnp.einsum("...i,...o->io", x, g, preferred_element_type=jnp.float32).astype(w.dtype)
  return dx, dw


_matmul_lowp.defvjp(_matmul_lowp_fwd, _matmul_lowp_bwd, symbolic_zeros=True)


def matmul(x, w):
  """x [...,I] @ w [I,O] in x's dtype. Below float32 (bf16) it accumulates in float32 and rounds once,
  forward and backward, as GPU and TPU matmuls do; XLA:CPU then runs its bf16 kernels instead of
  converting every weight and activation operand to a float32 copy (about 1 GB of temporaries per
  8B layer). float32 is a plain matmul. (Whether x's tokens come flattened is cpu_tuning's choice.)"""
  if x.dtype == jnp.float32:
    return x @ w
  return _matmul_lowp(x, w)
