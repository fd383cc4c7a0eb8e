"""Causal self-attention over packed rows, one function, the kernel chosen by backend.

    out_bthe = causal_attention(q_bthe, k_bske, v_bske, segment_ids_bt)

Tokens attend to earlier-or-same slots of their own segment; segment id 0 is padding, which no real
token attends to. Query head h reads kv head h // G (grouped-query attention, H = K*G).

- GPU: the Pallas (Triton) flash-attention kernel `jax.experimental.pallas.ops.gpu.attention.mha`, causal,
  with the packed segment ids read inside the kernel: no [B,T,T] mask or bias is ever built (cuDNN's
  public JAX entry takes a dense mask, and its packed layout is private API). The kernel wants one kv
  head per query head: kv heads are repeated G times (autodiff sums their gradients back).
- TPU: Pallas splash attention (causal mask, segment ids), per batch row; under a mesh, inside
  `shard_map` over the batch axes (a Pallas call cannot be partitioned by the compiler).
- CPU (and anything else): XLA, by query blocks of ATTN_BLOCK, so the masked upper triangle is skipped.
Decoding attends over a KV cache instead (`cached_attention`, one XLA softmax over the cache as stored).
Both kernels run on CPU in Pallas interpret mode for the value tests (`interpret=True`); the AOT suite
(tests/aot, `make aot`) compiles them with the real TPU and GPU compilers.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec as P

from hinqa_jax.sharding import BATCH_AXES, platform

ATTN_BLOCK = 128  # query block of the XLA path
IMPLS = ("xla", "triton", "splash")


def default_impl(platform_name: str) -> str:
  """The kernel for a device platform ("cpu", "gpu", "tpu"): that of the mesh the step is compiled for
  (sharding.platform), which is not the process's backend when compiling ahead of time for a TPU slice
  or a GPU node (`plan --target`)."""
  return {"gpu": "triton", "cuda": "triton", "tpu": "splash"}.get(platform_name, "xla")


class KVCache(NamedTuple):
  """One layer's KV cache as a decoding forward reads it: keys and values [B,K,S,E] (S slots), the slot
  this chunk's first token goes to, and which slots each of the chunk's tokens sees [B,T,S]."""
  k: jax.Array
  v: jax.Array
  index: jax.Array
  mask_bts: jax.Array


def cached_attention(q_btkge, k_bske, v_bske, cache: KVCache):
  """Attention output [B,T,H*E] of a chunk that follows what the cache holds, and the layer's new
  {"k", "v"}: the chunk's keys/values written into the cache in place at cache.index, then one softmax
  over the cache as stored (no slice or concatenated copy)."""
  at = (0, 0, cache.index, 0)
  k_cache = jax.lax.dynamic_update_slice(cache.k, jnp.swapaxes(k_bske, 1, 2).astype(cache.k.dtype), at)
  v_cache = jax.lax.dynamic_update_slice(cache.v, jnp.swapaxes(v_bske, 1, 2).astype(cache.v.dtype), at)
  dt = q_btkge.dtype
  scale = 1.0 / np.sqrt(q_btkge.shape[-1])
  s = jnp.einsum("btkge,bkse->bkgts", q_btkge, k_cache.astype(dt), preferred_element_type=jnp.float32) * scale
  s = jnp.where(cache.mask_bts[:, None, None], s, jnp.finfo(jnp.float32).min)
  p = jax.nn.softmax(s, axis=-1).astype(dt)
  # [B,K,G*T,S] @ [B,K,S,E], probabilities on the left: written as one einsum, XLA:CPU put the cache
  # on the left, contracted over its non-minor S axis (a strided library dot).
  b, k, g, t, s_len = p.shape
  out = jnp.matmul(p.reshape(b, k, g * t, s_len), v_cache.astype(dt)).reshape(b, k, g, t, -1)
  out = jnp.transpose(out, (0, 3, 1, 2, 4))  # [B,T,K,G,E]
  return out.reshape(*out.shape[:2], -1), {"k": k_cache, "v": v_cache}


def segment_mask(q_segment_bt, k_segment_bs):
  """[B,T,S] True where query and key are in the same non-padding segment (causality not included)."""
  return (q_segment_bt[:, :, None] == k_segment_bs[:, None, :]) & (k_segment_bs[:, None, :] != 0)


def causal_attention(q_bthe, k_bske, v_bske, segment_ids_bt, *, impl: str | None = None, mesh=None,
                     interpret: bool = False, remat_blocks: bool = False):
  """Attention output [B,T,H,E] in the compute dtype (softmax in float32), scale 1/sqrt(E).

  impl: xla | triton | splash (default: default_impl of sharding.platform(mesh)). mesh: the training mesh; the kernels run per shard inside it (a Pallas call cannot be
  partitioned by the compiler). interpret: run a kernel in Pallas interpret mode (CPU tests).
  remat_blocks: recompute each query block in its own backward (XLA path; see blocked_xla).
  """
  impl = impl or default_impl(platform(mesh))
  if impl not in IMPLS:
    raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
  b, t, h, e = q_bthe.shape
  k_heads = k_bske.shape[2]
  if h % k_heads or k_bske.shape != v_bske.shape or k_bske.shape[:2] != (b, t) or segment_ids_bt.shape != (b, t):
    raise ValueError(f"attention: q {q_bthe.shape}, k {k_bske.shape}, v {v_bske.shape}, segments "
                     f"{segment_ids_bt.shape} are not [B,T,H,E], [B,T,K,E] x2 with H % K == 0, [B,T]")
  if impl != "xla" and t % 128 == 0:  # the kernels' tiles need T % 128 == 0
    local = _splash_local if impl == "splash" else _triton_local
    return _per_shard(functools.partial(local, interpret=interpret), q_bthe, k_bske, v_bske, segment_ids_bt, mesh)
  return blocked_xla(q_bthe, k_bske, v_bske, segment_ids_bt, remat_blocks)


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


# ----------------------------------------------------------------------------- GPU: Pallas Triton flash attention
def _triton_local(q_bthe, k_bske, v_bske, segment_ids_bt, interpret: bool):
  g = q_bthe.shape[2] // k_bske.shape[2]
  # Query head h reads kv head h // G: repeat each kv head G times in place (GQA as plain MHA).
  k_bthe, v_bthe = jnp.repeat(k_bske, g, axis=2), jnp.repeat(v_bske, g, axis=2)
  # The kernel's segment mask is only q_seg == kv_seg: padding (0) would attend padding. Its outputs
  # are never read (no loss, no later token attends them), so this equals segment_mask's semantics.
  return gpu_attention.mha(q_bthe, k_bthe, v_bthe, segment_ids_bt, sm_scale=1.0 / float(np.sqrt(q_bthe.shape[-1])),
                           causal=True, interpret=interpret)


# ----------------------------------------------------------------------------- TPU: Pallas splash
@functools.lru_cache(maxsize=None)
def _splash_kernel(t: int, h: int, interpret: bool):
  block = max(b for b in (512, 256, 128) if t % b == 0)
  sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  mask = sa.MultiHeadMask([sa.CausalMask((t, t)) for _ in range(h)])
  with jax.ensure_compile_time_eval():  # concrete mask tables: the kernel is cached across traces
    return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_local(q_bthe, k_bske, v_bske, segment_ids_bt, interpret: bool):
  b, t, h, e = q_bthe.shape
  kernel = _splash_kernel(t, h, interpret)
  q_bhte = jnp.swapaxes(q_bthe * jnp.asarray(1.0 / np.sqrt(e), q_bthe.dtype), 1, 2)  # splash does not scale
  k_bkse, v_bkse = jnp.swapaxes(k_bske, 1, 2), jnp.swapaxes(v_bske, 1, 2)

  def one_row(q, k, v, seg):  # GQA: the kernel maps query head h to kv head h // (H/K) itself
    return kernel(q, k, v, segment_ids=sa.SegmentIds(q=seg, kv=seg))

  return jnp.swapaxes(jax.vmap(one_row)(q_bhte, k_bkse, v_bkse, segment_ids_bt), 1, 2)


def _per_shard(local, q_bthe, k_bske, v_bske, segment_ids_bt, mesh):
  """A per-device kernel on the mesh: rows over the batch axes, heads over `tensor` when both head
  counts split evenly."""
  if mesh is None or mesh.size == 1:
    return local(q_bthe, k_bske, v_bske, segment_ids_bt)
  heads = "tensor" if (q_bthe.shape[2] % mesh.shape["tensor"] == 0 and
                       k_bske.shape[2] % mesh.shape["tensor"] == 0) else None
  spec = P(BATCH_AXES, None, heads, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P(BATCH_AXES, None)), out_specs=spec,
                       check_vma=False)(q_bthe, k_bske, v_bske, segment_ids_bt)
