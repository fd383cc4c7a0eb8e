"""Uncertainty of the metrics: bootstrap confidence intervals (`confidence_intervals`), paired
significance tests of two systems (`compare`) and Holm's correction over a family of tests (`holm`).

Corpus metrics (BLEU-n, chrF++) pool n-gram counts over the corpus, so they are resampled through
sacrebleu's sufficient statistics, with sacrebleu's own draws and interval rule; the others are means of
per-example scores, resampled with scipy.stats. Both are 0-100, as in metrics.py.
"""
from __future__ import annotations

import unicodedata
from typing import Sequence

import numpy as np
import sacrebleu
import scipy.stats

from hinqa_jax.metrics import (BLEU_ORDERS, bertscore_per_example, bleu_metric, chrf_pp_metric, exact_match, qa_f1,
                               rouge_l_per_example)

# Corpus metrics pool n-gram counts over the corpus, so they are resampled through sacrebleu's sufficient
# statistics; the others are means of per-example scores. Both are 0-100.
CORPUS_METRICS = tuple(f"bleu{k}" for k in BLEU_ORDERS) + ("chrf_pp",)
EXAMPLE_METRICS = ("rougeL", "qa_f1", "exact_match")
DEFAULT_SEED = 12345  # sacrebleu's own default (SACREBLEU_SEED)


def _corpus_metric(name: str) -> sacrebleu.metrics.base.Metric:
  return chrf_pp_metric() if name == "chrf_pp" else bleu_metric(int(name[len("bleu"):]))


def _runs(system: Sequence[str] | Sequence[Sequence[str]], n: int, what: str) -> list[list[str]]:
  """One run's predictions (strings) or one list per training seed, each NFC, each n long."""
  runs = [list(system)] if system and all(isinstance(x, str) for x in system) else [list(r) for r in system]
  for i, run in enumerate(runs):
    if len(run) != n or not all(isinstance(x, str) for x in run):
      raise ValueError(f"{what} run {i}: {len(run)} predictions for {n} references (want a list of {n} "
                       "strings, or one such list per seed)")
  return [[unicodedata.normalize("NFC", p) for p in run] for run in runs]


def _percentile_ci(samples: np.ndarray) -> list[float]:
  """sacrebleu's 95% interval of resampled scores (significance.estimate_ci: the n//40-th from each end)."""
  s = np.sort(samples)
  lo = len(s) // 40
  return [float(s[lo]), float(s[len(s) - lo - 1])]


def _example_scores(name: str, runs: list[list[str]], refs: list[str], bert: dict) -> np.ndarray:
  """[seeds, n] per-example scores (0-100) of one metric."""
  if name == "rougeL":
    f = lambda run: rouge_l_per_example(run, refs)  # noqa: E731
  elif name == "qa_f1":
    f = lambda run: [qa_f1(p, r) for p, r in zip(run, refs)]  # noqa: E731
  elif name == "exact_match":
    f = lambda run: [exact_match(p, r) for p, r in zip(run, refs)]  # noqa: E731
  elif name == "bertscore_f1":
    f = lambda run: bertscore_per_example(run, refs, **bert)["f1"]  # noqa: E731
  else:
    raise ValueError(f"unknown metric {name!r}: one of {CORPUS_METRICS + EXAMPLE_METRICS + ('bertscore_f1',)}")
  return 100.0 * np.array([f(run) for run in runs], np.float64)


def _corpus_stats(metric, runs: list[list[str]], refs: list[str]) -> np.ndarray:
  """[seeds, n, k] integer sufficient statistics of each (seed, example) pair."""
  return np.array([metric._extract_corpus_statistics(run, [refs]) for run in runs], np.int64)


def _corpus_score(metric, stats_nk: np.ndarray) -> float:
  return float(metric._aggregate_and_compute(stats_nk).score)


def _corpus_bootstrap(metric, stats_snk: np.ndarray, idx_bn: np.ndarray) -> np.ndarray:
  """Scores of bootstrap resamples of the examples, every seed's pair of an example drawn together.

  A corpus score pools counts, so drawing example i with all its seeds adds the seed-summed counts of i:
  with one seed this is sacrebleu's own _bootstrap_resample (float32 sums of the drawn rows)."""
  per_example = stats_snk.sum(0).astype(np.float32)
  return np.array([metric._compute_score_from_stats(s.sum(0)).score for s in per_example[idx_bn]])


