"""Shared bench set-up: random LLaMAs of 37.2M (bench30m) and 33.6M (layer34m) parameters built in transformers and loaded into ours, the machine, a matmul peak."""
from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hinqa_jax import hf, model

BENCH_PRESET = "bench30m"
# The layer-dominated bench model (33.6M): d512, 8 layers, 8 heads / 4 KV heads, vocab 8192; the head is
# an eighth of the weights, so decode and train time go to the decoder layers, not the output head.
LAYER34M = model.ModelConfig.preset("bench30m", vocab_size=8192, dim=512, n_layers=8, n_heads=8, n_kv_heads=4,
                                    ffn_dim=1536, head_dim=64)
MODELS = {"bench30m": model.ModelConfig.preset(BENCH_PRESET), "layer34m": LAYER34M}


def bench_models(seed: int = 0, name: str = BENCH_PRESET):
  """(torch model float32, our cfg, our params): the same random weights on both sides."""
  c = MODELS[name]
  hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim,
                       num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                       head_dim=c.head_dim, max_position_embeddings=c.max_seq_len, rms_norm_eps=c.rms_eps,
                       rope_parameters={"rope_type": "llama3", "rope_theta": c.rope_theta, "factor": c.rope_factor,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": c.rope_original_max_pos},
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  torch.manual_seed(seed)
  m = LlamaForCausalLM(hf_cfg).float().eval()
  with tempfile.TemporaryDirectory() as d:
    m.save_pretrained(d)
    cfg, params = hf.load_hf(d)
  return m, cfg, params


def cpu_model() -> str:
  """`lscpu`'s model name (the CPU a figure came from), else the platform's."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine() -> str:
  return (f"{cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads)")


def matmul_peak_flops(n: int = 2048, reps: int = 10) -> float:
  """float32 matmul FLOP/s of this machine in JAX, measured now (the MFU denominator)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t)


def best_time(fn, reps: int) -> float:
  """Best wall time of `reps` calls (after the caller has warmed up)."""
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best
