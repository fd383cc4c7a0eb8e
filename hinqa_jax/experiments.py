"""The experiments of `run` as data: which stages each one trains (M1 on the training data; M2 = M1 then the
synthetic data; M3 on both; M2 per teacher and per ratio on subsets of the synthetic data), on which files.

fan_out turns the experiment -> stages plan into one run per seed (run.seeds); pipeline trains and
evaluates the runs, uncertainty pools their seeds.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from hinqa_jax.files import write_atomic

log = logging.getLogger(__name__)


def check_synthetic_files(config) -> None:
  """A synthetic file that does not exist is a path no stage wrote (`gen curate` writes
  <out_dir>/curated/synthetic.jsonl; the 8B configs read it under data.gen_dir): an error before any work
  when an experiment trains on it. An empty one (curation kept nothing) is reported per experiment instead."""
  r = config.run
  needed = bool({"m2", "m3"} & set(r.experiments)) or r.per_teacher or bool(r.ratios)
  missing = [f for f in config.data.synthetic if not Path(f).is_file()]
  if config.synthetic.source == "files" and needed and missing:
    raise FileNotFoundError(f"data.synthetic: no file {', '.join(missing)}: run `python -m gen curate` with its "
                            "out_dir at data.gen_dir (launch/recipe.sh curate) first, or set --config.data.synthetic")


def has_lines(path: str) -> bool:
  """Whether a file exists with a non-blank line: a JSONL file with records to train on."""
  p = Path(path)
  return p.exists() and any(line.strip() for line in p.read_text(encoding="utf-8").splitlines())


def synthetic_subsets(config, workdir: Path, synthetic: list[str]) -> dict[str, list[str]]:
  """Synthetic file sets of the experiments: all, each teacher alone, and each ratio (seeded subsets), the
  subsets written under WORKDIR/synthetic (call it on one process: distributed.main_only)."""
  sets = {"all": synthetic}
  if not (config.run.per_teacher or config.run.ratios):
    return sets
  lines = [line for f in synthetic for line in Path(f).read_text(encoding="utf-8").splitlines() if line.strip()]
  sources = [json.loads(line).get("source", "unknown") for line in lines]
  out = workdir / "synthetic"
  out.mkdir(parents=True, exist_ok=True)

  def write(name: str, lines: list[str]) -> str:
    return str(write_atomic(out / f"{name}.jsonl", "".join(line + "\n" for line in lines)))

  if config.run.per_teacher:
    for teacher in sorted(set(sources)):
      sets[f"teacher_{teacher}"] = [write(f"teacher_{teacher}",
                                          [line for line, src in zip(lines, sources) if src == teacher])]
  shuffled = list(lines)
  random.Random(config.seed).shuffle(shuffled)
  for ratio in config.run.ratios:
    pct = int(round(ratio * 100))
    sets[f"r{pct}"] = [write(f"ratio_{pct}", shuffled[:max(1, int(round(ratio * len(shuffled))))])]
  return sets


def experiment_stages(config, synthetic_sets: dict[str, list[str]]) -> dict[str, list[dict]]:
  """Experiment -> its stages in order; each stage: name, files, init_from (a stage name) and steps."""
  train_files = list(config.data.train)
  steps2 = config.run.stage2_steps or config.train.num_steps
  epochs2 = 0.0 if config.run.stage2_steps else config.train.num_epochs  # stage2_steps wins over epochs
  m1 = {"name": "m1", "files": train_files, "init_from": None, "steps": config.train.num_steps,
        "epochs": config.train.num_epochs}
  plan: dict[str, list[dict]] = {}
  for exp in config.run.experiments:
    if exp == "m1":
      plan["m1"] = [m1]
    elif exp == "m2":
      plan["m2"] = [m1, {"name": "m2", "files": synthetic_sets["all"], "init_from": "m1", "steps": steps2,
                         "epochs": epochs2}]
    elif exp == "m3":
      plan["m3"] = [{"name": "m3", "files": train_files + synthetic_sets["all"], "init_from": None,
                     "steps": config.train.num_steps, "epochs": config.train.num_epochs}]
    else:
      raise ValueError(f"run.experiments: unknown experiment {exp!r} (m1, m2, m3; per-teacher and ratio runs "
                       "come from run.per_teacher and run.ratios)")
  for name, files in synthetic_sets.items():
    if name != "all":
      plan[f"m2_{name}"] = [m1, {"name": f"m2_{name}", "files": files, "init_from": "m1", "steps": steps2,
                                 "epochs": epochs2}]
  return plan


def run_seeds(config) -> tuple[int, ...]:
  """The training seeds of every experiment: run.seeds, or just the config's seed."""
  seeds = tuple(int(s) for s in config.run.seeds) or (int(config.seed),)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"run.seeds has a repeated seed: {seeds}")
  return seeds


def fan_out(plan: dict[str, list[dict]], seeds: tuple[int, ...]) -> dict[str, dict]:
  """Experiment plan -> runs: {run name: {"experiment", "seed", "stages"}}, one run per (experiment, seed).

  With one seed a run is its experiment (stage names unchanged, so single-seed workdirs stay as they
  were); with several, run and stage names get a `_s<seed>` suffix and M2's stage 2 starts from the
  same seed's M1."""
  runs = {}
  for seed in seeds:
    tag = "" if len(seeds) == 1 else f"_s{seed}"
    for exp, stages in plan.items():
      runs[exp + tag] = {"experiment": exp, "seed": seed, "stages": [
          {**st, "name": st["name"] + tag, "init_from": st["init_from"] and st["init_from"] + tag, "seed": seed}
          for st in stages]}
  return runs


def runs_with_data(runs: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
  """(the runs whose every stage has records to train on, experiment -> "not run: ..." for the others): e.g.
  curation rejected every synthetic pair; the results say so, and nothing is trained on air."""
  kept, skipped = {}, {}
  for name, r in runs.items():
    empty = [f for st in r["stages"] for f in st["files"] if not has_lines(f)]
    if empty:
      skipped[r["experiment"]] = f"not run: no records in {', '.join(sorted(set(empty)))}"
      log.warning("%s: %s", name, skipped[r["experiment"]])
    else:
      kept[name] = r
  return kept, skipped
