"""Curation filters: for each, pairs it must keep and pairs it must drop; the report; determinism."""
import json

import pytest

import gen
from gen.curate import curate_records
from gen import faithful, text
from gen.synthesize import context_id
from hinqa_jax.records import devanagari_ratio

CTX = ("दशाश्वमेध घाट पर गंगा आरती हर शाम सूर्यास्त के बाद होती है। आरती लगभग पैंतालीस मिनट तक चलती है। "
       "इसमें सात पुजारी बड़े दीपकों के साथ भाग लेते हैं। आरती देखने के लिए नाव से भी जाया जा सकता है।")
CTX2 = "कचौड़ी गली में सुबह से ही गरम कचौड़ी और जलेबी मिलती है। यहाँ की दुकानें बहुत पुरानी हैं।"
TEST2_CTX = "सारनाथ वाराणसी से लगभग दस किलोमीटर दूर है। यहाँ भगवान बुद्ध ने अपना पहला उपदेश दिया था।"
# A val context sharing one long sentence with CTX: copying it from CTX is not contamination.
VAL_CTX = "इसमें सात पुजारी बड़े दीपकों के साथ भाग लेते हैं। अस्सी घाट पर सुबह-ए-बनारस होता है।"

ORIGINALS = [
  {"id": "o1", "domain": "Ganga Aarti", "context": CTX, "question": "गंगा आरती कहाँ होती है?",
   "answer": "गंगा आरती दशाश्वमेध घाट पर होती है।"},
  {"id": "o2", "domain": "Food Court", "context": CTX2, "question": "कचौड़ी गली में क्या मिलता है?",
   "answer": "कचौड़ी गली में गरम कचौड़ी और जलेबी मिलती है।"},
]
HELDOUT = {
  "val": [{"id": "v1", "domain": "Ganga Aarti", "context": VAL_CTX, "question": "सुबह-ए-बनारस कहाँ होता है?",
           "answer": "सुबह-ए-बनारस अस्सी घाट पर होता है।"}],
  "test2": [{"id": "t2-1", "domain": "General", "context": TEST2_CTX,
             "question": "भगवान बुद्ध ने पहला उपदेश कहाँ दिया था?",
             "answer": "भगवान बुद्ध ने अपना पहला उपदेश सारनाथ में दिया था।"}],
}


def rec(rid, teacher, q, a, ctx=CTX, domain="Ganga Aarti"):
  return {"id": rid, "domain": domain, "context": ctx, "question": q, "answer": a, "source": teacher,
          "provenance": {"teacher": teacher, "prompt_version": "qa-hi-v1"}}


def run(records, **overrides):
  cfg = gen.default_config().curate
  for k, v in overrides.items():
    setattr(cfg, k, v)
  kept, rejected, report = curate_records(records, ORIGINALS, HELDOUT, cfg)
  reasons = {r["id"]: r["reason"] for r in rejected}
  return {r["id"] for r in kept}, reasons, report


GOOD = rec("a-keep", "A", "आरती कितने समय तक चलती है?", "गंगा आरती लगभग पैंतालीस मिनट तक चलती है।")


def test_text_keys_ignore_matras_punctuation_and_word_order():
  base = text.loose_key("आरती में कितने पुजारी भाग लेते हैं?")
  assert text.loose_key("आरती मे कितने पुजारि भाग लेते है") == base  # ि/ी, ें/े, no punctuation
  assert text.loose_key("कितने पुजारी आरती में भाग लेते हैं।") == base  # word order
  assert text.loose_key("क़िला कहाँ है") == text.loose_key("किला कहा है")  # nukta, anusvara
  assert text.loose_key("घाट पर नाव कब मिलती है?") != base
  assert devanagari_ratio("गंगा आरती") == 1.0 and devanagari_ratio("Ganga आरती") < 0.6
  assert text.split_sentences("एक। दो? तीन! 4.5 किमी") == ["एक", "दो", "तीन", "4.5 किमी"]


def test_language_and_length_filters():
  records = [GOOD,
             rec("a-en", "A", "How long does the aarti last?", "The aarti lasts about forty five minutes."),
             rec("a-short", "A", "आरती कितनी लंबी?", "पैंतालीस मिनट"),
             rec("a-long", "A", "आरती कितनी देर चलती है?", "गंगा आरती लगभग पैंतालीस मिनट तक चलती है। " * 12)]
  kept, reasons, _ = run(records)
  assert kept == {"a-keep"}
  assert reasons == {"a-en": "not_hindi_question", "a-short": "too_short", "a-long": "too_long"}


