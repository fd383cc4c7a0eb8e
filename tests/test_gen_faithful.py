"""Each new curation filter with Hindi pairs it must keep and pairs it must drop."""
import pytest

import gen
from gen import faithful
from gen.curate import curate_records, judge_assignment
from gen.parse import parse_pairs

CTX = ("भारत कला भवन संग्रहालय काशी हिंदू विश्वविद्यालय के परिसर में स्थित है। इसकी स्थापना सन् १९२० में हुई थी। "
       "संग्रहालय सोमवार को बंद रहता है। संग्रहालय लंका गेट से लगभग 3.8 किलोमीटर दूर है। "
       "यहाँ पाँच सौ से अधिक पुरानी पांडुलिपियाँ रखी गई हैं।")


def rec(rid, teacher, q, a, ctx=CTX, domain="Museum"):
  return {"id": rid, "domain": domain, "context": ctx, "question": q, "answer": a, "source": teacher}


def run(records, originals=(), **overrides):
  cfg = gen.default_config().curate
  for k, v in overrides.items():
    setattr(cfg, k, v)
  kept, rejected, report = curate_records(records, list(originals), {}, cfg)
  return {r["id"] for r in kept}, {r["id"]: r["reason"] for r in rejected}, report


def test_numbers_and_dates_must_occur_in_the_context():
  keep = [rec("k-km", "A", "संग्रहालय लंका गेट से कितनी दूर है?", "संग्रहालय लंका गेट से लगभग 3.8 किलोमीटर दूर है।"),
          rec("k-year", "A", "संग्रहालय की स्थापना कब हुई?", "संग्रहालय की स्थापना सन् 1920 में हुई थी।"),  # १९२० = 1920
          rec("k-words", "A", "संग्रहालय में कितनी पांडुलिपियाँ हैं?", "संग्रहालय में 500 से अधिक पांडुलिपियाँ हैं।")]
  drop = [rec("d-km", "B", "संग्रहालय लंका गेट से कितनी दूरी पर है?", "संग्रहालय लंका गेट से 5.2 किलोमीटर की दूरी पर है।"),
          rec("d-year", "B", "संग्रहालय की स्थापना किस वर्ष हुई?", "संग्रहालय की स्थापना सन् १९३२ में हुई थी।"),
          rec("d-day", "B", "संग्रहालय किस दिन बंद होता है?", "संग्रहालय रविवार को बंद रहता है।")]
  kept, reasons, _ = run(keep + drop)
  assert kept == {"k-km", "k-year", "k-words"}
  assert reasons == {"d-km": "unsupported_number", "d-year": "unsupported_number", "d-day": "unsupported_number"}
  assert faithful.numbers("ढाई हज़ार लोग, दो लाख दीये, एक मंदिर, अस्सी घाट") == {2500.0, 200000.0}


def test_named_entities_must_occur_in_the_context():
  kept, reasons, _ = run([
    rec("k", "A", "संग्रहालय किस विश्वविद्यालय के परिसर में है?", "संग्रहालय काशी हिंदू विश्वविद्यालय के परिसर में है।"),
    rec("d", "A", "संग्रहालय के पास कौन सा घाट है?", "संग्रहालय के पास अस्सी घाट और तुलसी घाट हैं।")])
  assert kept == {"k"} and reasons == {"d": "unsupported_entity"}


def test_answers_that_restate_the_question_are_dropped():
  kept, reasons, _ = run([
    rec("k", "A", "संग्रहालय किस शहर के विश्वविद्यालय में है?", "संग्रहालय काशी हिंदू विश्वविद्यालय के परिसर में है।"),
    rec("d-same", "A", "भारत कला भवन संग्रहालय कब बंद रहता है?", "भारत कला भवन संग्रहालय बंद रहता है।"),
    rec("d-where", "B", "संग्रहालय किस शहर में है?", "भारत कला भवन एक संग्रहालय है जहाँ पांडुलिपियाँ रखी गई हैं।"),
    rec("d-count", "B", "संग्रहालय में कितनी पांडुलिपियाँ हैं?", "संग्रहालय में कई पुरानी पांडुलिपियाँ रखी गई हैं।")])
  assert kept == {"k"}
  assert reasons == {"d-same": "restates_question", "d-where": "restates_question", "d-count": "restates_question"}