def _corpus_ar(metric, a_nk: np.ndarray, b_nk: np.ndarray, n_trials: int, seed: int) -> float:
  """Approximate randomization (sacrebleu.significance._paired_ar_test's trials: the same RNG draws, so
  the same swaps), except that a trial as extreme as the observed difference counts (>=, not >).

  sacrebleu counts only trials strictly more extreme, so two identical systems, or two that differ
  on one sentence, get p = 1/(trials+1) (the flaw reported for multeval, jhclark/multeval#3 and #5)."""
  pos_tn = np.random.default_rng(seed).integers(2, size=(n_trials, len(a_nk)), dtype=bool)
  shuf_a, shuf_b = pos_tn @ a_nk + ~pos_tn @ b_nk, ~pos_tn @ a_nk + pos_tn @ b_nk
  score = lambda row: metric._compute_score_from_stats(row).score  # noqa: E731  (Python ints: 2x faster)
  observed = abs(score(a_nk.sum(0).tolist()) - score(b_nk.sum(0).tolist()))
  diffs = np.abs(np.array([score(x) - score(y) for x, y in zip(shuf_a.tolist(), shuf_b.tolist())]))
  return float((np.sum(diffs >= observed - 1e-9 * max(observed, 1.0)) + 1) / (n_trials + 1))


def _example_tests(a_sn: np.ndarray, b_sn: np.ndarray, n_bootstrap: int, n_trials: int, seed: int) -> dict:
  """Delta, paired-bootstrap CI (scipy, percentile) over examples and AR p (scipy permutation_test).

  The bootstrap draws examples (each with all its seeds: the mean over pooled pairs is the mean of the
  examples' seed means); the randomization swaps A and B within each (seed, example) pair."""
  mean_diff = lambda x, y, axis=-1: np.mean(y - x, axis=axis)  # noqa: E731
  ci = scipy.stats.bootstrap((a_sn.mean(0), b_sn.mean(0)), mean_diff, paired=True, vectorized=True,
                             n_resamples=n_bootstrap, method="percentile", rng=np.random.default_rng(seed))
  perm = scipy.stats.permutation_test((a_sn.ravel(), b_sn.ravel()), lambda x, y, axis=-1: np.abs(mean_diff(x, y, axis)),
                                      permutation_type="samples", vectorized=True, n_resamples=n_trials,
                                      alternative="greater", rng=np.random.default_rng(seed))
  lo, hi = ci.confidence_interval
  return {"delta": float(b_sn.mean() - a_sn.mean()), "ci": [float(lo), float(hi)], "p": float(perm.pvalue)}


def _example_ci(x_sn: np.ndarray, n_bootstrap: int, seed: int) -> list[float]:
  if np.all(x_sn == x_sn.flat[0]):  # scipy warns on a constant sample; its interval is the constant
    return [float(x_sn.flat[0])] * 2
  ci = scipy.stats.bootstrap((x_sn.mean(0),), np.mean, vectorized=True, n_resamples=n_bootstrap,
                             method="percentile", rng=np.random.default_rng(seed)).confidence_interval
  return [float(ci.low), float(ci.high)]


def _setup(references, metrics, n_bootstrap, n_trials, seed, bertscore_model, layer, batch_size):
  """Checked arguments: (metric names, NFC references, BERTScore settings, bootstrap indices [B, n])."""
  if not references:
    raise ValueError("no references: nothing to resample")
  if seed is None or int(seed) <= 0:
    # sacrebleu.significance reads seed 0 as 'unseeded' (`self._seed if self._seed else None`).
    raise ValueError(f"seed must be a positive integer (got {seed!r}): results must be reproducible")
  if n_bootstrap < 40 or n_trials < 1:
    raise ValueError(f"n_bootstrap >= 40 and n_trials >= 1 needed (got {n_bootstrap}, {n_trials})")
  names = tuple(metrics) if metrics else CORPUS_METRICS + EXAMPLE_METRICS + (("bertscore_f1",) if bertscore_model else ())
  if "bertscore_f1" in names and not bertscore_model:
    raise ValueError("bertscore_f1 needs bertscore_model (a local BERT directory)")
  refs = [unicodedata.normalize("NFC", r) for r in references]
  bert = {"model_dir": bertscore_model, "layer": layer, "batch_size": batch_size}
  # sacrebleu's draw (significance._bootstrap_resample and _paired_bs_test), shared by every metric.
  idx_bn = np.random.default_rng(seed).choice(len(refs), size=(n_bootstrap, len(refs)), replace=True)
  return names, refs, bert, idx_bn


