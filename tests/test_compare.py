"""significance.compare / confidence_intervals / holm: paired significance against sacrebleu's own tests and scipy."""
import numpy as np
import pytest
import sacrebleu
from sacrebleu.significance import PairedTest

from hinqa_jax import metrics, significance
from hinqa_jax.records import read_records

REFS = [r.answer for r in read_records("data/vatika_mini/test2.json")]
# Two imperfect systems of different quality: A keeps each answer's first half, B drops its last word.
SYS_A = [" ".join(r.split()[:max(1, len(r.split()) // 2)]) for r in REFS]
SYS_B = [" ".join(r.split()[:-1]) if i % 3 else r for i, r in enumerate(REFS)]
FAST = {"n_bootstrap": 200, "n_trials": 500}


def test_identical_systems_differ_by_nothing():
  got = significance.compare(SYS_A, SYS_A, REFS, **FAST)
  assert set(got) == set(significance.CORPUS_METRICS + significance.EXAMPLE_METRICS)
  for name, r in got.items():
    assert r["delta"] == 0.0 and r["ci"][0] <= 0.0 <= r["ci"][1], name
    assert r["p"] == 1.0, name
    assert r["ci_a"] == r["ci_b"] and r["ci_a"][0] <= r["a"] <= r["ci_a"][1], name
  # sacrebleu's own AR counts only trials strictly more extreme than the observed |delta| = 0, so it calls
  # a system significantly different from itself: why compare counts ties (see significance._corpus_ar).
  _, res = PairedTest([("a", SYS_A), ("b", SYS_A)], {"BLEU": sacrebleu.metrics.BLEU(tokenize="intl")}, [REFS],
                      test_type="ar", n_samples=500)()
  assert res["BLEU"][1].p_value == pytest.approx(1 / 501)


def test_reference_beats_a_weak_system_significantly():
  got = significance.compare(SYS_A, REFS, REFS, **FAST)
  for name, r in got.items():
    assert r["p"] < 0.01, name
    assert r["ci"][0] > 0, name  # the whole interval is above 0
    assert r["b"] == pytest.approx(100.0) and r["delta"] > 0, name


def test_bleu_and_chrf_equal_sacrebleu_paired_tests(monkeypatch):
  seed, n_boot, n_trials = 777, 300, 1000
  monkeypatch.setenv("SACREBLEU_SEED", str(seed))  # how sacrebleu's PairedTest is seeded
  got = significance.compare(SYS_A, SYS_B, REFS, metrics=("bleu2", "bleu4", "chrf_pp"), n_bootstrap=n_boot,
                        n_trials=n_trials, seed=seed)
  systems = [("a", SYS_A), ("b", SYS_B)]
  for name, metric in (("bleu2", sacrebleu.metrics.BLEU(tokenize="intl", max_ngram_order=2)),
                       ("bleu4", sacrebleu.metrics.BLEU(tokenize="intl")),
                       ("chrf_pp", sacrebleu.metrics.CHRF(word_order=2))):
    r = got[name]
    _, ar = PairedTest(systems, {name: metric}, [REFS], test_type="ar", n_samples=n_trials)()
    _, bs = PairedTest(systems, {name: metric}, [REFS], test_type="bs", n_samples=n_boot)()
    (base_ar, sys_ar), (base_bs, sys_bs) = [next(v for k, v in res.items() if k != "System") for res in (ar, bs)]
    assert (r["a"], r["b"]) == (base_ar.score, sys_ar.score)
    assert r["p"] == sys_ar.p_value and r["p"] < 0.05  # the same trials, no tie among them
    # sacrebleu prints each system's bootstrap mean +- half the 95% interval: the same resamples.
    for ci, res in ((r["ci_a"], base_bs), (r["ci_b"], sys_bs)):
      assert 0.5 * (ci[1] - ci[0]) == pytest.approx(float(res.ci), rel=1e-6)
      assert ci[0] <= res.mean <= ci[1]
  # The delta's interval from the same paired resamples, rebuilt with sacrebleu's public corpus_score.
  idx = np.random.default_rng(seed).choice(len(REFS), size=(n_boot, len(REFS)), replace=True)
  bleu2 = sacrebleu.metrics.BLEU(tokenize="intl", max_ngram_order=2)
  deltas = np.sort([bleu2.corpus_score([SYS_B[i] for i in row], [[REFS[i] for i in row]]).score
                    - bleu2.corpus_score([SYS_A[i] for i in row], [[REFS[i] for i in row]]).score for row in idx])
  assert got["bleu2"]["ci"] == pytest.approx([deltas[n_boot // 40], deltas[n_boot - n_boot // 40 - 1]], abs=1e-4)


def test_example_metrics_equal_scipy_and_are_seeded():
  import scipy.stats
  got = significance.compare(SYS_A, SYS_B, REFS, metrics=("qa_f1",), seed=5, **FAST)["qa_f1"]
  a = 100 * np.array([metrics.qa_f1(p, r) for p, r in zip(SYS_A, REFS)])
  b = 100 * np.array([metrics.qa_f1(p, r) for p, r in zip(SYS_B, REFS)])
  assert got["delta"] == pytest.approx(b.mean() - a.mean(), abs=1e-12)
  ci = scipy.stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True,
                             n_resamples=200, method="percentile", rng=np.random.default_rng(5)).confidence_interval
  assert got["ci"] == pytest.approx([ci.low, ci.high], abs=1e-12)
  # Two-sided randomization by hand: swap each pair with probability 1/2, count |mean| >= observed.
  assert 0 < got["p"] < 0.05
  assert significance.compare(SYS_A, SYS_B, REFS, metrics=("qa_f1",), seed=5, **FAST)["qa_f1"] == got
  assert significance.compare(SYS_A, SYS_B, REFS, metrics=("qa_f1",), seed=6, **FAST)["qa_f1"]["ci"] != got["ci"]


def test_seeds_pool_paired_runs():
  one = significance.compare(SYS_A, SYS_B, REFS, **FAST)
  two = significance.compare([SYS_A, SYS_A], [SYS_B, SYS_B], REFS, **FAST)
  for name in one:
    # Duplicated seeds: the same scores, and (examples drawn with all their seeds) the same intervals.
    assert two[name]["delta"] == pytest.approx(one[name]["delta"], abs=1e-9), name
    assert two[name]["ci_a"] == pytest.approx(one[name]["ci_a"], abs=1e-6), name
    assert two[name]["ci"] == pytest.approx(one[name]["ci"], abs=1e-6), name
  # Pooled corpus score = sacrebleu over the concatenated runs.
  mixed = significance.compare([SYS_A, SYS_B], [SYS_B, SYS_B], REFS, metrics=("bleu2",), **FAST)["bleu2"]
  want = sacrebleu.metrics.BLEU(tokenize="intl", max_ngram_order=2).corpus_score(SYS_A + SYS_B, [REFS + REFS])
  assert mixed["a"] == pytest.approx(want.score, abs=1e-9)
  with pytest.raises(ValueError, match="paired by seed"):
    significance.compare([SYS_A, SYS_A], SYS_B, REFS, **FAST)
  with pytest.raises(ValueError, match="system_b run 0: 3 predictions"):
    significance.compare(SYS_A, SYS_B[:3], REFS, **FAST)
  with pytest.raises(ValueError, match="positive integer"):
    significance.compare(SYS_A, SYS_B, REFS, seed=0)


def test_confidence_intervals_match_compare_and_score():
  ci = significance.confidence_intervals(SYS_B, REFS, n_bootstrap=200)
  cmp = significance.compare(SYS_A, SYS_B, REFS, **FAST)
  scores = metrics.score(SYS_B, REFS)
  for name, r in ci.items():
    assert r["ci"] == pytest.approx(cmp[name]["ci_b"], abs=1e-12) and r["score"] == pytest.approx(scores[name])
    assert r["ci"][0] < r["score"] < r["ci"][1], name


def test_chrf_pp_is_sacrebleu_chrf_word_order_2():
  got = metrics.score(SYS_B, REFS)
  assert got["chrf_pp"] == pytest.approx(sacrebleu.metrics.CHRF(word_order=2).corpus_score(SYS_B, [REFS]).score)
  assert got["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no")


def test_holm_by_hand():
  # Sorted p = .01 .02 .03 .04 (m = 4): 4*.01 = .04, 3*.02 = .06, 2*.03 = .06 (kept monotone), 1*.04 -> .06.
  assert significance.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
  assert significance.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9]) and significance.holm([0.5, 0.9]) == [1.0, 1.0]
  assert significance.holm([]) == []
