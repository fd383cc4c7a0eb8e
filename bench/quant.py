"""LoRA train step over a quantized frozen base (int8, NF4) against the same step over a float32 and a bf16
base, same model and rows, one process; and transformers + PEFT over bitsandbytes' NF4 base against PEFT
over the float32 base (bitsandbytes' CPU backend, its training path: dequantize, then matmul).

    .venv/bin/python bench/quant.py                    # layer34m, batch 4 x 512, LoRA r=16 on all 7 projections

Compute is float32 on every side (XLA:CPU and torch CPU train in float32; a bf16 base is bf16 storage).
The NF4 sides start from the same quantized weights (ours is bnb's bit for bit, tests/test_quant.py), so
their step-0 losses must agree within 1e-4: the fairness check. Timing: warm-up, then rounds, best of each.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hinqa_jax import cpu_tuning  # noqa: E402

cpu_tuning.keep_freed_memory()

import jax  # noqa: E402
import torch  # noqa: E402

from bench.common import MODELS, best_time, bench_models, machine  # noqa: E402
from bench.train import _ours, _rows, peft_step  # noqa: E402
from hinqa_jax import hf  # noqa: E402


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq_len", type=int, default=512)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--model", choices=sorted(MODELS), default="layer34m")
  args = ap.parse_args(argv)
  lr = 2e-4
  m, cfg, params = bench_models(name=args.model)
  with tempfile.TemporaryDirectory() as d:
    rows, _ = _rows("all", cfg, args.batch, args.seq_len, d)
    m.save_pretrained(d)
    bases = {"float32": (cfg, params), "bf16": hf.load_hf(d, param_dtype="bfloat16"),
             "int8": hf.load_hf(d, quantize="int8"), "nf4": hf.load_hf(d, quantize="nf4", quantize_block=64)}
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    m4 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, device_map="cpu", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
  steps = {}
  for name, (c, p) in bases.items():
    c = c.replace(dtype="float32")
    steps[f"ours_{name}"] = _ours(c, p, rows, lr, args.rank, None)[0]
  x = torch.tensor(rows["tokens"], dtype=torch.long)
  for name, hf_model in (("float32", m), ("nf4", m4)):
    step, _ = peft_step(hf_model, lr, args.rank)
    steps[f"peft_{name}"] = lambda step=step: step({"input_ids": x, "labels": x})

  first = {k: float(fn()) for k, fn in steps.items()}  # compile / warm up; adapters' B = 0: the base's loss
  if abs(first["ours_nf4"] - first["peft_nf4"]) > 1e-4 or abs(first["ours_float32"] - first["peft_float32"]) > 1e-4:
    raise SystemExit(f"step-0 losses differ: {first}")
  best = {k: float("inf") for k in steps}
  for _ in range(args.reps):
    for k, fn in steps.items():
      best[k] = min(best[k], best_time(fn, 1))
  tokens = args.batch * args.seq_len
  base_bytes = {k: sum(x.nbytes for x in jax.tree.leaves(p["layers"])) for k, (_, p) in bases.items()}
  result = {"bench": "train_lora_quantized", "model": args.model, "batch": args.batch, "seq_len": args.seq_len,
            "rank": args.rank, "tok_s": {k: tokens / t for k, t in best.items()}, "first_loss": first,
            "layer_bytes": base_bytes, "machine": machine()}
  tok = result["tok_s"]
  print(f"LoRA step over a quantized base ({args.model}, {args.batch} x {args.seq_len}, r={args.rank}), tok/s: ours "
        + ", ".join(f"{k} {tok['ours_' + k]:.0f}" for k in bases)
        + f"; transformers+PEFT float32 {tok['peft_float32']:.0f}, PEFT+bitsandbytes NF4 {tok['peft_nf4']:.0f}")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
