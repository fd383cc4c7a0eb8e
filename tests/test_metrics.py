"""metrics: every score against a hand computation or the reference library, on Hindi text."""
import math
import socket
import unicodedata

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from hinqa_jax import metrics

PREDS = ["राम घर जाता है।", "गंगा आरती शाम को दशाश्वमेध घाट पर होती है।",
         "काशी विश्वनाथ मंदिर सुबह तीन बजे खुलता है", "नाव से घाटों की सैर कीजिए॥"]
REFS = ["राम स्कूल जाता है।", "गंगा आरती हर शाम दशाश्वमेध घाट पर होती है।",
        "मंदिर सुबह तीन बजे खुलता है।", "नाव से सभी घाटों की सैर कीजिए।"]


def test_bleu_equals_sacrebleu_for_every_order():
  got = metrics.score(PREDS, REFS)
  assert got["bleu_tokenize"] == metrics.BLEU_TOKENIZE == "intl"
  assert got["bleu4"] == pytest.approx(
    sacrebleu.corpus_bleu(PREDS, [REFS], tokenize="intl").score, abs=1e-9)
  for n in (1, 2, 3):
    want = sacrebleu.metrics.BLEU(tokenize="intl", max_ngram_order=n).corpus_score(PREDS, [REFS])
    assert got[f"bleu{n}"] == pytest.approx(want.score, abs=1e-9)
  # BLEU-n is cumulative with uniform weights: BP * exp(mean_{k<=n} log p_k), rebuilt from the
  # 4-gram run's own counts (every order has matches here, so no smoothing is involved).
  full = sacrebleu.corpus_bleu(PREDS, [REFS], tokenize="intl")
  bp = 1.0 if full.sys_len >= full.ref_len else math.exp(1 - full.ref_len / full.sys_len)
  for n in (1, 2, 3, 4):
    logp = [math.log(full.counts[k] / full.totals[k]) for k in range(n)]
    assert got[f"bleu{n}"] == pytest.approx(100 * bp * math.exp(sum(logp) / n), rel=1e-9)
  assert got["bleu_signature"] == f"nrefs:1|case:mixed|eff:no|tok:intl|smooth:exp|version:{sacrebleu.__version__}"


def test_bleu_tokenizer_splits_danda_and_keeps_matras():
  tok = sacrebleu.metrics.BLEU(tokenize=metrics.BLEU_TOKENIZE).tokenizer
  assert tok("वे आरती देखेंगे। घाट॥") == "वे आरती देखेंगे । घाट ॥"
  # '13a' leaves the danda glued to the word; 'char' cuts the matras off their consonants.
  assert sacrebleu.metrics.BLEU(tokenize="13a").tokenizer("देखेंगे।") == "देखेंगे।"
  assert sacrebleu.metrics.BLEU(tokenize="char").tokenizer("है") == "ह ै"
  # By hand, pred "राम घर जाता है।" vs ref "राम घर जाता है":
  #   intl: pred [राम घर जाता है ।], 4 of 5 unigrams match, pred longer so BP = 1 -> BLEU-1 = 80;
  #         bigrams [राम घर, घर जाता, जाता है, है ।], 3 of 4 -> BLEU-2 = 100 * sqrt(4/5 * 3/4).
  #   13a:  pred [राम घर जाता है।], 3 of 4 unigrams -> 75: the danda costs a whole word.
  got = metrics.score(["राम घर जाता है।"], ["राम घर जाता है"])
  assert got["bleu1"] == pytest.approx(80.0, abs=1e-9)
  assert got["bleu2"] == pytest.approx(100 * math.sqrt(0.6), abs=1e-9)
  assert sacrebleu.metrics.BLEU(tokenize="13a", max_ngram_order=1).corpus_score(
    ["राम घर जाता है।"], [["राम घर जाता है"]]).score == pytest.approx(75.0, abs=1e-9)


def test_nfc_makes_decomposed_nukta_match():
  composed = "\u0958िला देखिए"  # क़ as one code point (NFC decomposes it: a composition exclusion)
  decomposed = "\u0915\u093cिला देखिए"  # क + nukta
  assert composed != decomposed
  assert unicodedata.normalize("NFC", composed) == decomposed
  got = metrics.score([composed], [decomposed])
  assert got["exact_match"] == 100.0 and got["qa_f1"] == 100.0 and got["rougeL"] == 100.0
  assert got["bleu1"] == pytest.approx(100.0, abs=1e-9)
  # Raw sacrebleu sees two different first words: 1 of 2 unigrams.
  raw = sacrebleu.metrics.BLEU(tokenize="intl", max_ngram_order=1).corpus_score([composed], [[decomposed]])
  assert raw.score == pytest.approx(50.0, abs=1e-9)


