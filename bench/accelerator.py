"""One-GPU check of the 8B path: a 2-layer slice of Llama-3.1-8B at true width, bf16, 2048-token rows.

    make bench-accel                          # python3 bench/accelerator.py: one H100/H200, < 8 minutes
    python3 bench/accelerator.py --smoke      # tiny shapes, any machine (CPU): the script runs end to end

Needs jax with CUDA, flax, optax, orbax-checkpoint, ml-collections and safetensors (no torch, transformers
or peft: importing it loads only these and their own dependencies). Its `--smoke` mode and
the attention, loss, train and plan tests also pass under jax 0.11.2 and flax 0.12.12 (CPU, Python 3.12).
It measures, in one process:
- the device's bf16 matmul peak (8192^3 matmuls), the MFU denominator;
- the LoRA train step (r=16 on all 7 projections, AdamW, the step `train` runs) in tokens/s and MFU
  (plan.analytic_flops / step time / that peak), and its compiled memory total beside the measured peak;
- attention: the backend's kernel (Pallas Triton flash attention on GPU) against the blocked XLA path on
  packed, padded rows: max |difference| of outputs and of gradients;
- decode: tokens/s of decode.generate for a batch of 32 prompts (greedy, 64-token prompts, 128 new).
Prints one JSON line (and writes it to --out when given).
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

from hinqa_jax import attention, decode, lora, model, plan, sharding, train  # noqa: E402
from hinqa_jax.config import default_config  # noqa: E402


def _timed(fn, reps: int) -> float:
  """Best wall time of reps calls after one warm-up (compilation) call; fn blocks until done."""
  fn()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def matmul_peak(n: int, dtype, reps: int = 10) -> float:
  """FLOP/s of n x n matmuls in dtype on the default device, 8 chained per call."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)

  @jax.jit
  def chain(x):
    for _ in range(8):
      x = (x @ a) * jnp.asarray(1.0 / np.sqrt(n), dtype)
    return x

  return 8 * 2 * n**3 / _timed(lambda: chain(a).block_until_ready(), reps)


def model_config(smoke: bool, layers: int) -> model.ModelConfig:
  if smoke:
    return model.ModelConfig.preset("tiny", vocab_size=512, n_layers=layers, dtype="float32", param_dtype="float32")
  return model.ModelConfig.preset("llama3_8b", n_layers=layers, dtype="bfloat16", param_dtype="bfloat16")


def train_bench(cfg, batch: int, seq: int, rank: int, reps: int) -> dict:
  c = default_config()
  c.lora.rank, c.lora.alpha, c.train.warmup_steps = rank, 2.0 * rank, 0
  lcfg = train.lora_config(c)
  optimizer, schedule = train.make_optimizer(c.train)
  params = jax.jit(model.init, static_argnums=0)(cfg, jax.random.key(0))
  adapters = lora.init(cfg, lcfg, jax.random.key(1))
  rs = np.random.RandomState(0)
  # Packed rows as training sees them: segments of 300-700 tokens, answer tokens a third of each.
  seg, pos = np.zeros((batch, seq), np.int32), np.zeros((batch, seq), np.int32)
  for r in range(batch):
    at, s = 0, 1
    while at < seq - 16:
      n = min(int(rs.randint(300, 700)), seq - at)
      seg[r, at:at + n], pos[r, at:at + n] = s, np.arange(n)
      at, s = at + n, s + 1
  batch_arrays = {"tokens": jnp.asarray(rs.randint(0, cfg.vocab_size, (batch, seq)), jnp.int32),
                  "segment_ids": jnp.asarray(seg), "positions": jnp.asarray(pos),
                  "loss_mask": jnp.asarray((pos % 3 == 0) & (seg > 0), jnp.int32)}
  step = jax.jit(train.make_step(cfg, lcfg, "lora", optimizer, schedule, 1, 0), donate_argnums=(0,))
  box = {"state": {"step": jnp.int32(0), "trainable": adapters, "opt_state": optimizer.init(adapters)}}

  def run():
    box["state"], m = step(box["state"], params, batch_arrays)
    return m["loss"].block_until_ready()

  t = _timed(run, reps)
  flops = plan.analytic_flops(cfg, lcfg, "lora", batch, seq)
  # The compiler's figure (what `plan --target` reports) beside what the device measured for the same step.
  mem = step.lower(box["state"], params, batch_arrays).compile().memory_analysis()
  compiled = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
  stats = jax.devices()[0].memory_stats() or {}
  return {"batch": batch, "seq_len": seq, "step_s": t, "tok_s": batch * seq / t, "model_flops": flops["model"],
          "loss": float(run()), "compiled_total_bytes": int(compiled),
          "measured_peak_bytes": stats.get("peak_bytes_in_use"), "device_bytes_limit": stats.get("bytes_limit")}