def test_grounding_keeps_supported_and_drops_invented_answers():
  records = [GOOD, rec("a-boat", "A", "आरती कैसे देखी जा सकती है?", "आरती नाव से भी देखी जा सकती है।"),
             rec("a-made-up", "A", "आरती में कौन से वाद्य बजते हैं?", "आरती में विदेशी संगीतकार ढोल और गिटार बजाते हैं।")]
  kept, reasons, _ = run(records)
  assert kept == {"a-keep", "a-boat"}
  assert reasons == {"a-made-up": "unsupported_entity"}  # संगीतकार, ढोल, गिटार: uncommon words the context lacks
  assert faithful.grounding_score(GOOD["answer"], CTX) > 0.6 > faithful.grounding_score(records[2]["answer"], CTX)


def test_near_duplicates_differing_in_matras_punctuation_word_order_across_teachers():
  q, a = "आरती में कितने पुजारी भाग लेते हैं?", "आरती में सात पुजारी भाग लेते हैं।"
  records = [rec("a-1", "A", q, a),
             rec("b-matra", "B", "आरती मे कितने पुजारि भाग लेते है", "आरती मे सात पुजारी भाग लेते हैं"),
             rec("b-order", "B", "कितने पुजारी आरती में भाग लेते हैं?", "सात पुजारी आरती में भाग लेते हैं।"),
             rec("a-exact", "A", q + " ", a.replace("।", "")),  # same words as a-1
             rec("b-other", "B", "आरती देखने के लिए क्या साधन है?", "आरती देखने के लिए नाव से भी जाया जा सकता है।")]
  kept, reasons, _ = run(records)
  assert kept == {"a-1", "b-other"}
  assert reasons == {"b-matra": "duplicate_near", "b-order": "duplicate_near", "a-exact": "duplicate_exact"}


def test_same_frame_different_interrogative_is_not_a_duplicate():
  frame = "वाराणसी में हर दिन होने वाली प्रसिद्ध शाम की भव्य गंगा आरती {} शुरू होती है?"
  q_when, q_where = frame.format("कब"), frame.format("कहाँ")
  grams = [text.char_ngrams(text.loose_key(q), 3) for q in (q_when, q_where)]
  assert text.jaccard(*grams) >= 0.7  # the loose keys alone would merge them
  assert text.question_type(q_when) == {"when"} and text.question_type(q_where) == {"where"}
  assert text.question_type("आरती मे कितनि देर लगति है") == text.question_type("आरती में कितनी देर लगती है?")
  records = [rec("a-when", "A", q_when, "गंगा आरती हर शाम सूर्यास्त के बाद शुरू होती है।"),
             rec("b-where", "B", q_where, "गंगा आरती दशाश्वमेध घाट पर शुरू होती है।")]
  kept, reasons, report = run(records)
  assert kept == {"a-when", "b-where"} and reasons == {} and report["agreement"] == {}


def test_duplicates_of_original_data_and_across_contexts():
  records = [rec("a-orig", "A", "गंगा आरती कहाँ होती है", "गंगा आरती दशाश्वमेध घाट पर होती है"),
             rec("b-orig-near", "B", "गंगा आरती कहां होति है?", "दशाश्वमेध घाट पर गंगा आरती होती है।"),
             rec("b-orig-conflict", "B", "गंगा आरती कहा होती है?", "गंगा आरती नाव पर होती है।"),
             GOOD, rec("z-other-ctx", "Z", GOOD["question"], GOOD["answer"], ctx=CTX + " नया वाक्य।")]
  kept, reasons, _ = run(records)
  assert kept == {"a-keep"}
  assert reasons == {"a-orig": "duplicate_exact", "b-orig-near": "duplicate_near",
                     "b-orig-conflict": "conflict", "z-other-ctx": "duplicate_exact"}
  kept, reasons, _ = run(records, against_original=False)
  assert kept == {"a-orig", "a-keep"}
  assert reasons["b-orig-near"] == "duplicate_near" and reasons["z-other-ctx"] == "duplicate_exact"


