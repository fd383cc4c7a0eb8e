"""Answer-quality metrics for Hindi QA: BLEU-1..4, chrF++, ROUGE-L, QA-F1, exact match and BERTScore,
and their uncertainty: bootstrap confidence intervals and paired significance tests (`compare`).

All scores are 0-100 and computed on NFC-normalised text, so a decomposed nukta or matra in a model
output cannot cost points against a composed reference. Every metric goes through the reference
library (sacrebleu, rouge-score, bert-score) with its Hindi pitfalls fixed and stated here:
- BLEU: sacrebleu's 'intl' tokenizer (see BLEU_TOKENIZE for why not '13a', 'char' or 'flores200').
- chrF++: sacrebleu CHRF(word_order=2) (character 6-grams plus word 1-2-grams, beta 2): partial credit
  for a shared stem under a different suffix, which Hindi's inflection makes common.
- ROUGE-L: rouge-score's default tokenizer deletes every non [a-z0-9] character, i.e. all of Hindi,
  so it scores every Hindi pair 0; we hand it `HindiTokenizer` instead.
- QA-F1 / EM: MLQA normalisation without article stripping (Hindi has no articles).
- BERTScore: only from a local model directory (bert-base-multilingual-cased, layer 9, for real
  runs); no hub look-up, no IDF, no baseline rescaling.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import string
import unicodedata
from typing import Any, Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

# '13a' and 'intl' both keep matras, viramas, nuktas and anusvara inside their word (they split only
# on punctuation/symbols, never on marks), but '13a' knows only ASCII punctuation, so the danda stays
# glued to the last word: '13a' gives "जाता है।" -> ['जाता', 'है।'], which never matches 'है'. 'intl'
# splits every Unicode \p{P}/\p{S}: ['जाता', 'है', '।']. 'char' splits "है" into 'ह' + 'ै' (a matra
# alone is not a unit of meaning) and 'flores200' downloads a SentencePiece model at first use.
BLEU_TOKENIZE = "intl"
BLEU_ORDERS = (1, 2, 3, 4)  # BLEU-n = cumulative BLEU, uniform weights over 1..n; BLEU-2 is the headline

# MLQA's punctuation set: every Unicode 'P*' character (this includes the danda । and double danda ॥,
# both 'Po') plus ASCII string.punctuation, whose $+<=>^`|~ are symbols ('S*'), not 'P*'.
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
  return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(s: str) -> str:
  """NFC, lowercase, delete punctuation (MLQA), collapse whitespace; no article stripping."""
  s = unicodedata.normalize("NFC", s).lower()
  # Deleted, not replaced by a space: MLQA's remove_punc does the same, so scores stay comparable.
  s = "".join(ch for ch in s if not _is_punct(ch))
  return " ".join(s.split())


class HindiTokenizer:
  """rouge-score tokenizer (`tokenizer=`) that keeps Devanagari: normalize_answer, then split."""

  def tokenize(self, text: str) -> list[str]:
    return normalize_answer(text).split()


def qa_f1(pred: str, ref: str) -> float:
  """Token-overlap F1 (0-1) of the normalised strings, counting repeated tokens once per match."""
  pred_toks = normalize_answer(pred).split()
  ref_toks = normalize_answer(ref).split()
  if not pred_toks or not ref_toks:
    # SQuAD-2 convention: two empty answers agree (as exact_match says); one empty side scores 0.
    return float(pred_toks == ref_toks)
  num_same = sum((collections.Counter(pred_toks) & collections.Counter(ref_toks)).values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(pred_toks)
  recall = num_same / len(ref_toks)
  return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, ref: str) -> float:
  """1.0 if the normalised strings are equal, else 0.0."""
  return float(normalize_answer(pred) == normalize_answer(ref))


def bleu(predictions: list[str], references: list[str], order: int) -> float:
  """Corpus BLEU-`order` (0-100), sacrebleu defaults apart from tokenize=BLEU_TOKENIZE.

  Corpus BLEU pools n-gram counts over all pairs, so effective_order (a sentence-BLEU fix for
  short sentences without n-grams of the top order) is off; sacrebleu's 'exp' smoothing applies.
  So a corpus whose predictions are all shorter than `order` tokens scores 0, as in sacrebleu.
  """
  return float(_bleu_metric(order).corpus_score(predictions, [references]).score)


def _bleu_metric(order: int) -> sacrebleu.metrics.BLEU:
  return sacrebleu.metrics.BLEU(tokenize=BLEU_TOKENIZE, max_ngram_order=order)


def _chrf_pp() -> sacrebleu.metrics.CHRF:
  return sacrebleu.metrics.CHRF(word_order=2)


def rouge_l_per_example(predictions: list[str], references: list[str]) -> list[float]:
  """ROUGE-L F-measure (0-1) of each pair, tokenised by HindiTokenizer, no stemming."""
  scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=HindiTokenizer())
  # RougeScorer.score takes (target, prediction): reference first.
  return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]


def rouge_l(predictions: list[str], references: list[str]) -> float:
  """Mean ROUGE-L F-measure (0-100) over pairs."""
  f = rouge_l_per_example(predictions, references)
  return 100.0 * sum(f) / len(f)


@functools.lru_cache(maxsize=2)
def _bert_scorer(model_dir: str, layer: int) -> Any:
  # Cached so scoring val, test-1 and test-2 in one run loads the model once.
  import bert_score  # torch-heavy: imported only when BERTScore is asked for
  scorer = bert_score.BERTScorer(model_type=model_dir, num_layers=layer)
  # mBERT's hub tokenizer_config.json has no model_max_length (old transformers filled in 512 from
  # a table keyed by hub name, never for a local path), so it loads as 1e30; bert-score passes
  # that as max_length and transformers 5's tokenizers backend overflows. Cap it at the position
  # table, which is also where the model itself would fail on a long answer.
  tok, positions = scorer._tokenizer, getattr(scorer._model.config, "max_position_embeddings", None)
  if positions and tok.model_max_length > positions:
    tok.model_max_length = positions
  return scorer


def bertscore(predictions: list[str], references: list[str], model_dir: str, *,
              layer: int = 9, batch_size: int = 16) -> dict[str, float]:
  """Mean BERTScore P/R/F1 (0-100) from the local model directory `model_dir`, layer `layer`.

  Raw scores: no IDF weighting, no baseline rescaling. A pair with an empty (or blank) side scores
  0, bert-score's own rule, applied here because bert-score 0.3.13 crashes on an empty string under
  transformers 5 (it calls the removed `build_inputs_with_special_tokens`).
  """
  n = len(predictions)
  per = bertscore_per_example(predictions, references, model_dir, layer=layer, batch_size=batch_size)
  return {f"bertscore_{k}": 100.0 * float(v.sum()) / n for k, v in per.items()}


def bertscore_per_example(predictions: list[str], references: list[str], model_dir: str, *, layer: int = 9,
                          batch_size: int = 16) -> dict[str, "np.ndarray"]:
  """BERTScore P/R/F1 (0-1, float64) of each pair; a pair with an empty side scores 0 (see `bertscore`)."""
  model_dir = os.path.abspath(model_dir)
  # bert-score picks the loader by substring: 't5' anywhere in model_type (say /tmp/tmpat5x/mbert)
  # means T5EncoderModel, which fails on a BERT config with an unrelated-looking validation error.
  with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
    arch = json.load(f).get("model_type", "")
  if "t5" in model_dir and "t5" not in arch:
    raise ValueError(f"bert-score would load {model_dir} as T5 (path contains 't5'); "
                     f"its model_type is {arch!r}: move or rename the directory")
  keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
  out = {k: np.zeros(len(predictions)) for k in ("p", "r", "f1")}
  if keep:
    scorer = _bert_scorer(model_dir, layer)
    prf = scorer.score([predictions[i] for i in keep], [references[i] for i in keep], batch_size=batch_size)
    for k, t in zip(("p", "r", "f1"), prf):
      out[k][keep] = t.double().numpy()
  return out


def score(predictions: list[str], references: list[str], *, bertscore_model: str | None = None,
          bertscore_layer: int = 9, bertscore_batch_size: int = 16
          ) -> dict[str, float | int | str | None]:
  """All metrics (0-100) of paired predictions and references, plus `n` and notes.

  Keys: bleu1..bleu4, chrf_pp, rougeL, qa_f1, exact_match, n, bleu_tokenize, bleu_signature and
  chrf_signature (n > 0), and either
  bertscore_p/_r/_f1 (when `bertscore_model` is an existing local directory) or a `bertscore` note.
  Empty lists give n=0, every metric None and a `note`.
  """
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
  preds = [unicodedata.normalize("NFC", p) for p in predictions]
  refs = [unicodedata.normalize("NFC", r) for r in references]
  n = len(preds)
  result: dict[str, float | int | str | None] = {"n": n, "bleu_tokenize": BLEU_TOKENIZE}
  keys = [f"bleu{k}" for k in BLEU_ORDERS] + ["chrf_pp", "rougeL", "qa_f1", "exact_match"]
  if n == 0:
    result.update({k: None for k in keys})
    result["note"] = "no pairs to score"
    result["bertscore"] = "not computed (no pairs)"
    return result

  for k in BLEU_ORDERS:
    metric = _bleu_metric(k)
    result[f"bleu{k}"] = float(metric.corpus_score(preds, [refs]).score)
  # Same for every order (sacrebleu's signature does not name it): what a reader needs to re-run.
  result["bleu_signature"] = metric.get_signature().format()
  chrf = _chrf_pp()
  result["chrf_pp"] = float(chrf.corpus_score(preds, [refs]).score)
  result["chrf_signature"] = chrf.get_signature().format()
  result["rougeL"] = rouge_l(preds, refs)
  result["qa_f1"] = 100.0 * sum(qa_f1(p, r) for p, r in zip(preds, refs)) / n
  result["exact_match"] = 100.0 * sum(exact_match(p, r) for p, r in zip(preds, refs)) / n

  if not bertscore_model:
    result["bertscore"] = "not computed (no model given)"
  elif not os.path.isfile(os.path.join(bertscore_model, "config.json")):
    # Never fall through to bert-score with a name that is not a local directory: transformers
    # would take it for a hub id and try the network.
    result["bertscore"] = f"not computed (no model at {bertscore_model})"
  else:
    result.update(bertscore(preds, refs, bertscore_model, layer=bertscore_layer,
                            batch_size=bertscore_batch_size))
  return result


# ----------------------------------------------------------------------------- uncertainty and significance
# Corpus metrics pool n-gram counts over the corpus, so they are resampled through sacrebleu's sufficient
# statistics; the others are means of per-example scores. Both are 0-100.
CORPUS_METRICS = tuple(f"bleu{k}" for k in BLEU_ORDERS) + ("chrf_pp",)
EXAMPLE_METRICS = ("rougeL", "qa_f1", "exact_match")
DEFAULT_SEED = 12345  # sacrebleu's own default (SACREBLEU_SEED)


def _corpus_metric(name: str) -> sacrebleu.metrics.base.Metric:
  return _chrf_pp() if name == "chrf_pp" else _bleu_metric(int(name[len("bleu"):]))


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
  import scipy.stats
  mean_diff = lambda x, y, axis=-1: np.mean(y - x, axis=axis)  # noqa: E731
  ci = scipy.stats.bootstrap((a_sn.mean(0), b_sn.mean(0)), mean_diff, paired=True, vectorized=True,
                             n_resamples=n_bootstrap, method="percentile", rng=np.random.default_rng(seed))
  perm = scipy.stats.permutation_test((a_sn.ravel(), b_sn.ravel()), lambda x, y, axis=-1: np.abs(mean_diff(x, y, axis)),
                                      permutation_type="samples", vectorized=True, n_resamples=n_trials,
                                      alternative="greater", rng=np.random.default_rng(seed))
  lo, hi = ci.confidence_interval
  return {"delta": float(b_sn.mean() - a_sn.mean()), "ci": [float(lo), float(hi)], "p": float(perm.pvalue)}


def _example_ci(x_sn: np.ndarray, n_bootstrap: int, seed: int) -> list[float]:
  import scipy.stats
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
