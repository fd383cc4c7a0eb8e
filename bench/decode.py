"""Decode throughput: our jitted `decode.generate` against transformers' `generate`, same weights, one run.

    .venv/bin/python bench/decode.py [--model=layer34m]  # batch 8, 64-token prompts, 128 new, float32

Also our time per decode step ((t(n new) - t(1 new)) / (n - 1): the prefill taken out) beside the step's
projections alone: the 7 products per layer and the head on a [batch, D] input with the same weights,
compiled as generate compiles on CPU. Their ratio says how much of a step is anything but those products.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import MODELS, best_time, bench_models, machine  # noqa: E402
from hinqa_jax import cpu_tuning, decode, model  # noqa: E402


def prefill_flops_per_token(cfg, n: int) -> float:
  """Analytic forward FLOPs per prompt token of an n-token causal prefill: 2 per layer weight, plus the
  attention scores and probs @ V over the (n + 1) / 2 keys a token sees on average (the head runs once)."""
  layer_weights = cfg.dim * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim + cfg.n_heads * cfg.head_dim * cfg.dim
  layer_weights += 3 * cfg.dim * cfg.ffn_dim
  attention = 4 * (n + 1) / 2 * cfg.n_heads * cfg.head_dim
  return cfg.n_layers * (2 * layer_weights + attention)


def prefill_seconds(cfg, params, batch: int, lengths=(256, 1024), reps: int = 3) -> dict:
  """Our prefill time (generate with 1 new token) for batch x length prompts, best of reps, per length;
  the lengths take turns in each round, so a burst of load from elsewhere hits them alike."""
  prompts = {n: np.random.RandomState(n).randint(3, cfg.vocab_size, (batch, n)).tolist() for n in lengths}
  run = {n: (lambda p=prompts[n]: decode.generate(cfg, params, p, 1, eos_ids=[])) for n in lengths}
  for n in lengths:
    run[n]()  # compile
  out = {n: float("inf") for n in lengths}
  for _ in range(reps):
    for n in lengths:
      out[n] = min(out[n], best_time(run[n], 1))
  return out


def projections_seconds(cfg, params, batch: int, reps: int = 30) -> tuple[float, int]:
  """(best time, weight bytes read) of one decode step's projections alone: per layer q, k, v, o, gate,
  up, down on [batch, D] (residual adds and SiLU between them, no norms, RoPE or attention), then the head."""
  layers = decode.split_layers(params["layers"])  # outside the jit: no slicing copies inside it
  head = model.head_kernel(cfg, params, jnp.float32)
  names = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
           ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))
  weights = [[layer[g][n]["kernel"] for g, n in names] for layer in layers]

  def step(weights, head, x):
    kv = 0.0
    for wq, wk, wv, wo, wg, wu, wd in weights:
      k, v = x @ wk, x @ wv
      kv = kv + k[:, 0] + v[:, 0]  # keeps k and v alive
      x = x + (x @ wq) @ wo
      x = x + (jax.nn.silu(x @ wg) * (x @ wu)) @ wd
    return x @ head, kv

  f = jax.jit(step, compiler_options=cpu_tuning.decode_compiler_options(jax.default_backend()))
  x = jnp.ones((batch, cfg.dim), jnp.float32)
  jax.block_until_ready(f(weights, head, x))
  best = float("inf")
  for _ in range(3):
    t = time.perf_counter()
    for _ in range(reps):
      out = f(weights, head, x)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - t) / reps)
  return best, sum(a.nbytes for a in jax.tree.leaves((weights, head)))


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt_len", type=int, default=64)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--model", choices=sorted(MODELS), default="bench30m")
  ap.add_argument("--prefill", action="store_true", help="only time our prefill of batch x 256 and x 1024 tokens")
  args = ap.parse_args(argv)
  m, cfg, params = bench_models(name=args.model)
  if args.prefill:
    t = prefill_seconds(cfg, params, args.batch)
    result = {"bench": "prefill", "model": args.model, "batch": args.batch, "seconds": t,
              "ms_per_token": {n: 1e3 * s / (args.batch * n) for n, s in t.items()},
              "flops_per_token": {n: prefill_flops_per_token(cfg, n) for n in t}, "machine": machine()}
    print(f"prefill {args.batch} x 256: {t[256]:.2f} s, {args.batch} x 1024: {t[1024]:.2f} s; per token "
          + ", ".join(f"{n}: {v:.3f} ms" for n, v in result["ms_per_token"].items()))
    print(json.dumps(result))
    return result
  rs = np.random.RandomState(0)
  prompts = rs.randint(3, cfg.vocab_size, (args.batch, args.prompt_len))
  n = args.new_tokens

  def ours(new=n):
    return decode.generate(cfg, params, prompts.tolist(), new, eos_ids=[])

  def theirs():
    with torch.no_grad():
      return m.generate(torch.tensor(prompts), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                        eos_token_id=None, pad_token_id=0)

  ours_out, theirs_out = ours(), theirs()  # warm-up (compilation) and a correctness check
  ours(1)
  same = sum(a == b for a, b in zip(ours_out, theirs_out[:, args.prompt_len:].tolist()))
  # Rounds of (ours, theirs), best of each: a burst of load from elsewhere hits both alike.
  t_ours = t_theirs = t_one = float("inf")
  for _ in range(args.reps):
    t_ours, t_theirs = min(t_ours, best_time(ours, 1)), min(t_theirs, best_time(theirs, 1))
    t_one = min(t_one, best_time(lambda: ours(1), 1))
  step_s = (t_ours - t_one) / max(n - 1, 1)
  proj_s, proj_bytes = projections_seconds(cfg, params, args.batch)
  tokens = args.batch * n
  result = {"bench": "decode", "model": args.model, "params": model.count_params(params), "batch": args.batch,
            "prompt_len": args.prompt_len, "new_tokens": n, "ours_tok_s": tokens / t_ours,
            "transformers_tok_s": tokens / t_theirs, "speedup": t_theirs / t_ours,
            "greedy_rows_identical": f"{same}/{args.batch}", "step_ms": 1e3 * step_s,
            "projections_ms": 1e3 * proj_s, "projections_gb_s": proj_bytes / proj_s / 1e9, "machine": machine()}
  print(f"decode: ours {result['ours_tok_s']:.0f} tok/s, transformers {result['transformers_tok_s']:.0f} tok/s, "
        f"ratio {result['speedup']:.2f}x ({result['params'] / 1e6:.1f}M params, identical greedy rows {same}/{args.batch}); "
        f"our step {result['step_ms']:.1f} ms, its projections alone {result['projections_ms']:.1f} ms "
        f"({result['projections_gb_s']:.1f} GB/s of weights)")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