def test_conflicting_teachers_keep_best_grounded_or_drop_all():
  records = [rec("a-7", "A", "आरती में कितने पुजारी भाग लेते हैं?", "आरती में सात पुजारी भाग लेते हैं।"),
             rec("b-5", "B", "आरती मे कितने पुजारी भाग लेते है?", "आरती में पाँच पुजारी भाग लेते हैं।"),
             GOOD]
  kept, reasons, report = run(records)
  assert kept == {"a-7", "a-keep"} and reasons == {"b-5": "unsupported_number"}  # पाँच is not in the context
  assert report["agreement"] == {"A|B": {"shared_questions": 1, "disagree": 1, "agree_rate": 0.0}}
  [group] = report["conflicts"]
  assert group["kept"] == "a-7" and {m["id"]: m["supported"] for m in group["members"]} == {"a-7": True, "b-5": False}
  kept, reasons, _ = run(records, conflict_policy="drop_all")
  assert kept == {"a-keep"} and reasons == {"a-7": "conflict", "b-5": "unsupported_number"}
  # plain token F1 would call these two answers the same; the answer-beyond-question F1 does not
  assert text.token_f1(text.content_tokens(records[0]["answer"]), text.content_tokens(records[1]["answer"])) > 0.7
  assert text.answer_agreement(records[0]["question"], records[0]["answer"],
                               records[1]["question"], records[1]["answer"]) == 0.0


def test_decontamination_against_heldout_questions_and_text():
  records = [GOOD,
             # copied from test2 onto a training context
             rec("a-test2", "A", "भगवान बुद्ध ने पहला उपदेश कहाँ दिया था?", "भगवान बुद्ध ने अपना पहला उपदेश सारनाथ में दिया था।"),
             # a new question whose answer copies a test2 sentence (9 words) its own context lacks
             rec("a-leak", "A", "घाट के पास कौन सा स्थान प्रसिद्ध है?", "यहाँ भगवान बुद्ध ने अपना पहला उपदेश दिया था।"),
             # shares a 10-word sentence with a val context, but its own context has it too: kept
             rec("a-shared", "A", "आरती में दीपक कौन लेकर चलते हैं?", "इसमें सात पुजारी बड़े दीपकों के साथ भाग लेते हैं।")]
  kept, reasons, report = run(records)
  assert kept == {"a-keep", "a-shared"}
  assert reasons == {"a-test2": "contaminated", "a-leak": "contaminated"}
  details = {e["id"]: e["detail"] for e in report["per_reason"]["contaminated"]["examples"]}
  assert "test2:t2-1" in details["a-test2"]


class FakeJudge:
  name, model = "judge", "fake"

  def __init__(self, verdicts):
    self.verdicts, self.seen = verdicts, []

  def generate(self, batch, params):
    out = []
    for messages in batch:
      question = messages[1]["content"].split("प्रश्न: ")[1].split("\n")[0]
      self.seen.append(question)
      out.append(self.verdicts[question])
    return out


def test_llm_judge_and_parse_failure_policy():
  q_yes, q_no, q_bad = "आरती कितने समय तक चलती है?", "आरती कैसे देखी जा सकती है?", "आरती कहाँ से देखी जा सकती है?"
  records = [rec("j-yes", "A", q_yes, "गंगा आरती लगभग पैंतालीस मिनट तक चलती है।"),
             rec("j-no", "A", q_no, "आरती नाव से भी देखी जा सकती है।"),
             rec("j-bad", "B", q_bad, "आरती देखने के लिए नाव से भी जाया जा सकता है।"),
             rec("j-en", "B", "What is it?", "It is the aarti.")]
  verdicts = {q_yes: '{"verdict": "yes"}', q_no: '```json\n{"verdict": "no", "reason": "अधूरा"}\n```',
              q_bad: "मुझे नहीं पता"}
  cfg = gen.default_config().curate
  cfg.judge.enabled = True
  cfg.judge.teacher = "J"
  judge = FakeJudge(verdicts)
  kept, rejected, _ = curate_records(records, ORIGINALS, HELDOUT, cfg, {"J": judge})
  assert sorted(judge.seen) == sorted([q_yes, q_no, q_bad])  # filtered pairs never reach the judge
  assert {r["id"] for r in kept} == {"j-yes", "j-bad"}
  assert {r["id"]: r["reason"] for r in rejected} == {"j-no": "judge_rejected", "j-en": "not_hindi_question"}
  curation = next(r for r in kept if r["id"] == "j-yes")["provenance"]["curation"]
  assert curation["judge"] is True and curation["judged_by"] == "J"
  cfg.judge.on_parse_failure = "drop"
  kept, rejected, _ = curate_records(records, ORIGINALS, HELDOUT, cfg, {"J": FakeJudge(verdicts)})
  assert {r["id"] for r in kept} == {"j-yes"}
  with pytest.raises(ValueError, match=r"no backend for judge\(s\) \['J'\]"):
    curate_records(records, ORIGINALS, HELDOUT, cfg, None)


