"""LoRA adapters as a pytree of their own, beside (never inside) the frozen base parameters.

Adapter tree: {"layers": {"self_attn": {"q_proj": {"a": [L,D_in,R], "b": [L,R,D_out]}, ...}, "mlp": {...}}}.
A is random, B is zero, so the model is unchanged at init; the update is scale * x @ A @ B with
scale = alpha / rank (PEFT's convention) or alpha / sqrt(rank) (rsLoRA).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hinqa_jax.model import ModelConfig, Params

TARGET_GROUPS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
ALL_TARGETS = tuple(TARGET_GROUPS)


@functools.partial(jax.tree_util.register_static)
@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 16
  alpha: float = 32.0
  targets: tuple[str, ...] = ALL_TARGETS
  dropout: float = 0.0
  rslora: bool = False

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    unknown = [t for t in self.targets if t not in TARGET_GROUPS]
    if unknown:
      raise ValueError(f"unknown LoRA targets {unknown}; known: {list(ALL_TARGETS)}")
    if not self.targets:
      raise ValueError("LoRA needs at least one target projection")
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

  @property
  def scale(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def proj_shape(cfg: ModelConfig, target: str) -> tuple[int, int]:
  """(d_in, d_out) of a target projection."""
  q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  return {"q_proj": (cfg.dim, q), "k_proj": (cfg.dim, kv), "v_proj": (cfg.dim, kv), "o_proj": (q, cfg.dim),
          "gate_proj": (cfg.dim, cfg.ffn_dim), "up_proj": (cfg.dim, cfg.ffn_dim),
          "down_proj": (cfg.ffn_dim, cfg.dim)}[target]


def init(cfg: ModelConfig, lcfg: LoraConfig, key: jax.Array, dtype=jnp.float32) -> Params:
  """Adapters with A ~ kaiming-uniform (as PEFT's default) and B = 0, stacked over layers."""
  tree: dict = {}
  for target, k in zip(lcfg.targets, jax.random.split(key, len(lcfg.targets))):
    d_in, d_out = proj_shape(cfg, target)
    bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform(a=sqrt(5)) on a [R, d_in] matrix: U(-1/sqrt(d_in), ..)
    a = jax.random.uniform(k, (cfg.n_layers, d_in, lcfg.rank), dtype, -bound, bound)
    b = jnp.zeros((cfg.n_layers, lcfg.rank, d_out), dtype)
    tree.setdefault(TARGET_GROUPS[target], {})[target] = {"a": a, "b": b}
  return {"layers": tree}


def merged_kernel(w_io, a_ir, b_ro, lcfg: LoraConfig) -> np.ndarray:
  """One layer's [D_in, D_out] kernel with its update folded in, W + scale * A @ B, in float32 on the host.

  On the host on purpose: a float32 matmul on TPU runs in bfloat16 passes by default, which would
  change the update the model was scored with. The caller casts the sum to the export dtype."""
  a, b = np.asarray(a_ir, np.float32), np.asarray(b_ro, np.float32)
  return np.asarray(w_io, np.float32) + np.float32(lcfg.scale) * (a @ b)


def count(adapters: Params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(adapters))