def confidence_intervals(predictions, references: list[str], *, metrics: Sequence[str] | None = None,
                         n_bootstrap: int = 1000, seed: int = DEFAULT_SEED, bertscore_model: str | None = None,
                         bertscore_layer: int = 9, bertscore_batch_size: int = 16) -> dict[str, dict]:
  """Per metric: {"score": pooled score, "ci": 95% bootstrap interval [lo, hi]} of one system.

  predictions: a list of strings, or one list per training seed (pooled; examples drawn with all seeds).
  Corpus metrics use sacrebleu's resampling and interval rule; the others scipy.stats.bootstrap (percentile)."""
  names, refs, bert, idx_bn = _setup(references, metrics, n_bootstrap, 1, seed, bertscore_model, bertscore_layer,
                                     bertscore_batch_size)
  runs = _runs(predictions, len(refs), "predictions")
  out = {}
  for name in names:
    if name in CORPUS_METRICS:
      metric = _corpus_metric(name)
      stats = _corpus_stats(metric, runs, refs)
      out[name] = {"score": _corpus_score(metric, stats.reshape(-1, stats.shape[-1])),
                   "ci": _percentile_ci(_corpus_bootstrap(metric, stats, idx_bn))}
    else:
      x = _example_scores(name, runs, refs, bert)
      out[name] = {"score": float(x.mean()), "ci": _example_ci(x, n_bootstrap, seed)}
  return out


def compare(system_a, system_b, references: list[str], *, metrics: Sequence[str] | None = None,
            n_bootstrap: int = 1000, n_trials: int = 10000, seed: int = DEFAULT_SEED,
            bertscore_model: str | None = None, bertscore_layer: int = 9,
            bertscore_batch_size: int = 16) -> dict[str, dict]:
  """Paired comparison of two systems on the same references, per metric:
  {"a", "b": pooled scores, "delta": b - a, "ci": 95% paired-bootstrap CI of delta, "p": two-sided
  approximate-randomization p-value, "ci_a", "ci_b": each system's own 95% CI}.

  A system is a list of predictions, or one list per training seed (seed i of A is paired with seed i
  of B). Seeded: the same inputs give the same figures. BLEU-n and chrF++ go through sacrebleu's
  sufficient statistics (its paired bootstrap and randomization trials); ROUGE-L, QA-F1, EM and
  BERTScore F1 through scipy.stats.bootstrap(paired=True) and permutation_test on per-example scores.
  """
  names, refs, bert, idx_bn = _setup(references, metrics, n_bootstrap, n_trials, seed, bertscore_model,
                                     bertscore_layer, bertscore_batch_size)
  runs_a, runs_b = _runs(system_a, len(refs), "system_a"), _runs(system_b, len(refs), "system_b")
  if len(runs_a) != len(runs_b):
    raise ValueError(f"system_a has {len(runs_a)} seed(s), system_b {len(runs_b)}: runs are paired by seed")
  out = {}
  for name in names:
    if name in CORPUS_METRICS:
      metric = _corpus_metric(name)
      sa, sb = _corpus_stats(metric, runs_a, refs), _corpus_stats(metric, runs_b, refs)
      flat_a, flat_b = sa.reshape(-1, sa.shape[-1]), sb.reshape(-1, sb.shape[-1])
      boot_a, boot_b = _corpus_bootstrap(metric, sa, idx_bn), _corpus_bootstrap(metric, sb, idx_bn)
      score_a, score_b = _corpus_score(metric, flat_a), _corpus_score(metric, flat_b)
      res = {"a": score_a, "b": score_b, "delta": score_b - score_a, "ci": _percentile_ci(boot_b - boot_a),
             "p": _corpus_ar(metric, flat_a, flat_b, n_trials, seed),
             "ci_a": _percentile_ci(boot_a), "ci_b": _percentile_ci(boot_b)}
    else:
      xa, xb = _example_scores(name, runs_a, refs, bert), _example_scores(name, runs_b, refs, bert)
      if np.array_equal(xa, xb):  # scipy warns on a constant bootstrap; the exact answer is known
        res = {"delta": 0.0, "ci": [0.0, 0.0], "p": 1.0}
      else:
        res = _example_tests(xa, xb, n_bootstrap, n_trials, seed)
      res = {"a": float(xa.mean()), "b": float(xb.mean()), **res,
             "ci_a": _example_ci(xa, n_bootstrap, seed), "ci_b": _example_ci(xb, n_bootstrap, seed)}
    out[name] = res
  return out


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values (step-down, kept monotone, capped at 1), in the input order.

  Reject hypothesis i at family-wise level alpha iff holm(p)[i] <= alpha."""
  order = np.argsort(np.asarray(p_values, np.float64), kind="stable")
  m, running, adjusted = len(order), 0.0, [0.0] * len(order)
  for rank, i in enumerate(order):
    running = max(running, (m - rank) * float(p_values[i]))
    adjusted[i] = min(1.0, running)
  return adjusted
