"""Causal self-attention over packed rows, one function, the kernel chosen by backend.

    out_bthe = causal_attention(q_bthe, k_bske, v_bske, segment_ids_bt)

Tokens attend to earlier-or-same slots of their own segment; segment id 0 is padding, which no real
token attends to. Query head h reads kv head h // G (grouped-query attention, H = K*G).

- GPU: cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`, causal,
  the packed segments as a boolean mask (cuDNN folds it into its bias). cuDNN runs bf16/fp16 only:
  float32 takes the same call's XLA implementation.
- TPU: Pallas splash attention (causal mask, segment ids), per batch row; under a mesh, inside
  `shard_map` over the batch axes (a Pallas call cannot be partitioned by the compiler).
- CPU (and anything else): XLA, by query blocks of ATTN_BLOCK, so the masked upper triangle is skipped.
The splash kernel runs on CPU in Pallas interpret mode for the tests (`interpret=True`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

ATTN_BLOCK = 128  # query block of the XLA path
IMPLS = ("xla", "cudnn", "splash")


def default_impl(platform: str | None = None) -> str:
  """The kernel for a platform (default: JAX's default backend)."""
  return {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform or jax.default_backend(), "xla")


def segment_mask(q_segment_bt, k_segment_bs):
  """[B,T,S] True where query and key are in the same non-padding segment (causality not included)."""
  return (q_segment_bt[:, :, None] == k_segment_bs[:, None, :]) & (k_segment_bs[:, None, :] != 0)


def causal_attention(q_bthe, k_bske, v_bske, segment_ids_bt, *, impl: str | None = None, mesh=None,
                     interpret: bool = False, remat_blocks: bool = False):
  """Attention output [B,T,H,E] in the compute dtype (softmax in float32), scale 1/sqrt(E).

  impl: xla | cudnn | splash (default: default_impl()). mesh: the training mesh; splash needs it to
  place its per-shard kernel. interpret: run splash in Pallas interpret mode (CPU tests).
  remat_blocks: recompute each query block in its own backward (XLA path; see blocked_xla).
  """
  impl = impl or default_impl()
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  b, t, h, e = q_bthe.shape
  k_heads = k_bske.shape[2]
  if h % k_heads or k_bske.shape != v_bske.shape or k_bske.shape[:2] != (b, t) or segment_ids_bt.shape != (b, t):
    raise ValueError(f"attention: q {q_bthe.shape}, k {k_bske.shape}, v {v_bske.shape}, segments "
                     f"{segment_ids_bt.shape} are not [B,T,H,E], [B,T,K,E] x2 with H % K == 0, [B,T]")
  if impl == "cudnn":
    return _cudnn(q_bthe, k_bske, v_bske, segment_ids_bt)
  if impl == "splash" and t % 128 == 0:
    return _splash(q_bthe, k_bske, v_bske, segment_ids_bt, mesh, interpret)
  return blocked_xla(q_bthe, k_bske, v_bske, segment_ids_bt, remat_blocks)  # splash tiles need T % 128 == 0


# ----------------------------------------------------------------------------- CPU: XLA by query blocks
def blocked_xla(q_bthe, k_bske, v_bske, segment_ids_bt, remat_blocks: bool = False):
  """Query block i (ATTN_BLOCK queries; the last may be shorter) reads only keys up to its end: the fully
  masked key blocks right of the diagonal are never computed, and no [T,T] score or mask is built.

  Heads go first ([B,K,(T,G),E]: each kv head's G query heads are rows of one matmul), so XLA:CPU's dots
  see contiguous operands; softmax's division is applied to the [.,E] output, not the [.,S] probabilities.

  remat_blocks: for layers under remat, which recompute the attention anyway. The query blocks run in
  a scan, each recomputed in its own backward (as flash attention does), so one block's [B,K,G,t,T]
  float32 scores are live at a time; unrolled, XLA schedules every block's recompute at once (0.5 GB
  at 8B, 2048 tokens). A scan needs one key length, so each block reads all T keys, the future ones
  masked: same values, ~4% more FLOPs at 8B.
  """
  b, t, h, e = q_bthe.shape
  k_heads = k_bske.shape[2]
  g = h // k_heads
  scale = jnp.asarray(1.0 / np.sqrt(e), q_bthe.dtype)
  q_bkqe = jnp.transpose(q_bthe.reshape(b, t, k_heads, g, e) * scale, (0, 2, 1, 3, 4)).reshape(b, k_heads, t * g, e)
  k_bkse, v_bkse = jnp.transpose(k_bske, (0, 2, 1, 3)), jnp.transpose(v_bske, (0, 2, 1, 3))
  neg = jnp.finfo(jnp.float32).min

  def block(q, k, v, start, n):  # queries start..start+n (start may be traced) against k/v's keys
    keys = k.shape[2]
    seg_q = jax.lax.dynamic_slice_in_dim(segment_ids_bt, start, n, axis=1)
    mask_bts = (segment_mask(seg_q, segment_ids_bt[:, :keys])
                & (jnp.arange(keys)[None, None, :] <= start + jnp.arange(n)[None, :, None]))
    s = jnp.einsum("bkqe,bkse->bkqs", q, k, preferred_element_type=jnp.float32).reshape(b, k_heads, n, g, keys)
    # The mask as an additive bias, not a select: a select against the scalar is a full-size broadcast
    # that JAX hoists out of the layer scan as a loop-invariant residual, every block's at once (0.43 GB
    # at 8B). Same values: s + min rounds to min (|s| is far below its ulp), and a fully masked row
    # (padding) is uniform either way.
    s = (s + jnp.where(mask_bts, 0.0, neg)[:, None, :, None, :]).reshape(b, k_heads, n * g, keys)
    # The row max only keeps exp in range (the result does not depend on it): no gradient through it.
    p = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
    o = jnp.einsum("bkqs,bkse->bkqe", p.astype(q.dtype), v, preferred_element_type=jnp.float32)
    return (o / jnp.sum(p, axis=-1, keepdims=True)).astype(q.dtype)

  n_blocks = t // ATTN_BLOCK
  if remat_blocks and n_blocks > 1 and t % ATTN_BLOCK == 0:
    q_nbkqe = jnp.moveaxis(q_bkqe.reshape(b, k_heads, n_blocks, ATTN_BLOCK * g, e), 2, 0)
    step = jax.checkpoint(lambda _, qi: (None, block(qi[0], k_bkse, v_bkse, qi[1] * ATTN_BLOCK, ATTN_BLOCK)))
    out = jax.lax.scan(step, None, (q_nbkqe, jnp.arange(n_blocks)))[1]  # [N,B,K,(t,G),E]
    out = jnp.moveaxis(out, 0, 2).reshape(b, k_heads, t * g, e)
  else:
    outs = [block(q_bkqe[:, :, start * g:min(t, start + ATTN_BLOCK) * g], k_bkse[:, :, :min(t, start + ATTN_BLOCK)],
                  v_bkse[:, :, :min(t, start + ATTN_BLOCK)], start, min(t, start + ATTN_BLOCK) - start)
            for start in range(0, t, ATTN_BLOCK)]
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  return jnp.transpose(out.reshape(b, k_heads, t, g, e), (0, 2, 1, 3, 4)).reshape(b, t, h, e)


# ----------------------------------------------------------------------------- GPU: cuDNN
def _cudnn(q_bthe, k_bske, v_bske, segment_ids_bt):
  # cuDNN's fused kernel takes fp16/bf16 only; float32 models use the same API's XLA implementation.
  impl = "cudnn" if q_bthe.dtype in (jnp.bfloat16, jnp.float16) else "xla"
  mask_b1ts = segment_mask(segment_ids_bt, segment_ids_bt)[:, None]
  return jax.nn.dot_product_attention(q_bthe, k_bske, v_bske, mask=mask_b1ts, is_causal=True,
                                      scale=1.0 / float(np.sqrt(q_bthe.shape[-1])), implementation=impl)


# ----------------------------------------------------------------------------- TPU: Pallas splash
@functools.lru_cache(maxsize=None)
def _splash_kernel(t: int, h: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  block = max(b for b in (512, 256, 128) if t % b == 0)
  sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  mask = sa.MultiHeadMask([sa.CausalMask((t, t)) for _ in range(h)])
  with jax.ensure_compile_time_eval():  # concrete mask tables: the kernel is cached across traces
    return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_local(q_bthe, k_bske, v_bske, segment_ids_bt, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  b, t, h, e = q_bthe.shape
  kernel = _splash_kernel(t, h, interpret)
  q_bhte = jnp.swapaxes(q_bthe * jnp.asarray(1.0 / np.sqrt(e), q_bthe.dtype), 1, 2)  # splash does not scale
  k_bkse, v_bkse = jnp.swapaxes(k_bske, 1, 2), jnp.swapaxes(v_bske, 1, 2)

  def one_row(q, k, v, seg):  # GQA: the kernel maps query head h to kv head h // (H/K) itself
    return kernel(q, k, v, segment_ids=sa.SegmentIds(q=seg, kv=seg))

  return jnp.swapaxes(jax.vmap(one_row)(q_bhte, k_bkse, v_bkse, segment_ids_bt), 1, 2)


def _splash(q_bthe, k_bske, v_bske, segment_ids_bt, mesh, interpret: bool):
  run = functools.partial(_splash_local, interpret=interpret)
  if mesh is None or mesh.size == 1:
    return run(q_bthe, k_bske, v_bske, segment_ids_bt)
  from hinqa_jax.sharding import BATCH_AXES
  # Rows over the batch axes; heads over `tensor` when both head counts split evenly.
  heads = "tensor" if (q_bthe.shape[2] % mesh.shape["tensor"] == 0 and
                       k_bske.shape[2] % mesh.shape["tensor"] == 0) else None
  spec = P(BATCH_AXES, None, heads, None)
  return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, P(BATCH_AXES, None)), out_specs=spec,
                       check_vma=False)(q_bthe, k_bske, v_bske, segment_ids_bt)