def write_teacher_file(path, records):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def test_curate_merges_shards_writes_outputs_and_is_deterministic(tmp_path):
  c = gen.default_config()
  c.out_dir = str(tmp_path)
  c.teachers.A = gen.teacher("openai", "m", base_url="http://127.0.0.1:1/v1")
  c.teachers.B = gen.teacher("openai", "m", base_url="http://127.0.0.1:1/v1")
  a_recs = [GOOD, rec("a-7", "A", "आरती में कितने पुजारी भाग लेते हैं?", "आरती में सात पुजारी भाग लेते हैं।"),
            rec("a-en", "A", "How long?", "Forty five minutes, roughly.")]
  write_teacher_file(tmp_path / "A.shard-0-of-2.jsonl", a_recs[:2])
  write_teacher_file(tmp_path / "A.shard-1-of-2.jsonl", a_recs[2:])
  write_teacher_file(tmp_path / "B.shard-0-of-3.jsonl",
                     [rec("b-5", "B", "आरती मे कितने पुजारी भाग लेते है?", "आरती में पाँच पुजारी भाग लेते हैं।")])
  (tmp_path / "A.shard-0-of-2.done.jsonl").write_text("not a record file\n")  # must not be read as data
  report = gen.curate(c, originals=ORIGINALS, heldout=HELDOUT)
  out = tmp_path / "curated"
  kept = [json.loads(l) for l in (out / "synthetic.jsonl").read_text().splitlines()]
  rejected = [json.loads(l) for l in (out / "rejected.jsonl").read_text().splitlines()]
  assert [r["id"] for r in kept] == ["a-7", "a-keep"]
  assert {r["id"]: r["reason"] for r in rejected} == {"a-en": "not_hindi_question", "b-5": "unsupported_number"}
  assert set(kept[0]) >= {"id", "domain", "context", "question", "answer", "source", "provenance"}
  assert report["per_teacher"]["A"]["input"] == 3 and report["per_teacher"]["A"]["kept"] == 2
  assert report["per_teacher"]["B"]["rejected"]["unsupported_number"] == 1 and len(report["conflicts"]) == 1
  assert report["inputs"]["missing_shards"] == {"A": [], "B": ["shard 1/3", "shard 2/3"]}
  assert json.loads((out / "report.json").read_text())["totals"] == {"input": 4, "kept": 2, "rejected": 2}
  md = (out / "report.md").read_text()
  assert "| A | 3 | 2 |" in md and "### unsupported_number (1)" in md and "b-5" in md
  assert "## Conflict groups (1)" in md and "kept `a-7`" in md
  first = {f: (out / f).read_bytes() for f in ("synthetic.jsonl", "rejected.jsonl", "report.json", "report.md")}
  gen.curate(c, originals=ORIGINALS, heldout=HELDOUT)
  assert first == {f: (out / f).read_bytes() for f in first}
  assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_bad_teacher_file_names_file_and_line(tmp_path):
  c = gen.default_config()
  c.out_dir = str(tmp_path)
  c.teachers.A = gen.teacher("openai", "m")
  (tmp_path / "A.jsonl").write_text(json.dumps(GOOD, ensure_ascii=False) + "\n{broken\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"A\.jsonl:2"):
    gen.curate(c, originals=ORIGINALS, heldout=HELDOUT)
  (tmp_path / "A.jsonl").write_text('{"id": "x", "context": "c"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"A\.jsonl:1: record 'x' lacks"):
    gen.curate(c, originals=ORIGINALS, heldout=HELDOUT)


def test_context_ids_match_between_synthesis_and_curation():
  assert context_id("Ganga Aarti", CTX) == context_id("Ganga Aarti", "  " + CTX.replace(" ", "  "))
  assert context_id("Ganga Aarti", CTX) != context_id("Museum", CTX)
