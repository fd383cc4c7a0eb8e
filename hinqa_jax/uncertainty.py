"""Results a reviewer can trust: experiments trained once per seed (experiments.fan_out), every score with its
95% CI, and the experiments compared pairwise (delta, paired-bootstrap CI, approximate-randomization p,
Holm-corrected).

Seeds are pooled, never averaged away: a system's predictions of every seed are scored together; the
bootstrap draws test examples with all their seeds (so the interval covers test-set sampling, with the
seeds' spread inside each example), and the randomization swaps A and B within each (seed, example) pair.
"""
from __future__ import annotations

import os

import numpy as np

from hinqa_jax import significance

CI_METRICS = ("bleu1", "bleu2", "bleu4", "chrf_pp", "rougeL", "qa_f1", "exact_match")
COMPARE_METRICS = ("bleu2", "chrf_pp", "rougeL", "qa_f1", "exact_match")
ALPHA = 0.05  # family-wise error rate of each split's comparisons (Holm)


def comparison_pairs(experiments: list[str]) -> list[tuple[str, str]]:
  """(A, B) pairs compared as B - A: M2 and M3 vs M1, M3 vs M2, and every other run (per-teacher, ratio) vs M1."""
  pairs = [(a, b) for a, b in (("m1", "m2"), ("m1", "m3"), ("m2", "m3")) if a in experiments and b in experiments]
  return pairs + [("m1", e) for e in experiments if e not in ("m1", "m2", "m3") and "m1" in experiments]


def summarize(runs: dict[str, dict], run_results: dict[str, dict],
              predictions: dict[str, dict[str, tuple[list[str], list[str]] | None]], eval_cfg,
              splits: tuple[str, ...]) -> dict:
  """{"results": experiment -> split -> scores (mean over seeds) with "ci" (and "std", "seeds"),
  "comparisons": split -> list of {"a", "b", "metrics": name -> delta, ci, p, p_holm, significant}}.

  run_results: run -> split -> scores; predictions: run -> split -> (predictions, references) or None (as
  evaluate.read_predictions gives them). CIs and comparisons need every seed's predictions of the split."""
  bert = eval_cfg.bertscore_model if eval_cfg.bertscore_model and os.path.isfile(
      os.path.join(eval_cfg.bertscore_model, "config.json")) else None
  kw = {"n_bootstrap": eval_cfg.n_bootstrap, "seed": eval_cfg.significance_seed, "bertscore_model": bert,
        "bertscore_layer": eval_cfg.bertscore_layer}
  extra = ("bertscore_f1",) if bert else ()
  by_exp: dict[str, list[str]] = {}
  for name, run in runs.items():
    by_exp.setdefault(run["experiment"], []).append(name)
  results, preds = {}, {}
  for exp, names in by_exp.items():
    results[exp] = {}
    for split in splits:
      per_seed = [run_results[n][split] for n in names]
      cell = dict(per_seed[0])
      scored = [k for k, v in cell.items() if isinstance(v, float) and all(isinstance(s.get(k), float) for s in per_seed)]
      if len(names) > 1:
        cell.update({k: float(np.mean([s[k] for s in per_seed])) for k in scored})
        cell["std"] = {k: float(np.std([s[k] for s in per_seed], ddof=1)) for k in scored}
        cell["seeds"] = [runs[n]["seed"] for n in names]
      got = [predictions.get(n, {}).get(split) for n in names]
      if all(g is not None and g[0] for g in got):
        preds[exp, split] = ([g[0] for g in got], got[0][1])
        cis = significance.confidence_intervals(preds[exp, split][0], got[0][1], metrics=CI_METRICS + extra, **kw)
        cell["ci"] = {k: v["ci"] for k, v in cis.items()}
      results[exp][split] = cell
  comparisons = {}
  for split in splits:
    rows = []
    for a, b in comparison_pairs(list(by_exp)):
      if (a, split) in preds and (b, split) in preds:
        diff = significance.compare(preds[a, split][0], preds[b, split][0], preds[a, split][1],
                               metrics=COMPARE_METRICS + extra, n_trials=eval_cfg.n_trials, **kw)
        rows.append({"a": a, "b": b, "metrics": {
            k: {key: v[key] for key in ("delta", "ci", "p")} for k, v in diff.items()}})
    tests = [m for row in rows for m in row["metrics"].values()]
    for m, p_holm in zip(tests, significance.holm([m["p"] for m in tests])):
      m["p_holm"], m["significant"] = p_holm, p_holm <= ALPHA
    comparisons[split] = rows
  return {"results": results, "comparisons": comparisons}
