"""Batched generation: prefill, then one `lax.while_loop` over new tokens with a KV cache (no Python per token).

Prompts of different lengths are left-padded into one batch: pads get segment id 0 (nothing attends
to them) and each row's RoPE positions start at 0 at its first real token, so a padded row computes
what it would alone. Rows stop at any of the stop ids; the loop ends when all rows stopped.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from hinqa_jax import attention, cpu_tuning, distributed, model as model_lib, sharding
from hinqa_jax.model import ModelConfig, Params


# Cache slots (rows x (prompt + new tokens)) of one generate call in evaluation: 64Ki slots is a 8.6 GB
# bf16 cache at Llama-3.1-8B (131 KB a slot), so 32 rows of 2048 fit one device beside the weights.
EVAL_BATCH_SLOTS = 65536


def bucket(n: int, multiple: int) -> int:
  """n rounded up to a multiple (prompt lengths are padded to few distinct shapes)."""
  return -(-n // multiple) * multiple


def token_batch_rows(prompt_len: int, max_new_tokens: int, max_rows: int, max_slots: int = EVAL_BATCH_SLOTS) -> int:
  """Rows of one generate call: at most max_rows, and rows * (prompt_len + max_new_tokens) <= max_slots
  (at least one row)."""
  return max(1, min(max_rows, max_slots // (prompt_len + max_new_tokens)))


def token_batches(prompt_lens: Sequence[int], max_new_tokens: int, max_rows: int, *,
                  max_slots: int = EVAL_BATCH_SLOTS, length_multiple: int = 16) -> list[list[int]]:
  """Indices of prompts grouped into generate calls, shortest first, each call's cache within
  max_slots: short prompts go max_rows at a time, long ones in fewer rows."""
  order = sorted(range(len(prompt_lens)), key=lambda i: prompt_lens[i])
  batches: list[list[int]] = []
  while order:
    rows = 1
    while rows < len(order):  # the batch's longest prompt is its last (sorted)
      longest = bucket(prompt_lens[order[rows]], length_multiple)
      if rows + 1 > token_batch_rows(longest, max_new_tokens, max_rows, max_slots):
        break
      rows += 1
    batches.append(order[:rows])
    order = order[rows:]
  return batches


# ----------------------------------------------------------------------------- the KV cache
def init_cache(cfg: ModelConfig, batch: int, slots: int) -> list[dict]:
  """Empty KV cache: per layer, keys/values [B,K,S,E] in the compute dtype (one buffer each, so a
  decode step updates and reads a layer's cache in place)."""
  shape = (batch, cfg.n_kv_heads, slots, cfg.head_dim)
  return [{"k": jnp.zeros(shape, jnp.dtype(cfg.dtype)), "v": jnp.zeros(shape, jnp.dtype(cfg.dtype))}
          for _ in range(cfg.n_layers)]


def split_layers(tree):
  """A stacked [L,...] layer tree as a list of L per-layer trees. Decoding slices once, before its
  token loop, so no step copies a layer's weights out of the stack (XLA:CPU would, every step)."""
  n = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]


def forward_cached(cfg: ModelConfig, params: Params, layers: list, layer_adapters: list | None, tokens_bt,
                   positions_bt, caches: list, cache_segments_bs, cache_index, *, lora_cfg=None,
                   platform: str | None = None):
  """Hidden states [B,T,D] of a chunk that follows what the caches hold, and the caches with it written.

  layers / layer_adapters: split_layers of params["layers"] / adapters["layers"]; caches: init_cache's
  per-layer {"k", "v"} [B,K,S,E]; cache_segments_bs: segment ids of the slots, this chunk's included
  (0 = empty or padding); the chunk's tokens go to slots cache_index.. and see slots up to their own.
  platform: the devices compiled for (default: the backend's), as in model.forward_hidden.
  """
  b, t = tokens_bt.shape
  shared = model_lib.shared_inputs(cfg, b, t, None, positions_bt, None, platform)
  slots_s = jnp.arange(cache_segments_bs.shape[1])
  q_slot_bt = cache_index + jnp.arange(t)[None, :]
  q_segments_bt = jax.lax.dynamic_slice_in_dim(cache_segments_bs, cache_index, t, axis=1)
  mask_bts = attention.segment_mask(q_segments_bt, cache_segments_bs) & (slots_s[None, None, :] <= q_slot_bt[:, :, None])
  x = params["embed_tokens"]["embedding"].astype(jnp.dtype(cfg.dtype))[tokens_bt]
  graphdef = model_lib.block_graphdef(cfg)
  scale = lora_cfg.scale if lora_cfg is not None else 1.0
  new_caches = []
  for i, (p, cache) in enumerate(zip(layers, caches)):
    ad = layer_adapters[i] if layer_adapters is not None else None
    x, kv = nnx.merge(graphdef, p)(cfg, x, shared, ad, (scale, 0.0, None),
                                   attention.KVCache(cache["k"], cache["v"], cache_index, mask_bts))
    new_caches.append(kv)
  return model_lib.final_norm(cfg, params, x), new_caches