def test_faithful_paraphrases_are_kept_and_invented_content_is_not():
  paraphrase = rec("k-para", "A", "सप्ताह में संग्रहालय कब नहीं खुलता?", "सोमवार के दिन यह संग्रहालय बंद रहता है।")
  reordered = rec("k-order", "A", "संग्रहालय कहाँ स्थित है?", "काशी हिंदू विश्वविद्यालय के परिसर में यह संग्रहालय स्थित है।")
  invented = rec("d-inv", "B", "संग्रहालय में क्या देखने लायक है?", "संग्रहालय में सुंदर चित्र और मूर्तियाँ देखने लायक हैं।")
  kept, reasons, _ = run([paraphrase, reordered, invented])
  assert kept == {"k-para", "k-order"} and reasons == {"d-inv": "ungrounded"}
  assert faithful.grounding_score(paraphrase["answer"], CTX) >= 0.6 > faithful.grounding_score(invented["answer"], CTX)


def test_three_way_conflict_keeps_only_the_answer_in_the_context():
  q = "संग्रहालय लंका गेट से कितनी दूर है?"
  kept, reasons, report = run([rec("a", "A", q, "संग्रहालय लंका गेट से लगभग 3.8 किलोमीटर दूर है।"),
                               rec("b", "B", q, "संग्रहालय लंका गेट से लगभग 5.2 किलोमीटर दूर है।"),
                               rec("c", "C", q, "संग्रहालय लंका गेट से लगभग सात किलोमीटर दूर है।")])
  assert kept == {"a"} and reasons == {"b": "unsupported_number", "c": "unsupported_number"}
  [group] = report["conflicts"]
  assert group["kept"] == "a" and [m["supported"] for m in group["members"]] == [True, False, False]
  # no answer in the context: the whole group goes
  kept, reasons, report = run([rec("b", "B", q, "संग्रहालय लंका गेट से लगभग 5.2 किलोमीटर दूर है।"),
                               rec("c", "C", q, "संग्रहालय लंका गेट से लगभग सात किलोमीटर दूर है।")])
  assert kept == set() and report["conflicts"][0]["kept"] is None


def test_language_is_checked_per_field():
  kept, reasons, _ = run([
    rec("d-a", "A", "संग्रहालय लंका गेट से कितनी दूर और किस विश्वविद्यालय के परिसर में स्थित है?",
        "It is about 3.8 km from Lanka gate."),
    rec("d-q", "A", "How far is the museum from Lanka gate?", "संग्रहालय लंका गेट से लगभग 3.8 किलोमीटर दूर है।")])
  assert reasons == {"d-a": "not_hindi_answer", "d-q": "not_hindi_question"}


def test_near_duplicates_across_contexts_and_against_originals_with_minhash():
  other = CTX + " यहाँ एक पुस्तकालय भी है।"
  q, a = "संग्रहालय किस दिन बंद रहता है?", "संग्रहालय सोमवार को बंद रहता है।"
  variant = ("संग्रहालय किस दिन बंद रहता है", "संग्रहालय सोमवार को बंद रहता है ।")  # punctuation and spacing
  kept, reasons, _ = run([rec("a", "A", q, a), rec("b", "B", *variant, ctx=other),
                          rec("c", "B", "संग्रहालय लंका गेट से कितनी दूर है?", "संग्रहालय लंका गेट से लगभग 3.8 किलोमीटर दूर है।",
                              ctx=other)],
                         originals=[{"id": "o1", "domain": "Museum", "context": "अलग संदर्भ।",
                                     "question": "संग्रहालय लंका गेट से कितनी दूर है ?",
                                     "answer": "संग्रहालय लंका गेट से लगभग ३.८ किलोमीटर दूर है।"}])
  assert kept == {"a"} and reasons["b"] in ("duplicate_exact", "duplicate_near") and reasons["c"] == "duplicate_exact"