def attention_check(cfg, batch: int, seq: int) -> dict:
  """The backend's attention kernel against the blocked XLA path, values and gradients. On CPU the GPU
  kernel (Pallas Triton) runs in Pallas interpret mode instead."""
  impl = attention.default_impl(sharding.platform())
  interpret = impl == "xla"
  impl = "triton" if interpret else impl
  dt = jnp.dtype(cfg.dtype)
  ks = jax.random.split(jax.random.key(2), 4)
  q = jax.random.normal(ks[0], (batch, seq, cfg.n_heads, cfg.head_dim), dt)
  k = jax.random.normal(ks[1], (batch, seq, cfg.n_kv_heads, cfg.head_dim), dt)
  v = jax.random.normal(ks[2], (batch, seq, cfg.n_kv_heads, cfg.head_dim), dt)
  seg = np.ones((batch, seq), np.int32)
  seg[:, seq // 3:] = 2
  seg[:, seq - seq // 8:] = 0  # padding at the end of every row
  seg = jnp.asarray(seg)
  real = (seg > 0)[:, :, None, None]
  r = jax.random.normal(ks[3], q.shape, jnp.float32) * real

  def loss(impl_, q_, k_, v_):
    return jnp.sum(attention.causal_attention(q_, k_, v_, seg, impl=impl_, interpret=interpret and impl_ != "xla")
                   .astype(jnp.float32) * r)

  outs, grads = {}, {}
  for name in {impl, "xla"}:
    outs[name] = jax.jit(lambda a, b, c, n=name: attention.causal_attention(
        a, b, c, seg, impl=n, interpret=interpret and n != "xla"))(q, k, v)
    grads[name] = jax.jit(jax.grad(lambda a, b, c, n=name: loss(n, a, b, c), argnums=(0, 1, 2)))(q, k, v)
  diff = float(jnp.max(jnp.abs(jnp.where(real, outs[impl].astype(jnp.float32) - outs["xla"].astype(jnp.float32), 0))))
  gdiff = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
              for a, b in zip(grads[impl], grads["xla"]))
  return {"impl": impl, "max_abs_diff": diff, "grad_max_abs_diff": gdiff,
          "out_max_abs": float(jnp.max(jnp.abs(outs["xla"].astype(jnp.float32))))}


def decode_bench(cfg, batch: int, prompt_len: int, new: int, reps: int) -> dict:
  params = jax.jit(model.init, static_argnums=0)(cfg, jax.random.key(0))
  prompts = np.random.RandomState(1).randint(0, cfg.vocab_size, (batch, prompt_len)).tolist()
  t = _timed(lambda: decode.generate(cfg, params, prompts, new, eos_ids=[]), reps)
  return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new, "s": t, "tok_s": batch * new / t}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--smoke", action="store_true", help="tiny shapes: check the script end to end on any machine")
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--batch", type=int, default=4, help="train rows per step")
  ap.add_argument("--seq_len", type=int, default=2048)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--decode_batch", type=int, default=32)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default="", help="also write the JSON here")
  args = ap.parse_args(argv)
  if args.smoke:
    args.batch, args.seq_len, args.decode_batch, args.reps = 2, 256, 4, 1
  tick = time.perf_counter()
  cfg = model_config(args.smoke, args.layers)
  dev = jax.devices()[0]
  peak = matmul_peak(512 if args.smoke else 8192, jnp.dtype(cfg.dtype), reps=2 if args.smoke else 10)
  tr = train_bench(cfg, args.batch, args.seq_len, args.rank, args.reps)
  att = attention_check(cfg, args.batch, args.seq_len)
  dec = decode_bench(cfg, args.decode_batch, 64 if not args.smoke else 16, 128 if not args.smoke else 8, args.reps)
  facts = {k: getattr(dev, k) for k in ("device_kind", "core_count", "compute_capability") if hasattr(dev, k)}
  result = {"bench": "accelerator", "device": getattr(dev, "device_kind", dev.platform), "platform": dev.platform,
            "device_facts": facts,  # to hold against hinqa_jax/gpu_targets/*.txtpb
            "jax": jax.__version__, "smoke": args.smoke, "model": {"layers": cfg.n_layers, "dim": cfg.dim,
            "vocab": cfg.vocab_size, "dtype": cfg.dtype}, "peak_flops": peak, "train": tr,
            "train_mfu": tr["model_flops"] / tr["step_s"] / peak, "attention": att, "decode": dec,
            "wall_s": time.perf_counter() - tick}
  print(f"{result['device']}: train {tr['tok_s']:.0f} tok/s, MFU {100 * result['train_mfu']:.1f}% of a measured "
        f"{peak / 1e12:.3g} TFLOP/s {cfg.dtype} peak; attention {att['impl']} vs xla max |diff| "
        f"{att['max_abs_diff']:.2e} (grads {att['grad_max_abs_diff']:.2e}); decode batch {dec['batch']}: "
        f"{dec['tok_s']:.0f} tok/s; {result['wall_s']:.0f} s in all")
  line = json.dumps(result)
  print(line)
  if args.out:
    Path(args.out).write_text(line + "\n")
  return result


if __name__ == "__main__":
  main()