# ----------------------------------------------------------------------------- generation
def sample_logits(logits_bv, key, temperature: float, top_k: int, top_p: float):
  """Greedy when temperature == 0; else temperature, then top-k, then nucleus (top-p) filtering."""
  if temperature == 0.0:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  logits_bv = logits_bv / temperature
  neg = jnp.finfo(logits_bv.dtype).min
  if top_k > 0:
    kth = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
    logits_bv = jnp.where(logits_bv < kth, neg, logits_bv)
  if top_p < 1.0:
    sorted_desc = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
    cutoff = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
    logits_bv = jnp.where(logits_bv < cutoff, neg, logits_bv)
  return jax.random.categorical(key, logits_bv, axis=-1).astype(jnp.int32)


# The empty cache comes in as an argument, not built inside: as a constant, XLA would try to
# constant-fold attention over it (slow compiles for long prompts); donated, its buffers become the
# loop's cache, updated in place.
def _generate_impl(cfg: ModelConfig, params, adapters, lora_cfg, tokens_bp, segment_bp, stop_ids, key, cache, *,
              max_new_tokens: int, temperature: float, top_k: int, top_p: float, mesh=None, platform=None):
  b, p = tokens_bp.shape
  positions_bp = jnp.maximum(jnp.cumsum(segment_bp, axis=1) - 1, 0).astype(jnp.int32)
  # Prefill: the prompt through the training attention (fused/blocked, no scores against the empty
  # cache); each layer's keys/values are written into its cache once. On a mesh its activations stay
  # split by rows as in training (weights gathered a layer at a time): left to itself, the partitioner
  # gathers the rows instead and every device computes the whole batch's [B,P,F] MLP activations.
  x, kv = model_lib.forward_hidden(cfg, params, tokens_bp, segment_ids=segment_bp, positions=positions_bp,
                                   adapters=adapters, lora_cfg=lora_cfg, return_kv=True, platform=platform,
                                   activation_sharding=sharding.activation_sharding(mesh) if mesh else None)
  cache = [{name: jax.lax.dynamic_update_slice(c[name], jnp.swapaxes(kv[name][i], 1, 2).astype(c[name].dtype),
                                               (0, 0, 0, 0)) for name in ("k", "v")} for i, c in enumerate(cache)]
  segments_bs = jnp.zeros((b, p + max_new_tokens), jnp.int32).at[:, :p].set(segment_bp).at[:, p:].set(1)
  logits = model_lib.logits_from_hidden(cfg, params, x[:, -1:])[:, 0]
  first = sample_logits(logits, jax.random.fold_in(key, 0), temperature, top_k, top_p)
  out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)
  done = jnp.isin(first, stop_ids)
  next_pos = positions_bp[:, -1] + 1
  # Once, outside the token loop. On a mesh the slices stay sharded: each step gathers the rows' [B,1,D]
  # activations around a layer and sums partial products, never a layer's weights (seen in the XLA dump
  # of the 8B eval plan: no weight all-gather in the loop).
  layers = split_layers(params["layers"])
  layer_adapters = split_layers(adapters["layers"]) if adapters is not None else None

  def cond(state):
    i, _, _, done, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, out, cache, done, pos = state
    tok = out[:, i - 1]
    x, cache = forward_cached(cfg, params, layers, layer_adapters, tok[:, None], pos[:, None], cache,
                              segments_bs, p + i - 1, lora_cfg=lora_cfg, platform=platform)
    logits = model_lib.logits_from_hidden(cfg, params, x)[:, 0]
    nxt = sample_logits(logits, jax.random.fold_in(key, i), temperature, top_k, top_p)
    nxt = jnp.where(done, 0, nxt)  # finished rows keep emitting a filler that is cut off below
    out = out.at[:, i].set(nxt)
    return i + 1, out, cache, done | jnp.isin(nxt, stop_ids), pos + 1

  n, out, cache, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), out, cache, done, next_pos))
  return out, n, cache  # the cache as an output, so the donated input buffers are its buffers


