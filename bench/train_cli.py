"""Training tokens/s through the real command, against transformers + PEFT on the same packed rows.

    .venv/bin/python bench/train_cli.py     # layer34m as an HF dir, bundled train split, batch 4 x 512, r16, 20 steps

Ours: `python -m hinqa_jax prepare` then `train` (subprocesses, the real CLI: packed bundled data, its own
input pipeline, checkpoints as configured, float32), tokens/s read from the run's metrics.jsonl. Theirs:
transformers + PEFT with completion-only labels on the rows our packer wrote, in our batch order (the same
packed dir, PackedDataset.get_batch per step), its own loop: batch to tensors, forward, backward, clip,
AdamW. tokens/s on both sides counts the non-padding tokens of each step's rows (as metrics.jsonl does);
the figure is the median over steps after the first (ours compiles in its first step).
The two run one after the other (ours is another process), so the load average is printed for each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hinqa_jax import cpu_tuning  # noqa: E402

cpu_tuning.keep_freed_memory()  # as `python -m hinqa_jax train` does; before jax and torch start threads (both sides share it)

import numpy as np  # noqa: E402

from bench.common import bench_models, machine  # noqa: E402
from bench.train import _hf_inputs, peft_step  # noqa: E402
from hinqa_jax import lora, packing  # noqa: E402


def _cli(command: str, workdir: Path, overrides: list[str]) -> None:
  cmd = [sys.executable, "-m", "hinqa_jax", command, "--config=configs/tiny.py", f"--workdir={workdir}", *overrides]
  subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def _peft(m, data: packing.PackedDataset, steps: int, batch: int, seed: int, lr: float, rank: int) -> list[float]:
  """Per-step non-padding tokens/s of transformers + PEFT over the same batches as our run."""
  step_fn = peft_step(m, lr, rank)[0]
  rates = []
  for step in range(steps):
    t = time.perf_counter()
    rows = data.get_batch(step, batch, seed)
    step_fn(_hf_inputs(rows))
    rates.append(float((rows["segment_ids"] > 0).sum()) / (time.perf_counter() - t))
  return rates


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq_len", type=int, default=512)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--lr", type=float, default=2e-4)
  args = ap.parse_args(argv)
  m, cfg, _ = bench_models(name="layer34m")
  with tempfile.TemporaryDirectory() as d:
    hf_dir, workdir = Path(d) / "hf", Path(d) / "run"
    m.save_pretrained(hf_dir)
    overrides = [f"--config.model.hf_path={hf_dir}", f"--config.data.seq_len={args.seq_len}",
                 f"--config.train.batch_size={args.batch}", f"--config.train.num_steps={args.steps}",
                 "--config.train.warmup_steps=0", f"--config.train.learning_rate={args.lr}",
                 f"--config.lora.rank={args.rank}", f"--config.lora.alpha={2.0 * args.rank}",
                 "--config.train.log_every=1", f"--config.checkpoint.every_steps={args.steps}",
                 "--config.model.dtype=float32", "--config.model.param_dtype=float32"]
    _cli("prepare", workdir, overrides)
    load_ours = os.getloadavg()[0]
    _cli("train", workdir, overrides)
    lines = [json.loads(x) for x in (workdir / "train" / "metrics.jsonl").read_text().splitlines()]
    ours = [x["tokens_per_s"] for x in lines if x["step"] > 1]  # step 1 compiles
    data_dir = next((workdir / "data").iterdir())
    data = packing.PackedDataset(data_dir)
    load_peft = os.getloadavg()[0]
    theirs = _peft(m, data, args.steps, args.batch, 0, args.lr, args.rank)[1:]
  result = {"bench": "train_cli", "model": "layer34m", "batch": args.batch, "seq_len": args.seq_len,
            "rank": args.rank, "steps": args.steps, "loss_cap": data.manifest.get("loss_cap"),
            "ours_tok_s": float(np.median(ours)), "peft_tok_s": float(np.median(theirs)),
            "load_ours": load_ours, "load_peft": load_peft, "machine": machine()}
  result["speedup"] = result["ours_tok_s"] / result["peft_tok_s"]
  print(f"train through the real command (layer34m, {args.batch} x {args.seq_len}, r={args.rank}, {args.steps} steps): "
        f"ours {result['ours_tok_s']:.0f} tok/s (load {load_ours:.1f}), transformers+PEFT {result['peft_tok_s']:.0f} "
        f"tok/s (load {load_peft:.1f}), ratio {result['speedup']:.2f}x")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