def test_rouge_l_by_hand_on_hindi():
  # pred [राम घर जाता है], ref [राम स्कूल जाता है] (the danda is stripped): LCS = राम जाता है = 3,
  # P = 3/4, R = 3/4, F = 0.75. Second pair identical: F = 1. Mean = (75 + 100) / 2 = 87.5.
  assert metrics.score(["राम घर जाता है"], ["राम स्कूल जाता है।"])["rougeL"] == pytest.approx(75.0, abs=1e-9)
  got = metrics.score(["राम घर जाता है", "गंगा आरती"], ["राम स्कूल जाता है", "गंगा आरती।"])
  assert got["rougeL"] == pytest.approx(87.5, abs=1e-9)
  # Unequal lengths: pred [घाट पर आरती होती है] (5), ref [आरती घाट पर होती है] (5): LCS घाट पर होती है
  # = 4 -> F = 0.8; pred [आरती] vs ref [शाम की आरती]: P = 1, R = 1/3, F = 0.5.
  got = metrics.score(["घाट पर आरती होती है", "आरती"], ["आरती घाट पर होती है", "शाम की आरती"])
  assert got["rougeL"] == pytest.approx((80.0 + 50.0) / 2, abs=1e-9)


def test_rouge_default_tokenizer_would_zero_hindi():
  # The bug avoided: rouge-score's default tokenizer drops every non [a-z0-9] character.
  default = rouge_scorer.RougeScorer(["rougeL"])
  assert default.score("राम स्कूल जाता है", "राम घर जाता है")["rougeL"].fmeasure == 0.0
  assert metrics.HindiTokenizer().tokenize("राम, घर जाता है। ॥") == ["राम", "घर", "जाता", "है"]


def test_normalize_answer_removes_unicode_punctuation_only():
  assert metrics.normalize_answer("  “काशी” विश्वनाथ॥ मंदिर।  ") == "काशी विश्वनाथ मंदिर"
  assert metrics.normalize_answer("Ganga-Aarti (7 PM)!") == "gangaaarti 7 pm"  # deleted, as MLQA
  assert metrics.normalize_answer("देखेंगे") == "देखेंगे"  # matras and anusvara are marks, not punctuation
  # No article stripping: 'a'/'the' stay (MLQA strips them only for English).
  assert metrics.normalize_answer("The ghat") == "the ghat"


def test_qa_f1_and_exact_match_by_hand():
  # pred [आरती शाम को], ref [गंगा आरती शाम में]: 2 common, P = 2/3, R = 2/4,
  # F1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 4/7.
  assert metrics.qa_f1("आरती, शाम को!", "गंगा आरती शाम में।") == pytest.approx(4 / 7, abs=1e-12)
  # Repeats count once per match: pred [घाट घाट घाट], ref [घाट पर]: 1 common, P = 1/3, R = 1/2, F1 = 0.4.
  assert metrics.qa_f1("घाट घाट घाट", "घाट पर") == pytest.approx(0.4, abs=1e-12)
  assert metrics.qa_f1("", "घाट पर") == 0.0
  assert metrics.qa_f1("।", "") == 1.0  # both empty after normalisation: they agree, as EM says
  assert metrics.exact_match("गंगा आरती।", "गंगा  आरती") == 1.0
  assert metrics.exact_match("Ganga Aarti", "ganga aarti.") == 1.0
  assert metrics.exact_match("गंगा आरती", "गंगा आरती होती है") == 0.0
  got = metrics.score(["आरती, शाम को!", "गंगा आरती।"], ["गंगा आरती शाम में।", "गंगा  आरती"])
  assert got["qa_f1"] == pytest.approx(100 * (4 / 7 + 1) / 2, abs=1e-9)
  assert got["exact_match"] == pytest.approx(50.0, abs=1e-9)
  assert got["n"] == 2


def test_empty_prediction_scores_zero_for_its_pair():
  preds, refs = ["", "राम घर जाता है"], ["राम घर जाता है", "राम घर जाता है"]
  got = metrics.score(preds, refs)
  assert got["qa_f1"] == 50.0 and got["exact_match"] == 50.0 and got["rougeL"] == 50.0
  for n in (1, 2, 3, 4):
    want = sacrebleu.metrics.BLEU(tokenize="intl", max_ngram_order=n).corpus_score(preds, [refs])
    assert got[f"bleu{n}"] == pytest.approx(want.score, abs=1e-9)
  # Half the reference length is missing: BP = exp(1 - 8/4) while every n-gram of pair 2 matches.
  assert got["bleu1"] == pytest.approx(100 * math.exp(-1), abs=1e-9)