def test_parser_reads_python_literals_and_counts_every_drop():
  p = parse_pairs("```python\n[{'प्रश्न': 'संग्रहालय कब बंद रहता है?', 'उत्तर': 'सोमवार को।',}, "
                  "{'question': 'कहाँ है?', 'answer': ''}, {'question': 'कितनी दूर?'}, {'question': 'किसने")
  assert p.pairs == [("संग्रहालय कब बंद रहता है?", "सोमवार को।")]
  assert p.dropped == {"empty_answer": 1, "missing_field": 1, "truncated": 1}


def test_judge_is_never_the_teacher_it_judges():
  cfg = gen.default_config().curate.judge
  cfg.teacher, cfg.judges = "llama70b", "llama70b:phi4"
  assert judge_assignment(["llama70b", "phi4"], cfg) == {"llama70b": "phi4", "phi4": "llama70b"}
  cfg.judges = ""
  with pytest.raises(ValueError, match="'llama70b' would judge its own pairs"):
    judge_assignment(["llama70b", "phi4"], cfg)
  c = gen.default_config()  # a second section serving the same model is the same judge
  c.teachers.a = gen.teacher("openai", "llama-70b", base_url="http://127.0.0.1:1/v1")
  c.teachers.b = gen.teacher("openai", "llama-70b", base_url="http://127.0.0.1:2/v1")
  c.curate.judge.enabled, c.curate.judge.judges = True, "a:b,b:a"
  with pytest.raises(ValueError, match="same model as teacher"):
    gen.curate(c, originals=[], heldout={})


def test_dry_run_stats_count_each_filter_and_threshold():
  _, _, report = run([rec("a", "A", "संग्रहालय किस दिन बंद होता है?", "संग्रहालय रविवार को बंद रहता है।"),
                      rec("b", "A", "संग्रहालय में क्या देखने लायक है?", "संग्रहालय में सुंदर चित्र और मूर्तियाँ देखने लायक हैं।")])
  stats = report["dry_run"]
  assert stats["filters"]["unsupported_number"]["alone"] == 1
  assert stats["filters"]["unsupported_number"]["examples"][0]["id"] == "a"
  sweep = stats["sweeps"]["grounding_threshold"]["values"]
  assert sweep["0.3"]["would_drop"] <= sweep["0.9"]["would_drop"] and sweep["0.9"]["would_drop"] >= 1


def test_answers_that_stop_mid_phrase_are_incomplete():
  assert faithful.incomplete("यहाँ दक्षिण भारत के श्रद्धालु भगवान शिव की पूजा का") == "ends mid-phrase on 'का'"
  assert faithful.incomplete("आरती में सात पुजारी और") and faithful.incomplete("संग्रहालय में पुराने सिक्के तथा")
  assert faithful.incomplete("आरती दशाश्वमेध घाट पर होती है।") == ""
  assert faithful.incomplete("दशाश्वमेध घाट पर") == ""  # a short answer may end on a postposition
  # the last answer of a length-cut output without a final mark
  assert faithful.incomplete("आरती लगभग पैंतालीस मिनट तक चलती", cut_by_length=True)
  assert faithful.incomplete("आरती लगभग पैंतालीस मिनट तक चलती है।", cut_by_length=True) == ""
  records = [rec("k", "A", "भारत कला भवन कहाँ स्थित है?", "भारत कला भवन काशी हिंदू विश्वविद्यालय के परिसर में स्थित है।"),
             rec("cut", "A", "संग्रहालय में क्या रखा गया है?", "संग्रहालय में एक लाख से अधिक कलाकृतियाँ और")]
  kept, reasons, _ = run(records)
  assert kept == {"k"} and reasons == {"cut": "incomplete_answer"}
