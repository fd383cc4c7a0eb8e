"""Next-token cross entropy from the final hidden states, by sequence chunks: [B,T,V] logits never exist.

At 8B (vocab 128,256, 8 x 2048 tokens) full float32 logits are 8.4 GB, and autodiff keeps a second copy
for the backward pass. Here the head runs on one chunk of C positions at a time ([B,C,V] logits,
float32 accumulation, log-softmax in float32), and the gradient of the chunk's loss with respect to
its hidden states (and to the head, only when the head is trained) is formed in the same pass, so the
backward pass needs no logits at all and no head recompute: `jax.custom_vjp` with the gradients as
residuals. The result is the loss and gradients of the full-logits path (tests/test_loss.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hinqa_jax.model import ModelConfig, Params, head_kernel

# Elements of one chunk's [B,C,V] float32 logits over the whole (global) batch: 256 Mi = 1 GiB, so at
# 8B (B=8, V=128,256) chunks are 256 positions; a CPU bench model (B=4, V=32,000) runs in one chunk.
CHUNK_ELEMENTS = 2**28


def chunk_len(batch: int, seq_len: int, vocab: int, budget: int = CHUNK_ELEMENTS) -> int:
  """Positions per chunk: the largest power of two with batch*C*vocab <= budget, at most seq_len."""
  c = 1
  while c * 2 <= seq_len and batch * c * 2 * vocab <= budget:
    c *= 2
  return seq_len if c * 2 > seq_len and batch * seq_len * vocab <= budget else c


def _chunk_nll(x_bcd, w_dv, labels_bc, weights_bc):
  """(weighted NLL sum, d sum / d logits [B,C,V] float32) of one chunk."""
  logits = jnp.einsum("bcd,dv->bcv", x_bcd, w_dv, preferred_element_type=jnp.float32)
  lse_bc = jax.nn.logsumexp(logits, axis=-1)
  picked_bc = jnp.take_along_axis(logits, labels_bc[..., None], axis=-1)[..., 0]
  nll_sum = jnp.sum((lse_bc - picked_bc) * weights_bc)
  probs = jax.nn.softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(labels_bc, logits.shape[-1], dtype=jnp.float32)
  return nll_sum, (probs - onehot) * weights_bc[..., None]


def _chunks(x_btd, labels_bt, weights_bt, c: int):
  """[B,T,...] -> [N,B,C,...] with T padded to a multiple of C (padding has weight 0)."""
  b, t = labels_bt.shape
  pad = -t % c
  if pad:
    x_btd = jnp.pad(x_btd, ((0, 0), (0, pad), (0, 0)))
    labels_bt = jnp.pad(labels_bt, ((0, 0), (0, pad)))
    weights_bt = jnp.pad(weights_bt, ((0, 0), (0, pad)))
  n = (t + pad) // c
  split = lambda a: jnp.swapaxes(a.reshape(b, n, c, *a.shape[2:]), 0, 1)
  return split(x_btd), split(labels_bt), split(weights_bt), pad


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _nll_sum(x_btd, w_dv, labels_bt, weights_bt, c):
  xs = _chunks(x_btd, labels_bt, weights_bt, c)[:3]

  def body(total, chunk):
    x, lab, wt = chunk
    logits = jnp.einsum("bcd,dv->bcv", x, w_dv, preferred_element_type=jnp.float32)
    picked = jnp.take_along_axis(logits, lab[..., None], axis=-1)[..., 0]
    return total + jnp.sum((jax.nn.logsumexp(logits, axis=-1) - picked) * wt), None

  return jax.lax.scan(body, jnp.float32(0), xs)[0]


def _nll_sum_fwd(x_btd, w_dv, labels_bt, weights_bt, c):
  # symbolic_zeros: each input comes as CustomVJPPrimal(value, perturbed); a frozen head (LoRA) is not
  # perturbed, so its [D,V] gradient is never formed.
  need_w = w_dv.perturbed
  x_btd, w_dv, labels_bt, weights_bt = (a.value for a in (x_btd, w_dv, labels_bt, weights_bt))
  x_n, lab_n, wt_n, pad = _chunks(x_btd, labels_bt, weights_bt, c)

  def body(carry, chunk):
    total, dw = carry
    x, lab, wt = chunk
    nll, dlogits = _chunk_nll(x, w_dv, lab, wt)
    dlogits = dlogits.astype(x.dtype)
    # Accumulate in float32 as the forward does: XLA:CPU then runs the bf16 dot as is, where a
    # bf16-output dot would make it convert the whole [D,V] head to float32 (2.1 GB at 8B) per chunk.
    dx = jnp.einsum("bcv,dv->bcd", dlogits, w_dv, preferred_element_type=jnp.float32).astype(x.dtype)
    if need_w:
      dw = dw + jnp.einsum("bcd,bcv->dv", x, dlogits, preferred_element_type=jnp.float32)
    return (total + nll, dw), dx

  dw0 = jnp.zeros(w_dv.shape, jnp.float32) if need_w else None
  (total, dw), dx_n = jax.lax.scan(body, (jnp.float32(0), dw0), (x_n, lab_n, wt_n))
  b, t, d = x_btd.shape
  dx_btd = jnp.swapaxes(dx_n, 0, 1).reshape(b, t + pad, d)[:, :t]
  return total, (dx_btd, None if dw is None else dw.astype(w_dv.dtype))


def _nll_sum_bwd(c, res, g):
  dx_btd, dw = res
  return (g * dx_btd).astype(dx_btd.dtype), None if dw is None else (g * dw).astype(dw.dtype), None, None


_nll_sum.defvjp(_nll_sum_fwd, _nll_sum_bwd, symbolic_zeros=True)


def loss_positions(weights_bt, cap: int) -> jax.Array:
  """[B,cap] indices of each row's weighted positions, in order, then weight-0 positions as filler.

  A stable sort on (weight == 0) puts the weighted positions first; the caller guarantees no row has
  more than `cap` of them (train.py checks every batch on the host), so none is dropped."""
  return jnp.argsort(weights_bt <= 0, axis=1, stable=True)[:, :cap]


def next_token_nll(cfg: ModelConfig, params: Params, x_btd, tokens_bt, weights_bt, *, chunk: int | None = None,
                   loss_cap: int | None = None):
  """Sum over positions t of weights[t] * -log p(tokens[t+1] | x[t]) (the last position predicts nothing).

  x_btd: final-norm hidden states (model.forward_hidden); weights_bt: [B,T-1] float32, position t's weight.
  chunk: positions per head chunk (default chunk_len of the shapes).
  loss_cap: at most this many weighted positions per row (the packer's `loss_cap`): the head then runs
    only on [B,loss_cap,D] hidden states gathered at those positions, not on all T (on VATIKA-style
    data ~10% of tokens carry loss). None: the head runs on every position.
  """
  b, t, _ = x_btd.shape
  labels_bt = jnp.pad(tokens_bt[:, 1:], ((0, 0), (0, 1)))
  weights_bt = jnp.pad(weights_bt.astype(jnp.float32), ((0, 0), (0, 1)))
  if loss_cap is not None and loss_cap < t:
    idx_bk = loss_positions(weights_bt, loss_cap)
    x_btd = jnp.take_along_axis(x_btd, idx_bk[..., None], axis=1)  # [B,K,D]; its gradient scatters back
    labels_bt = jnp.take_along_axis(labels_bt, idx_bk, axis=1)
    weights_bt = jnp.take_along_axis(weights_bt, idx_bk, axis=1)
    t = loss_cap
  c = chunk or chunk_len(b, t, cfg.vocab_size)
  return _nll_sum(x_btd, head_kernel(cfg, params, x_btd.dtype), labels_bt, weights_bt, c)