def test_unequal_lengths_and_empty_lists():
  with pytest.raises(ValueError, match="3 predictions but 2 references"):
    metrics.score(["a", "b", "c"], ["a", "b"])
  got = metrics.score([], [])
  assert got["n"] == 0 and got["note"] == "no pairs to score"
  for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "qa_f1", "exact_match"):
    assert got[k] is None


def test_bertscore_notes_without_model(tmp_path):
  missing = str(tmp_path / "no_such_model")
  for model, note in ((None, "not computed (no model given)"), ("", "not computed (no model given)"),
                      (missing, f"not computed (no model at {missing})")):
    got = metrics.score(["राम"], ["राम"], bertscore_model=model)
    assert got["bertscore"] == note
    assert "bertscore_f1" not in got and got["qa_f1"] == 100.0


@pytest.fixture(scope="module")
def tiny_bert_dirs(tmp_path_factory):
  """One random 2-layer BERT (hidden 32, Devanagari word pieces) saved twice: tokenizer with
  model_max_length=128, and without it (as mBERT's hub files, which then load as 1e30)."""
  from helpers import tiny_bert
  root = tmp_path_factory.mktemp("tiny_bert")
  return [tiny_bert(root / "capped", 128), tiny_bert(root / "uncapped", None)]


def test_bertscore_equals_bert_score_library(tiny_bert_dirs, monkeypatch):
  import bert_score

  def no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")
  monkeypatch.setattr(socket.socket, "connect", no_network)
  capped, uncapped = tiny_bert_dirs
  by_layer = {}
  for layer in (1, 2):
    p, r, f1 = bert_score.score(PREDS, REFS, model_type=capped, num_layers=layer, batch_size=2)
    for model_dir in (capped, uncapped):
      got = metrics.score(PREDS, REFS, bertscore_model=model_dir, bertscore_layer=layer,
                          bertscore_batch_size=2)
      assert got["bertscore_p"] == pytest.approx(100 * float(p.double().mean()), abs=1e-6)
      assert got["bertscore_r"] == pytest.approx(100 * float(r.double().mean()), abs=1e-6)
      assert got["bertscore_f1"] == pytest.approx(100 * float(f1.double().mean()), abs=1e-6)
      assert "bertscore" not in got
    by_layer[layer] = got["bertscore_f1"]
    # Pairs with an empty side score 0 (bert-score's rule), the others as before: mean over all 6.
    got = metrics.score(PREDS + ["", " "], REFS + ["खाली उत्तर", "राम"], bertscore_model=capped,
                        bertscore_layer=layer, bertscore_batch_size=2)
    assert got["bertscore_f1"] == pytest.approx(100 * float(f1.double().sum()) / 6, abs=1e-6)
    assert got["bertscore_p"] == pytest.approx(100 * float(p.double().sum()) / 6, abs=1e-6)
  assert by_layer[1] != pytest.approx(by_layer[2], abs=1e-3)  # the layer argument reaches the model
  # Identical pairs give F1 = 100 (each token's best match is itself, cosine 1).
  same = metrics.score(REFS, REFS, bertscore_model=capped, bertscore_layer=2)
  assert same["bertscore_f1"] == pytest.approx(100.0, abs=1e-4)


def test_bertscore_uncapped_tokenizer_breaks_plain_bert_score(tiny_bert_dirs):
  # Why metrics caps model_max_length and scores empty pairs itself: under transformers 5 the
  # library alone fails on an mBERT-style local directory and on an empty candidate.
  import bert_score
  with pytest.raises(OverflowError):
    bert_score.score(["राम"], ["राम"], model_type=tiny_bert_dirs[1], num_layers=1)
  with pytest.raises(AttributeError, match="build_inputs_with_special_tokens"):
    bert_score.score([""], ["राम"], model_type=tiny_bert_dirs[0], num_layers=1)
  got = metrics.score([""], ["राम"], bertscore_model=tiny_bert_dirs[0], bertscore_layer=1)
  assert (got["bertscore_p"], got["bertscore_r"], got["bertscore_f1"]) == (0.0, 0.0, 0.0)
  # Truncation at the position table: a 300-piece answer still scores (and equals itself).
  long = " ".join(["राम"] * 100)
  got = metrics.score([long], [long], bertscore_model=tiny_bert_dirs[1], bertscore_layer=1)
  assert got["bertscore_f1"] == pytest.approx(100.0, abs=1e-4)


def test_bertscore_refuses_path_bert_score_would_load_as_t5(tiny_bert_dirs, tmp_path):
  link = tmp_path / "mt5_named_bert"
  link.symlink_to(tiny_bert_dirs[0], target_is_directory=True)
  with pytest.raises(ValueError, match="as T5"):
    metrics.score(["राम"], ["राम"], bertscore_model=str(link), bertscore_layer=1)
