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
from hinqa_jax.config import load  # noqa: E402
from hinqa_jax.distributed import write_atomic  # noqa: E402


def _with_batch(config, batch: int):
  c = config.copy_and_resolve_references()
  c.train.batch_size = batch
  return c


def largest_batch(config, target: targets.Target, first: dict) -> dict:
  """The largest train.batch_size (a multiple of the device count) whose compiled total fits."""
  n = target.devices
  b1 = first["batch_size"]
  t1 = first["per_device"]["total"]
  b2 = b1 * 2
  p2 = plan.plan(_with_batch(config, b2), target, evaluation=False)
  slope = max((p2["per_device"]["total"] - t1) / (b2 - b1), 1.0)
  fixed = t1 - slope * b1
  guess = max(n, int((target.memory - fixed) // slope) // n * n)
  tried = {b1: first, b2: p2}
  batch = guess
  while batch >= n:
    p = tried.get(batch) or plan.plan(_with_batch(config, batch), target, evaluation=False)
    tried[batch] = p
    if p["fit"]["fits"]:
      return {"batch": batch, "total": p["per_device"]["total"], "compiles": len(tried)}
    batch -= n
  return {"batch": 0, "total": None, "compiles": len(tried)}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", required=True)
  ap.add_argument("--targets", required=True, help="comma-separated target names (hinqa_jax/targets.py)")
  ap.add_argument("--set", action="append", default=[], help="config override key=json_value (repeatable)")
  ap.add_argument("--out", help="write every plan and the table as JSON here")
  args = ap.parse_args()
  config = load(args.config, {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)})
  config.model.hf_path = ""  # shapes only: the preset
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
  rows, plans = [], {}
  for name in args.targets.split(","):
    target = targets.get(name)
    c = config.copy_and_resolve_references()
    c.train.batch_size = max(target.devices, c.train.batch_size // target.devices * target.devices)
    p = plan.plan(c, target)
    best = largest_batch(c, target, p)
    ev = p["eval"][-1]
    est = p["estimate"]
    row = {"target": name, "device": p["target"]["device_kind"], "devices": target.devices,
           "batch": c.train.batch_size, "train_total": p["per_device"]["total"], "fits": p["fit"]["fits"],
           "compile_s": p["compile_s"], "attention": p["attention_kernel"], "largest_batch": best["batch"],
           "eval_rows": ev["rows"], "eval_total": ev["per_device"]["total"], "eval_fits": ev["fit"]["fits"],
           "step_s_estimate": est["step_s"], "tokens_per_s_estimate": est["tokens_per_s"]}
    rows.append(row)
    plans[name] = {"plan": p, "largest_batch": best}
    print(json.dumps(row), flush=True)
  gb = lambda x: f"{x / 1e9:.2f}"  # noqa: E731
  print("\n| target | devices | train batch x 2048: GB/device | fits | largest batch | eval GB/device | fits |"
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
