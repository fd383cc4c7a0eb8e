"""LLaMA-3.1 decoder in Flax NNX, used functionally.

NNX modules declare the parameters and hold the math of one layer; the public functions below take
and return plain pytrees (nested dicts of arrays), so `jax.jit`, sharding and Orbax see ordinary
pytrees. The L decoder layers are stacked on a leading axis and run with `jax.lax.scan` (or unrolled,
`layer_loop`). Decoding with a KV cache (decode.py) builds its forward from the same Block, `shared_inputs`,
`block_graphdef` and `final_norm`; a layer reads its cache through attention.KVCache. What XLA:CPU needs to
run fast is decided in cpu_tuning.py, which the forward consults (flattened tokens, the layer loop).

Parameter paths mirror Hugging Face names (`layers/self_attn/q_proj/kernel` is HF
`model.layers.{i}.self_attn.q_proj.weight`, transposed), so hf.py is a table, not a translation.

Einsum letters: B batch, T query length, S key length (cache slots), D model dim, H query heads,
K kv heads, G query heads per kv head (H = K*G), E head dim, F MLP hidden, V vocab, L layers, R LoRA rank.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hinqa_jax import attention, cpu_tuning, quant, sharding
from hinqa_jax.matmul import matmul

Params = dict[str, Any]
LLAMA3_EOS_IDS = (128001, 128008, 128009)


@functools.partial(jax.tree_util.register_static)
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a LLaMA-3.x model. Static: a pytree with no leaves, hashable for jit."""
  vocab_size: int
  dim: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  ffn_dim: int
  head_dim: int = 0  # 0 = dim // n_heads
  rms_eps: float = 1e-5
  rope_theta: float = 500000.0
  # llama3 RoPE scaling; factor 0 = no scaling.
  rope_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_pos: int = 8192
  max_seq_len: int = 131072
  tie_embeddings: bool = False
  bos_id: int = 128000
  eos_ids: tuple[int, ...] = LLAMA3_EOS_IDS
  pad_id: int = 128004
  dtype: str = "float32"  # compute dtype of matmuls; norms, softmax and logits stay float32
  param_dtype: str = "float32"  # storage dtype of the frozen base weights
  remat: str = "none"  # none | full | dots: what each scanned layer saves for the backward pass
  # scan | unroll | auto: the layer loop of forward_hidden. auto: cpu_tuning.unroll_layers (unrolled on
  # XLA:CPU except for a prefill; scanned on accelerators, one compiled layer, as MaxText's scan_layers).
  layer_loop: str = "auto"
  # "" | int8 | nf4: storage of the frozen projection kernels (quant.py), dequantized inside each layer;
  # embeddings, norms and the head stay in param_dtype. quantize_block: NF4's inputs per absmax.
  quantize: str = ""
  quantize_block: int = 64

  def __post_init__(self):
    if self.head_dim == 0:
      object.__setattr__(self, "head_dim", self.dim // self.n_heads)
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"remat must be none, full or dots, got {self.remat!r}")
    if self.layer_loop not in ("auto", "scan", "unroll"):
      raise ValueError(f"layer_loop must be auto, scan or unroll, got {self.layer_loop!r}")
    if self.quantize:
      for d_in in {self.dim, self.n_heads * self.head_dim, self.ffn_dim}:
        quant.check(self.quantize, self.quantize_block, d_in)

  @classmethod
  def preset(cls, name: str, **overrides) -> "ModelConfig":
    if name not in PRESETS:
      raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)

  def replace(self, **overrides) -> "ModelConfig":
    return dataclasses.replace(self, **overrides)


_LLAMA31_COMMON = dict(vocab_size=128256, rope_theta=500000.0, rope_factor=8.0, rope_low_freq_factor=1.0,
                       rope_high_freq_factor=4.0, rope_original_max_pos=8192, max_seq_len=131072)
PRESETS = {
    # Meta-Llama-3.1-8B config.json.
    "llama3_8b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, **_LLAMA31_COMMON),
    # Meta-Llama-3.1-70B config.json.
    "llama3_70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672, **_LLAMA31_COMMON),
    # Small CPU presets, trained from scratch with the bundled tokenizer (vocab set from the tokenizer).
    "tiny": ModelConfig(vocab_size=4096, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192,
                        max_seq_len=2048, rope_original_max_pos=256, tie_embeddings=True),
    "small": ModelConfig(vocab_size=4096, dim=256, n_layers=4, n_heads=8, n_kv_heads=2, ffn_dim=768,
                         max_seq_len=2048, rope_original_max_pos=1024, tie_embeddings=True),
    # The CPU demo's model, pretrained from scratch in a few minutes (1.31M parameters at vocab 4096).
    "demo": ModelConfig(vocab_size=4096, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384,
                        max_seq_len=2048, rope_original_max_pos=512, tie_embeddings=True),
    # A CPU benchmark model (37.2M parameters, a third of them in the head; bench/common.py).
    "bench30m": ModelConfig(vocab_size=32000, dim=384, n_layers=8, n_heads=6, n_kv_heads=2, ffn_dim=1024,
                            max_seq_len=2048, rope_original_max_pos=1024, tie_embeddings=False),
}


