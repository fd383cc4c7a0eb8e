"""Answer-quality metrics for Hindi QA: BLEU-1..4, chrF++, ROUGE-L, QA-F1, exact match and BERTScore
(their confidence intervals and paired significance tests are in significance.py).

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
from typing import Any

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
  return float(bleu_metric(order).corpus_score(predictions, [references]).score)


def bleu_metric(order: int) -> sacrebleu.metrics.BLEU:
  return sacrebleu.metrics.BLEU(tokenize=BLEU_TOKENIZE, max_ngram_order=order)


def chrf_pp_metric() -> sacrebleu.metrics.CHRF:
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
    metric = bleu_metric(k)
    result[f"bleu{k}"] = float(metric.corpus_score(preds, [refs]).score)
  # Same for every order (sacrebleu's signature does not name it): what a reader needs to re-run.
  result["bleu_signature"] = metric.get_signature().format()
  chrf = chrf_pp_metric()
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
