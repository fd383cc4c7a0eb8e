"""The XLA:CPU choices of hinqa_jax/cpu_tuning.py measured again: one LoRA train step compiled three ways in
one process, the same weights and rows, timed in interleaved rounds.

    .venv/bin/python bench/cpu_tuning.py                    # layer34m, batch 4 x 512, r=16, every token's loss
    .venv/bin/python bench/cpu_tuning.py --model=bench30m

tuned     as `train` runs on CPU: float32 projections over flattened tokens, layers unrolled
scanned   flattened tokens, the layer loop scanned (model.layer_loop=scan): what unrolling adds
off       HINQA_JAX_CPU_TUNING=off while compiling: [B,T,D] products, scanned layers: what both add
The three first losses must agree within 1e-5 (the choices change no result). The malloc choice is the
process's (kept, as `train` runs); decoding's compiler options are measured by bench/decode.py's process
with HINQA_JAX_CPU_TUNING=off against one without.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hinqa_jax import cpu_tuning  # noqa: E402

cpu_tuning.keep_freed_memory()  # as `python -m hinqa_jax train` does; before jax starts its threads

from bench.common import MODELS, best_time, bench_models, machine  # noqa: E402
from bench.train import _ours, _rows  # noqa: E402

VARIANTS = {"tuned": ("on", "auto"), "scanned": ("on", "scan"), "off": ("off", "scan")}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", choices=sorted(MODELS), default="layer34m")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq_len", type=int, default=512)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--reps", type=int, default=5)
  args = ap.parse_args(argv)
  _, cfg, params = bench_models(name=args.model)
  with tempfile.TemporaryDirectory() as d:
    rows, _ = _rows("all", cfg, args.batch, args.seq_len, d)
  steps, first = {}, {}
  before = os.environ.get("HINQA_JAX_CPU_TUNING")
  for name, (tuning, loop) in VARIANTS.items():
    os.environ["HINQA_JAX_CPU_TUNING"] = tuning  # read when the step is traced, at its first call
    steps[name] = _ours(cfg.replace(layer_loop=loop), params, rows, 2e-4, args.rank, None)[0]
    first[name] = float(steps[name]())
  if before is None:  # the steps are compiled: the rest of the process (make bench's other rows) as it was
    del os.environ["HINQA_JAX_CPU_TUNING"]
  else:
    os.environ["HINQA_JAX_CPU_TUNING"] = before
  if max(first.values()) - min(first.values()) > 1e-5:
    raise SystemExit(f"first losses differ between the variants: {first}")
  best = {name: float("inf") for name in steps}
  for _ in range(args.reps):  # rounds of all three: a burst of load elsewhere hits them alike
    for name, step in steps.items():
      best[name] = min(best[name], best_time(step, 1))
  tokens = args.batch * args.seq_len
  result = {"bench": "cpu_tuning", "model": args.model, "batch": args.batch, "seq_len": args.seq_len,
            "tok_s": {name: tokens / t for name, t in best.items()}, "first_loss": first["tuned"],
            "unrolling_speedup": best["scanned"] / best["tuned"], "flattening_speedup": best["off"] / best["scanned"],
            "both_speedup": best["off"] / best["tuned"], "machine": machine()}
  print(f"LoRA step, {args.model}, {args.batch} x {args.seq_len}: " + ", ".join(
      f"{name} {v:.0f} tok/s" for name, v in result["tok_s"].items()) +
      f"; unrolling {result['unrolling_speedup']:.2f}x, flattening {result['flattening_speedup']:.2f}x, "
      f"both {result['both_speedup']:.2f}x (first loss {first['tuned']:.5f} in all three)")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