def _dtype(name: str):
  return jnp.dtype(name)


# ----------------------------------------------------------------------------- rotary embeddings
def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies [E/2] with llama3 scaling, computed in float32 as transformers does."""
  exps = np.arange(0, cfg.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(cfg.head_dim)
  inv_freq = (np.float32(1.0) / (np.float32(cfg.rope_theta) ** exps)).astype(np.float32)
  if not cfg.rope_factor:
    return inv_freq
  factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
  old_len = cfg.rope_original_max_pos
  low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
  wavelen = 2 * math.pi / inv_freq
  # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, the band between blended.
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def rope_tables(positions_bt, inv_freq, dtype):
  """(cos, sin) [B,T,1,E] of the rotary embedding, made once per forward and shared by every layer."""
  freqs_bte = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs_bte, freqs_bte], axis=-1)[:, :, None, :]
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x_bthe, rope):
  """Rotary embedding in the rotate-half layout of HF checkpoints (no q/k permutation needed)."""
  cos, sin = rope
  return x_bthe * cos + _rotate_half(x_bthe) * sin


# ----------------------------------------------------------------------------- modules
class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, param_dtype):
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * x32.astype(x.dtype)


class Proj(nnx.Module):
  """A bias-free projection `x @ kernel` with an optional LoRA update `scale * x @ a @ b`. With `quantize`,
  the frozen kernel is stored as quant.py's leaves and dequantized here, inside the layer."""

  def __init__(self, d_in: int, d_out: int, rngs: nnx.Rngs, param_dtype, quantize: str = "", block: int = 64):
    std = 1.0 / math.sqrt(d_in)
    kernel = jax.random.normal(rngs.params(), (d_in, d_out), param_dtype) * std
    if quantize:
      for leaf, value in quant.quantize(kernel, quantize, block).items():
        setattr(self, leaf, nnx.Param(value))
    else:
      self.kernel = nnx.Param(kernel)

  def __call__(self, x, adapter=None, scale: float = 1.0, dropout: float = 0.0, rng=None):
    if hasattr(self, "kernel"):
      y = matmul(x, self.kernel[...].astype(x.dtype))
    else:
      codes = getattr(self, quant.CODE_LEAF["nf4" if hasattr(self, quant.CODE_LEAF["nf4"]) else "int8"])
      y = quant.qmatmul(x, codes[...], getattr(self, quant.SCALE_LEAF)[...])
    if adapter is not None:
      xa = x
      if dropout and rng is not None:
        keep = jax.random.bernoulli(rng, 1.0 - dropout, x.shape)
        xa = jnp.where(keep, x / (1.0 - dropout), 0).astype(x.dtype)
      h = matmul(xa, adapter["a"].astype(x.dtype))
      y = y + scale * matmul(h, adapter["b"].astype(x.dtype))
    return y


def _proj(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs) -> Proj:
  return Proj(d_in, d_out, rngs, _dtype(cfg.param_dtype), cfg.quantize, cfg.quantize_block)


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, e = cfg.dim, cfg.head_dim
    self.q_proj = _proj(cfg, d, cfg.n_heads * e, rngs)  # kernel [D, H*E]
    self.k_proj = _proj(cfg, d, cfg.n_kv_heads * e, rngs)  # kernel [D, K*E]
    self.v_proj = _proj(cfg, d, cfg.n_kv_heads * e, rngs)  # kernel [D, K*E]
    self.o_proj = _proj(cfg, cfg.n_heads * e, d, rngs)  # kernel [H*E, D]


class MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.gate_proj = _proj(cfg, cfg.dim, cfg.ffn_dim, rngs)  # kernel [D, F]
    self.up_proj = _proj(cfg, cfg.dim, cfg.ffn_dim, rngs)  # kernel [D, F]
    self.down_proj = _proj(cfg, cfg.ffn_dim, cfg.dim, rngs)  # kernel [F, D]


