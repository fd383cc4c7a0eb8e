"""The README's "Plan before you rent" table: a config's train step and eval generate compiled for each
target by its real compiler (hinqa_jax.plan), and the largest batch that fits each target.

    .venv-aot/bin/python bench/plan_table.py --config=configs/vatika_llama3_8b_m2.py \\
        --targets=v5e-8,v5p-8,v6e-8,h100x8,h100x1 --out=bench/plan_table.json

The mesh is fsdp over all of a target's devices (data=1, tensor=1). Largest batch: two compiles give
the per-row slope of the compiled total; the predicted largest multiple of the device count is then
compiled, and stepped down until it fits (every reported figure is from a compile, none from the line).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hinqa_jax import plan, targets  # noqa: E402
from hinqa_jax.config import load, with_overrides  # noqa: E402
from hinqa_jax.files import write_atomic  # noqa: E402


def largest_batch(config, target: targets.Target, first: dict) -> dict:
  """The largest train.batch_size (a multiple of the device count) whose compile fits, by bisection
  between a fitting and a failing batch; where two compiled totals are known, the next probe is where
  their line crosses the device's memory (usually right, so few compiles)."""
  n = target.devices
  tried = {first["batch_size"]: first}

  def probe(batch: int) -> dict:
    if batch not in tried:
      tried[batch] = plan.plan(with_overrides(config, **{"train.batch_size": batch}), target, evaluation=False)
    return tried[batch]

  fits = lambda b: bool(probe(b)["fit"]["fits"])  # noqa: E731
  lo, hi = (first["batch_size"], None) if first["fit"]["fits"] else (0, first["batch_size"])
  while hi is None:  # double until one fails
    hi = lo * 2 if not fits(lo * 2) else None
    lo = lo if hi else lo * 2
  while hi - lo > n:
    known = [(b, p["per_device"]["total"]) for b, p in tried.items() if p["per_device"]["total"] is not None]
    mid = (lo + hi) // 2 // n * n
    if len(known) >= 2:
      (b1, t1), (b2, t2) = sorted(known)[-2:]
      if b2 != b1 and t2 > t1:
        guess = int(b1 + (target.memory - t1) * (b2 - b1) / (t2 - t1)) // n * n
        mid = guess if lo < guess < hi else mid
    mid = max(mid, lo + n)
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  best = tried.get(lo)
  return {"batch": lo, "total": best["per_device"]["total"] if best else None, "compiles": len(tried)}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", required=True)
  ap.add_argument("--targets", required=True, help="comma-separated target names (hinqa_jax/targets.py)")
  ap.add_argument("--set", action="append", default=[], help="config override key=json_value (repeatable)")
  ap.add_argument("--out", help="write every plan and the table as JSON here")
  ap.add_argument("--no_search", action="store_true", help="skip the largest-batch search (TPU compiles of 8B take minutes)")
  args = ap.parse_args()
  config = load(args.config, **{k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)})
  config.model.hf_path = ""  # shapes only: the preset
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
  rows, plans = [], {}
  for name in args.targets.split(","):
    target = targets.get(name)
    c = with_overrides(config, **{"train.batch_size": max(target.devices,
                                                          config.train.batch_size // target.devices * target.devices)})
    p = plan.plan(c, target, evaluation=False)
    p["eval"] = [plan.plan_eval(c, target)]  # on all the target's devices (the 1-device plan: `plan`)
    best = largest_batch(c, target, p) if not args.no_search else {"batch": None, "total": None, "compiles": 0}
    ev = p["eval"][-1]
    est = p["estimate"] or {"step_s": float("nan"), "tokens_per_s": float("nan")}
    row = {"target": name, "device": p["target"]["device_kind"], "devices": target.devices,
           "batch": c.train.batch_size, "train_total": p["per_device"]["total"], "fits": p["fit"]["fits"],
           "compile_s": p["compile_s"], "attention": p["attention_kernel"], "largest_batch": best["batch"],
           "eval_rows": ev["rows"], "eval_total": ev["per_device"]["total"], "eval_fits": ev["fit"]["fits"],
           "step_s_estimate": est["step_s"], "tokens_per_s_estimate": est["tokens_per_s"]}
    rows.append(row)
    plans[name] = {"plan": p, "largest_batch": best}
    print(json.dumps(row), flush=True)
  gb = lambda x: "n/a" if x is None else f"{x / 1e9:.2f}"  # noqa: E731
  print(f"\n| target | devices | train batch x {config.data.seq_len}: GB/device | fits | largest batch | eval GB/device | fits |"
        " attention kernel | compile s | roofline step (est.) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['target']} | {r['devices']} x {r['device']} | {r['batch']}: {gb(r['train_total'])} |"
          f" {'yes' if r['fits'] else 'NO'} | {r['largest_batch']} | {gb(r['eval_total'])} |"
          f" {'yes' if r['eval_fits'] else 'NO'} | {r['attention'].split(': ', 1)[-1]} | {r['compile_s']:.0f} |"
          f" {1e3 * r['step_s_estimate']:.0f} ms |")
  if args.out:
    write_atomic(args.out, json.dumps({"rows": rows, "plans": plans}, indent=2, default=str))


if __name__ == "__main__":
  main()
