"""Every bench in one process run, results to bench/RESULTS.md: `make bench` (or .venv/bin/python bench/run_all.py).

Each bench prints its own summary and JSON line; this collects them into one table with the machine line.
Timings on a shared CPU are noisy: run it twice and keep the better file when it matters.
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import decode, train  # noqa: E402
from bench.common import machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "RESULTS.md"


def rows(decode_result: dict, train_result: dict) -> list[tuple[str, ...]]:
  """(bench, ours, peer, ratio, MFU) rows of the table."""
  d, t = decode_result, train_result
  return [
      (f"decode: batch {d['batch']}, {d['prompt_len']}-token prompts, {d['new_tokens']} new tokens, greedy",
       f"{d['ours_tok_s']:.0f} tok/s", f"transformers `generate`: {d['transformers_tok_s']:.0f} tok/s",
       f"{d['speedup']:.2f}x", "not computed"),
      (f"LoRA train step: r={t['rank']} on 7 projections, batch {t['batch']} x {t['seq_len']}, AdamW",
       f"{t['ours_tok_s']:.0f} tok/s", f"transformers + PEFT: {t['peft_tok_s']:.0f} tok/s",
       f"{t['speedup']:.2f}x", f"{100 * t['ours_mfu']:.1f}% (PEFT {100 * t['peft_mfu']:.1f}%)"),
  ]


def write(decode_result: dict, train_result: dict, path: Path = OUT) -> str:
  t = train_result
  lines = [
      "# Benchmarks",
      "",
      f"Written by `make bench` (bench/run_all.py) on {datetime.date.today().isoformat()}.",
      f"Machine: {machine()}.",
      f"Model: the ~{t['params'] / 1e6:.0f}M-parameter `bench30m` LLaMA, float32, the same random weights on both"
      " sides (bench/common.py). Times are the best of a few calls after warm-up; ratio = peer time / our time.",
      f"MFU = analytic model FLOPs ({t['model_flops_per_step']:.3e} per train step, see bench/train.py) / step time"
      f" / the float32 matmul peak measured in the same run ({t['peak_flops'] / 1e9:.0f} GFLOP/s).",
      "",
      "| bench | ours | peer | ratio | MFU |",
      "|---|---|---|---|---|",
  ]
  lines += ["| " + " | ".join(r) + " |" for r in rows(decode_result, train_result)]
  lines += ["", f"Decode greedy rows identical to transformers': {decode_result['greedy_rows_identical']}. "
            f"First train loss ours {t['first_loss_ours']:.5f}, PEFT {t['first_loss_peft']:.5f} (same base model, B = 0).",
            ""]
  text = "\n".join(lines)
  path.write_text(text)
  return text


def main() -> None:
  d = decode.main([])
  t = train.main([])
  print(write(d, t))


if __name__ == "__main__":
  main()