class Block(nnx.Module):
  """One decoder layer: pre-norm attention and SwiGLU MLP, each with a residual."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = _dtype(cfg.param_dtype)
    self.input_layernorm = RMSNorm(cfg.dim, cfg.rms_eps, pd)
    self.self_attn = Attention(cfg, rngs)
    self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.rms_eps, pd)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, cfg: ModelConfig, x_btd, shared: "Shared", adapters: dict | None, lora: tuple,
               cache: attention.KVCache | None = None):
    """(x_btd after the layer, this chunk's {"k", "v"}: the cache written with them when decoding, the
    keys and values themselves when shared.return_kv, else None)."""
    scale, dropout, rng = lora
    ad = adapters or {}
    rngs = list(jax.random.split(rng, 7)) if rng is not None else [None] * 7

    def proj(module, group, name, x, i):
      return module(x, ad.get(group, {}).get(name), scale, dropout, rngs[i])

    b, t, d = x_btd.shape
    k_heads, e = cfg.n_kv_heads, cfg.head_dim
    g = cfg.n_heads // k_heads
    # The projections' operands: [B*T,...] where cpu_tuning.flat_tokens chose it, else [B,T,...].
    tokens = (lambda a: a.reshape(b * t, a.shape[-1])) if shared.flat_tokens else (lambda a: a)  # noqa: E731
    h = tokens(self.input_layernorm(x_btd))
    attn = self.self_attn
    q = proj(attn.q_proj, "self_attn", "q_proj", h, 0).reshape(b, t, cfg.n_heads, e)
    k = proj(attn.k_proj, "self_attn", "k_proj", h, 1).reshape(b, t, k_heads, e)
    v = proj(attn.v_proj, "self_attn", "v_proj", h, 2).reshape(b, t, k_heads, e)
    q = apply_rope(q, shared.rope)
    k = apply_rope(k, shared.rope)
    if cache is None:  # training and prefill: the backend's fused/blocked kernel over this chunk only
      out = attention.causal_attention(q, k, v, shared.segment_ids, impl=shared.attn_impl, mesh=shared.mesh,
                                       remat_blocks=cfg.remat != "none")
      new_kv = {"k": k, "v": v} if shared.return_kv else None
    else:  # decoding: over the layer's cache, this chunk written into it
      out, new_kv = attention.cached_attention(q.reshape(b, t, k_heads, g, e), k, v, cache)
    out = tokens(out.reshape(b, t, cfg.n_heads * e))
    x_btd = x_btd + proj(attn.o_proj, "self_attn", "o_proj", out, 3).reshape(b, t, d)

    h = tokens(self.post_attention_layernorm(x_btd))
    mlp = self.mlp
    gate = proj(mlp.gate_proj, "mlp", "gate_proj", h, 4)
    up = proj(mlp.up_proj, "mlp", "up_proj", h, 5)
    x_btd = x_btd + proj(mlp.down_proj, "mlp", "down_proj", jax.nn.silu(gate) * up, 6).reshape(b, t, d)
    return x_btd, new_kv


@functools.lru_cache(maxsize=None)
def block_graphdef(cfg: ModelConfig):
  """The Block's graph (no arrays): nnx.merge(block_graphdef(cfg), layer_params) is a layer."""
  return nnx.graphdef(nnx.eval_shape(lambda: Block(cfg, nnx.Rngs(0))))


# ----------------------------------------------------------------------------- init
def init(cfg: ModelConfig, key: jax.Array) -> Params:
  """Random base parameters. `jax.eval_shape(model.init, cfg, key)` allocates nothing."""
  k_embed, k_layers, k_head = jax.random.split(key, 3)
  pd = _dtype(cfg.param_dtype)

  def init_block(k):
    return nnx.to_pure_dict(nnx.state(Block(cfg, nnx.Rngs(params=k))))

  params = {
      "embed_tokens": {"embedding": jax.random.normal(k_embed, (cfg.vocab_size, cfg.dim), pd) * 0.02},
      "layers": jax.vmap(init_block)(jax.random.split(k_layers, cfg.n_layers)),
      "norm": {"weight": jnp.ones((cfg.dim,), pd)},
  }
  if not cfg.tie_embeddings:
    std = 1.0 / math.sqrt(cfg.dim)
    params["lm_head"] = {"kernel": jax.random.normal(k_head, (cfg.dim, cfg.vocab_size), pd) * std}
  return params


def count_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- forward
_REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
                   "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


@dataclasses.dataclass(frozen=True)
class Shared:
  """What every layer of one forward shares (traced arrays and static choices; never crosses a jit)."""
  rope: tuple  # (cos, sin) [B,T,1,E]
  segment_ids: jax.Array  # [B,T]
  mesh: Any  # the activations' mesh, or None
  platform: str  # the devices compiled for: "cpu", "gpu", "tpu"
  attn_impl: str  # attention.causal_attention's kernel
  flat_tokens: bool  # cpu_tuning.flat_tokens: projections over [B*T,D]
  return_kv: bool = False  # a prefill: each layer returns its keys and values