_JIT = dict(static_argnames=("cfg", "lora_cfg", "max_new_tokens", "temperature", "top_k", "top_p", "mesh", "platform"),
            donate_argnames=("cache",))
_generate = jax.jit(_generate_impl, **_JIT)
_generate_cpu = jax.jit(_generate_impl, compiler_options=cpu_tuning.DECODE_OPTIONS, **_JIT)


def generate_fn(platform: str = "tpu"):
  """The jitted generate for a platform ("cpu", "gpu", "tpu"; `plan` lowers it on abstract shapes), with
  cpu_tuning's compiler options where they apply."""
  return _generate_cpu if cpu_tuning.decode_compiler_options(platform) else _generate


def _on_mesh(mesh, cfg: ModelConfig, tokens_bp: np.ndarray, segment_bp: np.ndarray, slots: int):
  """Prompt rows split over the mesh's batch axes, each process placing its own rows, and an empty KV
  cache created already split the same way (init_cache's layout: per layer k/v [B,K,S,E])."""
  rows = NamedSharding(mesh, P(sharding.BATCH_AXES, None))
  kv = NamedSharding(mesh, P(sharding.BATCH_AXES, None, None, None))
  place = lambda a: jax.make_array_from_callback(a.shape, rows, lambda idx: a[idx])  # noqa: E731
  cache = jax.jit(lambda: init_cache(cfg, tokens_bp.shape[0], slots),
                  out_shardings=[{"k": kv, "v": kv}] * cfg.n_layers)()
  return place(tokens_bp), place(segment_bp), cache


def generate(cfg: ModelConfig, params: Params, prompts: Sequence[Sequence[int]], max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             eos_ids: Sequence[int] | None = None, adapters: Params | None = None, lora_cfg=None,
             length_multiple: int = 16, mesh=None) -> list[list[int]]:
  """New tokens for each prompt, greedy by default, cut before the first stop id (not included).

  eos_ids: stop ids (default cfg.eos_ids; Llama-3.1 ends a turn with any of 128001/128008/128009).
  length_multiple: prompts are left-padded to a multiple of this, so few distinct shapes compile.
  mesh: rows (and the KV cache) split over its (data, fsdp) axes, params placed on it as in training;
    every process passes the same prompts and gets every row's tokens back.
  """
  if not prompts:
    return []
  if any(len(q) == 0 for q in prompts):
    raise ValueError("generate: every prompt needs at least one token")
  if max_new_tokens < 1:
    raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
  longest = max(len(q) for q in prompts)
  if longest + max_new_tokens > cfg.max_seq_len:
    raise ValueError(f"generate: prompt of {longest} tokens + {max_new_tokens} new exceeds max_seq_len {cfg.max_seq_len}")
  stops = list(cfg.eos_ids if eos_ids is None else eos_ids) or [-1]
  n_prompts = len(prompts)
  if mesh is not None:  # copies of the last prompt fill the rows up to a multiple of the batch shards
    prompts = list(prompts) + [prompts[-1]] * (-n_prompts % sharding.batch_divisor(mesh))
  p = bucket(longest, length_multiple)
  tokens = np.zeros((len(prompts), p), np.int32)
  segments = np.zeros((len(prompts), p), np.int32)
  for row, q in enumerate(prompts):
    tokens[row, p - len(q):] = q
    segments[row, p - len(q):] = 1
  if mesh is None:
    tokens, segments = jnp.asarray(tokens), jnp.asarray(segments)
    cache = init_cache(cfg, len(prompts), p + max_new_tokens)
  else:
    tokens, segments, cache = _on_mesh(mesh, cfg, tokens, segments, p + max_new_tokens)
  platform = sharding.platform(mesh)
  out, n, _ = generate_fn(platform)(cfg, params, adapters, lora_cfg, tokens, segments,
                        jnp.asarray(stops, jnp.int32), jax.random.key(seed), cache, max_new_tokens=max_new_tokens,
                        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), mesh=mesh,
                        platform=platform)
  out = distributed.to_host(out)[:n_prompts, :int(n)]
  stop_set = set(stops)
  results = []
  for row in out.tolist():
    cut = next((i for i, t in enumerate(row) if t in stop_set), len(row))
    results.append(row[:cut])
  return results
