"""Every CPU bench in one process run, results to bench/RESULTS.md: `make bench` (or .venv/bin/python bench/run_all.py).

Runs decode and the LoRA train step on both bench models (bench30m: the head is a third of the weights;
layer34m: the transformer layers dominate), training with loss on every token and on answer tokens only
(the packed bundled rows, completion-only labels on the peer's side), our prefill at two prompt lengths,
training over an int8 and an NF4 base (bench/quant.py), and training through the real `python -m hinqa_jax
train` command against transformers + PEFT. Each
bench prints its own summary and JSON line; this collects them into one table with the machine line and
the load average before each bench (other jobs on the machine hurt torch more than XLA: read ratios
from a quiet machine only). Took 10.5-12.6 minutes on a 2-core AMD EPYC.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cpu_tuning, quant, train, train_cli  # noqa: E402
from bench.common import machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "RESULTS.md"


def _load() -> str:
  return "%.1f" % os.getloadavg()[0]


def _decode_row(d: dict, load: str) -> tuple[str, ...]:
  return (f"decode: batch {d['batch']}, {d['prompt_len']}-token prompts, {d['new_tokens']} new, greedy", d["model"],
          f"{d['ours_tok_s']:.0f} tok/s (a step {d['step_ms']:.1f} ms; its projections alone {d['projections_ms']:.1f} ms, "
          f"{d['projections_gb_s']:.1f} GB/s of weights)", f"transformers `generate`: {d['transformers_tok_s']:.0f} tok/s",
          f"{d['speedup']:.2f}x (greedy rows identical {d['greedy_rows_identical']})", "", load)


def _train_row(t: dict, load: str) -> tuple[str, ...]:
  labels = "every token" if t["labels"] == "all" else f"answer tokens only ({t['loss_tokens']} of the rows' tokens, cap {t['loss_cap']})"
  return (f"LoRA train step r={t['rank']}, 7 projections, batch {t['batch']} x {t['seq_len']}, AdamW; loss on {labels}",
          t["model"], f"{t['ours_tok_s']:.0f} tok/s", f"transformers + PEFT: {t['peft_tok_s']:.0f} tok/s",
          f"{t['speedup']:.2f}x", f"{100 * t['ours_mfu']:.1f}% (PEFT {100 * t['peft_mfu']:.1f}%)", load)


def _prefill_row(p: dict, load: str) -> tuple[str, ...]:
  ms = p["ms_per_token"]
  short, long_ = min(ms, key=int), max(ms, key=int)
  flops = p["flops_per_token"]
  return (f"prefill, ours: batch {p['batch']} x {short} vs x {long_} tokens", p["model"],
          f"{ms[short]:.3f} vs {ms[long_]:.3f} ms/token", "",
          f"x {long_} is {ms[long_] / ms[short]:.2f}x the time per token (analytic FLOPs per token: "
          f"{flops[long_] / flops[short]:.2f}x, attention's longer context)", "", load)


def _quant_rows(q: dict, load: str) -> list[tuple[str, ...]]:
  """Ours over int8 and NF4 bases against ours over the float32 and bf16 bases; PEFT + bitsandbytes NF4 against PEFT."""
  tok, what = q["tok_s"], f"LoRA train step r={q['rank']}, batch {q['batch']} x {q['seq_len']}, base stored as"
  rows = [(f"{what} {k} (ours vs ours over a float32 base)", q["model"], f"{tok['ours_' + k]:.0f} tok/s",
           f"ours, float32 base: {tok['ours_float32']:.0f} tok/s", f"{tok['ours_' + k] / tok['ours_float32']:.2f}x", "", load)
          for k in ("bf16", "int8", "nf4")]
  rows.append((f"{what} NF4 (ours vs transformers + PEFT + bitsandbytes NF4)", q["model"], f"{tok['ours_nf4']:.0f} tok/s",
               f"PEFT + bitsandbytes NF4: {tok['peft_nf4']:.0f} tok/s (PEFT, float32 base: {tok['peft_float32']:.0f})",
               f"{tok['ours_nf4'] / tok['peft_nf4']:.2f}x", "", load))
  return rows


def _tuning_row(r: dict, load: str) -> tuple[str, ...]:
  tok = r["tok_s"]
  return (f"LoRA step, batch {r['batch']} x {r['seq_len']}: hinqa_jax/cpu_tuning.py's choices on vs off (ours vs ours)",
          r["model"], f"{tok['tuned']:.0f} tok/s", f"off: {tok['off']:.0f} tok/s; layers scanned only: {tok['scanned']:.0f}",
          f"{r['both_speedup']:.2f}x (unrolling {r['unrolling_speedup']:.2f}x, flattening {r['flattening_speedup']:.2f}x)",
          "", load)


def _cli_row(c: dict) -> tuple[str, ...]:
  return (f"`python -m hinqa_jax train` (packed bundled data, input pipeline included), batch {c['batch']} x "
          f"{c['seq_len']}, r={c['rank']}, {c['steps']} steps, median step", c["model"], f"{c['ours_tok_s']:.0f} tok/s",
          f"transformers + PEFT, completion-only labels, same rows: {c['peft_tok_s']:.0f} tok/s",
          f"{c['ours_tok_s'] / c['peft_tok_s']:.2f}x", "", f"{float(c['load_ours']):.1f} / {float(c['load_peft']):.1f}")


KEPT = "## XLA:CPU choices"  # a section of RESULTS.md written by hand, kept when the table is rewritten


def write(rows: list[tuple[str, ...]], path: Path = OUT) -> str:
  lines = [
      "# Benchmarks",
      "",
      f"Written by `make bench` (bench/run_all.py) on {datetime.date.today().isoformat()}.",
      f"Machine: {machine()}.",
      "Models (bench/common.py, float32, the same random weights on both sides): `bench30m` (37M, vocab 32k: the head",
      " is a third of the weights) and `layer34m` (33.6M: d512, 8 layers, 8 heads / 4 KV, vocab 8192: the layers dominate).",
      "Times are the best of a few calls after warm-up, ours and the peer interleaved in one process; ratio = peer time /",
      " our time. MFU = analytic model FLOPs (bench/train.py) / step time / the float32 matmul peak measured in the same run.",
      "load = the 1-minute load average before the bench (2 cores; the benches themselves keep ~2 threads busy, so up to",
      " ~2 is a quiet machine; above it the machine is shared, and torch suffers from sharing more than XLA).",
      "malloc as in the CLI (hinqa_jax/cpu_tuning.py): the train rows keep freed memory for reuse, as `train` and `run` do,",
      " in both sides' shared process; decode and prefill run in their own process with glibc's defaults, as `evaluate` does.",
      "",
      "| bench | model | ours | peer | ratio | MFU | load |",
      "|---|---|---|---|---|---|---|",
  ]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  text = "\n".join(lines) + "\n"
  if path.exists() and KEPT in path.read_text():  # the hand-kept record of the XLA:CPU choices stays
    text += "\n" + path.read_text()[path.read_text().index(KEPT):]
  path.write_text(text)
  return text


def _decode(*args: str) -> dict:
  """bench/decode.py in its own process: glibc's default malloc, as `python -m hinqa_jax evaluate` runs
  (this process has cpu_tuning's malloc setting for the train benches, which slows decoding; cpu_tuning.py)."""
  out = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "decode.py"), *args],
                       capture_output=True, text=True, check=True)
  print(out.stdout, end="")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  rows = []
  for m in ("layer34m", "bench30m"):
    load = _load()
    rows.append(_decode_row(_decode(f"--model={m}"), load))
  load = _load()
  rows.append(_prefill_row(_decode("--model=layer34m", "--prefill"), load))
  for m in ("bench30m", "layer34m"):
    for labels in ("all", "answers"):
      load = _load()
      rows.append(_train_row(train.main([f"--model={m}", f"--labels={labels}"]), load))
  load = _load()
  rows.extend(_quant_rows(quant.main([]), load))
  load = _load()
  rows.append(_tuning_row(cpu_tuning.main([]), load))
  rows.append(_cli_row(train_cli.main([])))
  print(write(rows))


if __name__ == "__main__":
  main()