def shared_inputs(cfg: ModelConfig, b: int, t: int, segment_ids, positions, activation_sharding,
                  platform: str | None = None, return_kv: bool = False) -> Shared:
  """The Shared of one forward: RoPE tables, segment ids, the mesh, the attention kernel (that of the
  mesh's devices, else of `platform`, else of the default backend) and the CPU choices."""
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  mesh = activation_sharding.mesh if activation_sharding is not None else None
  rope = rope_tables(positions, rope_inv_freq(cfg), _dtype(cfg.dtype))
  platform = sharding.platform(mesh, platform)
  return Shared(rope, segment_ids, mesh, platform, attention.default_impl(platform),
                cpu_tuning.flat_tokens(platform, cfg.dtype), return_kv)


def _lora_settings(cfg: ModelConfig, lora_cfg, dropout_rng):
  scale = lora_cfg.scale if lora_cfg is not None else 1.0
  dropout = lora_cfg.dropout if lora_cfg is not None else 0.0
  layer_rngs = jax.random.split(dropout_rng, cfg.n_layers) if dropout_rng is not None else None
  return scale, dropout, layer_rngs


def forward_hidden(cfg: ModelConfig, params: Params, tokens_bt, *, segment_ids=None, positions=None,
                   adapters=None, lora_cfg=None, dropout_rng=None, activation_sharding=None, return_kv: bool = False,
                   platform: str | None = None):
  """Final-norm hidden states [B,T,D] (see `forward`); with return_kv, also every layer's keys and
  values {"k", "v"}: [L,B,T,K,E] (after RoPE), for a prefill to write into a cache once.
  platform: the devices compiled for, when no activation_sharding names them (default: the backend's)."""
  b, t = tokens_bt.shape
  dt = _dtype(cfg.dtype)
  shared = shared_inputs(cfg, b, t, segment_ids, positions, activation_sharding, platform, return_kv)
  x = params["embed_tokens"]["embedding"].astype(dt)[tokens_bt]
  graphdef = block_graphdef(cfg)
  scale, dropout, layer_rngs = _lora_settings(cfg, lora_cfg, dropout_rng)
  layer_adapters = adapters["layers"] if adapters is not None else None

  def body(x_btd, layer):
    p, ad, rng = layer
    if activation_sharding is not None:
      x_btd = jax.lax.with_sharding_constraint(x_btd, activation_sharding)
    block = nnx.merge(graphdef, p)
    return block(cfg, x_btd, shared, ad, (scale, dropout, rng))

  if cfg.remat != "none":
    body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
  x, kv = jax.lax.scan(body, x, (params["layers"], layer_adapters, layer_rngs),
                       unroll=cpu_tuning.unroll_layers(cfg.layer_loop, shared.platform, prefill=return_kv))
  x = final_norm(cfg, params, x)
  return (x, kv) if return_kv else x


def final_norm(cfg: ModelConfig, params: Params, x_btd):
  """The last RMSNorm, before the head."""
  return nnx.merge(nnx.graphdef(RMSNorm(1, cfg.rms_eps, jnp.float32)), params["norm"])(x_btd)


def head_kernel(cfg: ModelConfig, params: Params, dtype) -> jax.Array:
  """The output head [D,V] in `dtype`: tied to the embedding or a separate `lm_head`."""
  if cfg.tie_embeddings:
    return params["embed_tokens"]["embedding"].astype(dtype).T
  return params["lm_head"]["kernel"].astype(dtype)


def logits_from_hidden(cfg: ModelConfig, params: Params, x_btd):
  """Logits [B,T,V] in float32 from final-norm hidden states (loss.py runs the same head by chunks)."""
  return jnp.einsum("btd,dv->btv", x_btd, head_kernel(cfg, params, x_btd.dtype), preferred_element_type=jnp.float32)


def forward(cfg: ModelConfig, params: Params, tokens, *, segment_ids=None, positions=None,
            adapters=None, lora_cfg=None, dropout_rng=None, activation_sharding=None):
  """Logits float32 [B,T,V] for int32 tokens [B,T].

  segment_ids [B,T]: tokens attend only within their own segment (packed rows); 0 marks padding,
    which attends and is attended by nothing. Default: one segment per row.
  positions [B,T]: RoPE positions (restart per packed segment). Default: 0..T-1.
  adapters, lora_cfg: a LoRA tree from `lora.init` and its LoraConfig; applied on the fly.
  """
  x = forward_hidden(cfg, params, tokens, segment_ids=segment_ids, positions=positions, adapters=adapters,
                     lora_cfg=lora_cfg, dropout_rng=dropout_rng, activation_sharding=activation_sharding)
  return logits_from_hidden(cfg, params, x)
