"""Data: readers agree across formats, bad input is reported exactly, masks and packing are exact."""
import csv
import json
import logging
import re
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from hinqa_jax import config as config_lib
from hinqa_jax import packing
from hinqa_jax import tokenizer as tokenizer_lib
from hinqa_jax.examples import SYSTEM_PROMPT, build_bundled_tokenizer, build_example, encode_example, encode_prompt, resolve_template
from hinqa_jax.records import Record, devanagari_ratio, normalize_text, read_records, read_records_report, split_records

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "data" / "vatika_mini"

# (domain, context, [(id, question, answer)])
FIXTURE = [
    ("Ganga Aarti", "दशाश्वमेध घाट पर हर शाम गंगा आरती होती है। आरती सूर्यास्त के बाद लगभग सात बजे शुरू "
     "होती है और करीब पैंतालीस मिनट चलती है। सात पुजारी एक साथ दीप घुमाते हैं।",
     [("ga-1", "गंगा आरती कहाँ होती है?", "गंगा आरती दशाश्वमेध घाट पर होती है।"),
      ("ga-2", "आरती कितनी देर चलती है?", "आरती करीब पैंतालीस मिनट चलती है।"),
      ("ga-3", "आरती में कितने पुजारी होते हैं?", "आरती में सात पुजारी एक साथ दीप घुमाते हैं।")]),
    ("Cruise", "अस्सी घाट से शाम की क्रूज़ चलती है। एक व्यक्ति का टिकट पाँच सौ रुपये का है और बच्चों "
     "के लिए आधा किराया लगता है। क्रूज़ राजघाट तक जाती है।",
     [("cr-1", "क्रूज़ कहाँ से चलती है?", "क्रूज़ अस्सी घाट से चलती है।"),
      ("cr-2", "क्रूज़ का टिकट कितने का है?", "एक व्यक्ति का टिकट पाँच सौ रुपये का है।")]),
    ("Museum", "भारत कला भवन काशी हिंदू विश्वविद्यालय के परिसर में स्थित एक संग्रहालय है। यह सोमवार "
     "को बंद रहता है। यहाँ लघु चित्र और मूर्तियाँ रखी हैं।",
     [("mu-1", "भारत कला भवन कहाँ है?", "भारत कला भवन काशी हिंदू विश्वविद्यालय के परिसर में है।"),
      ("mu-2", "संग्रहालय किस दिन बंद रहता है?", "संग्रहालय सोमवार को बंद रहता है।")]),
    ("Temple", "काशी विश्वनाथ मंदिर भगवान शिव को समर्पित है। मंदिर सुबह तीन बजे खुलता है और मंगला "
     "आरती के लिए पहले से टिकट लेना पड़ता है।",
     [("te-1", "काशी विश्वनाथ मंदिर किसे समर्पित है?", "काशी विश्वनाथ मंदिर भगवान शिव को समर्पित है।"),
      ("te-2", "मंदिर कब खुलता है?", "मंदिर सुबह तीन बजे खुलता है।")]),
]


def fixture_records():
  return [Record(id=i, domain=d, context=c, question=q, answer=a)
          for d, c, qas in FIXTURE for i, q, a in qas]


def write_vatika(path, fixture=FIXTURE):
  doc = {"domains": [{"domain": d, "contexts": [{"context": c, "qas": [
      {"id": i, "question": q, "answer": a} for i, q, a in qas]}]} for d, c, qas in fixture]}
  path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
  return path


def write_jsonl(path, records, extra=None):
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      row = {"id": r.id, "domain": r.domain, "context": r.context, "question": r.question,
             "answer": r.answer, **(extra or {})}
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return path


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
  # The prompt's fixed words too, so a fixture example is short; min_frequency 1: a tiny corpus.
  texts = [c for _, c, _ in FIXTURE] + [x for r in fixture_records() for x in (r.question, r.answer)]
  texts += [SYSTEM_PROMPT, "संदर्भ: प्रश्न: उत्तर:"]
  return tokenizer_lib.train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=600,
                                       min_frequency=1)


# ------------------------------------------------------------------------------------ records


def test_every_format_gives_the_same_records(tmp_path):
  import datasets
  want = fixture_records()
  rows = [{"context": r.context, "question": r.question, "answer": r.answer, "id": r.id,
           "domain": r.domain} for r in want]
  with open(tmp_path / "f.csv", "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, ["context", "question", "answer", "id", "domain"])
    w.writeheader()
    w.writerows(rows)
  squad = {"data": [{"title": d, "paragraphs": [{"context": c, "qas": [
      {"id": i, "question": q, "answers": [{"text": a, "answer_start": 0}]} for i, q, a in qas]}]}
      for d, c, qas in FIXTURE]}
  (tmp_path / "squad.json").write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
  datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
  datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
  paths = [write_vatika(tmp_path / "v.json"), write_jsonl(tmp_path / "f.jsonl", want),
           tmp_path / "f.csv", tmp_path / "squad.json", tmp_path / "ds", tmp_path / "dd"]
  for path in paths:
    assert read_records(path) == want, path
  assert split_records(paths[0]) == want


def test_synthetic_jsonl_keeps_source_and_provenance(tmp_path):
  prov = {"teacher": "qwen", "context_id": "ga", "prompt_hash": "ab12"}
  path = write_jsonl(tmp_path / "syn.jsonl", fixture_records()[:2], {"source": "qwen", "provenance": prov})
  got = read_records(path)
  assert [r.source for r in got] == ["qwen", "qwen"]
  assert got[0].meta == {"provenance": prov}


def test_datasetdict_without_train_names_its_splits(tmp_path):
  import datasets
  ds = datasets.Dataset.from_list([{"id": "a", "context": "क", "question": "ख?", "answer": "ग।"}])
  datasets.DatasetDict({"validation": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
  with pytest.raises(ValueError, match=r"dd.*no 'train' split.*\['test', 'validation'\]"):
    read_records(tmp_path / "dd")


def test_nfc_and_whitespace_normalisation(tmp_path):
  decomposed = "\u0928\u093c"  # न + nukta; NFC composes it to ऩ (U+0929)
  assert normalize_text(f"  {decomposed}\u00a0 \n\tक  ") == "\u0929 क"
  fixture = [("Kund", f"दुर्गा  कुंड\nमें {decomposed}ाव है।", [("k1", f"{decomposed}ाव?", "हाँ, है।")])]
  (rec,) = read_records(write_vatika(tmp_path / "v.json", fixture))
  assert rec.context == "दुर्गा कुंड में \u0929ाव है।" and rec.question == "\u0929ाव?"


def test_bad_files_raise_naming_the_file(tmp_path):
  (tmp_path / "notjson.json").write_text("{\"domains\": [", encoding="utf-8")
  with pytest.raises(ValueError, match=r"notjson\.json: not valid JSON.*line 1"):
    read_records(tmp_path / "notjson.json")
  (tmp_path / "shape.json").write_text('{"items": []}', encoding="utf-8")
  with pytest.raises(ValueError, match=r"shape\.json: JSON of unknown shape.*'items'"):
    read_records(tmp_path / "shape.json")
  good = json.dumps({"domains": []}).encode()
  (tmp_path / "bytes.json").write_bytes(b'{"domains":\n [], "x": "\xe0\xa4"}')
  with pytest.raises(ValueError, match=r"bytes\.json: invalid UTF-8 at byte 23 \(line 2\)"):
    read_records(tmp_path / "bytes.json")
  (tmp_path / "empty.json").write_bytes(good)
  with pytest.raises(ValueError, match=r"empty\.json: no records"):
    read_records(tmp_path / "empty.json")
  (tmp_path / "cols.csv").write_text("context,question,id\nक,ख,1\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"cols\.csv: CSV header .* lacks column\(s\) \['answer'\]"):
    read_records(tmp_path / "cols.csv")


def _bad_vatika(path):
  doc = {"domains": [{"domain": "Temple", "contexts": [{"context": "मंदिर सुबह खुलता है।", "qas": [
      {"id": "ok-1", "question": "मंदिर कब खुलता है?", "answer": "मंदिर सुबह खुलता है।"},
      {"id": "no-q", "answer": "कुछ।"},
      {"id": "empty-a", "question": "क्या?", "answer": "  \n "},
      {"id": "ok-1", "question": "फिर?", "answer": "फिर से।"},
      {"id": "ok-2", "question": "कहाँ?", "answer": "वाराणसी में।"}]}]}]}
  path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
  return path


def test_all_bad_records_reported_at_once(tmp_path):
  path = _bad_vatika(tmp_path / "bad.json")
  with pytest.raises(ValueError) as err:
    read_records(path, strict=True)
  msg = str(err.value)
  assert msg.startswith(f"{path}: 3 bad record(s)")
  assert "qas[1] (id 'no-q'): no question" in msg
  assert "qas[2] (id 'empty-a'): empty answer" in msg
  assert "qas[3] (id 'ok-1'): duplicate id (first at domains[0].contexts[0].qas[0])" in msg


def test_skip_mode_returns_good_records_and_the_problems(tmp_path):
  path = _bad_vatika(tmp_path / "bad.json")
  assert [r.id for r in read_records(path, strict=False)] == ["ok-1", "ok-2"]
  records, problems = read_records_report(path)
  assert [r.id for r in records] == ["ok-1", "ok-2"]
  assert [(p.record_id, p.reason.split(" (")[0]) for p in problems] == [
      ("no-q", "no question"), ("empty-a", "empty answer"), ("ok-1", "duplicate id")]
  assert all(p.file == str(path) for p in problems)


def test_jsonl_bad_lines_by_line_number(tmp_path):
  good = json.dumps({"id": "a", "context": "क", "question": "ख?", "answer": "ग।"}, ensure_ascii=False)
  path = tmp_path / "syn.jsonl"
  path.write_bytes(b"\n".join([good.encode(), b"{not json", b'{"id": "b", "context": "\xff"}',
                               b'["a list"]', b'{"id": "c", "context": "k", "question": "q"}']) + b"\n")
  records, problems = read_records_report(path)
  assert [r.id for r in records] == ["a"]
  assert [str(p) for p in problems] == [
      "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
      "line 3: invalid UTF-8 at byte 24 of the line: invalid start byte",
      "line 4: not a JSON object", "line 5 (id 'c'): no answer"]
  with pytest.raises(ValueError, match=r"syn\.jsonl: 4 bad record\(s\)(.|\n)*line 5 \(id 'c'\)"):
    read_records(path)


def test_non_devanagari_is_a_warning_with_counts(tmp_path, caplog):
  fixture = [("General", "वाराणसी", [("en-1", "Where is the ghat?", "It is near the river."),
                                     ("hi-1", "घाट कहाँ है?", "घाट नदी के पास है।")])]
  with caplog.at_level(logging.WARNING):
    records = read_records(write_vatika(tmp_path / "mixed.json", fixture))
  assert len(records) == 2
  assert "1 of 2 records" in caplog.text and "en-1" in caplog.text and "hi-1" not in caplog.text
  assert devanagari_ratio("घाट ghat") == pytest.approx(3 / 7)  # घ ा ट against g h a t


def test_devanagari_ratio_matches_the_unicode_script_property():
  """One meaning for the reader and curation, checked against Unicode's own Script_Extensions data (the
  `regex` module): characters whose scripts include Devanagari (letters, vowel signs, digits, dandas)
  against letters of other scripts; 0.0 for text with neither."""
  import regex
  deva, letter = regex.compile(r"\p{scx=Devanagari}"), regex.compile(r"\p{L}")

  def reference(text):
    n_deva = sum(bool(deva.match(c)) for c in text)
    n_other = sum(bool(letter.match(c)) and not deva.match(c) for c in text)
    return n_deva / (n_deva + n_other) if n_deva + n_other else 0.0

  texts = ["घाट ghat", "गंगा आरती।", "Ganga आरती", "१४ घाट॥", "14 ghats!", "বাংলা घाट", "क़िला (Qila)",
           "दशाश्वमेध घाट पर गंगा आरती शाम 7 बजे होती है।", "", "123 ?", "।", "Zoë Café"]
  for text in texts:
    assert devanagari_ratio(text) == pytest.approx(reference(text)), text
  assert devanagari_ratio("123 ?") == 0.0 and devanagari_ratio("") == 0.0  # no evidence of Hindi


# ------------------------------------------------------------------------------------ prompts


def test_chat_example_layout_and_mask(tok):
  rec = fixture_records()[0]
  tokens, mask = encode_example(tok, rec, "auto", 512)
  user = f"संदर्भ: {rec.context}\nप्रश्न: {rec.question}"
  head = (f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYSTEM_PROMPT}<|eot_id|>"
          f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")
  assert tok.decode(tokens) == head + rec.answer + "<|eot_id|>"
  prompt = encode_prompt(tok, rec, "chat")
  assert tok.decode(prompt) == head and tokens[:len(prompt)] == prompt
  assert mask == [0] * len(prompt) + [1] * (len(tokens) - len(prompt))
  assert tok.decode([t for t, m in zip(tokens, mask) if m]) == rec.answer + "<|eot_id|>"
  assert tokens.count(tok.bos_token_id) == 1


def test_mask_with_llama31_style_system_header(tok):
  """Llama-3.1's own template puts a date header before the system prompt; the mask still holds."""
  tok31 = tokenizer_lib.load_tokenizer(tok.name_or_path)
  tok31.chat_template = tokenizer_lib.CHAT_TEMPLATE.replace(
      "{%- for message in messages %}",
      "{%- set system = messages[0]['content'] %}{%- set messages = messages[1:] %}"
      "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
      "Today Date: 26 Jul 2024\\n\\n' + system + '<|eot_id|>' }}{%- for message in messages %}")
  rec = fixture_records()[4]
  tokens, mask = encode_example(tok31, rec, "auto", 512)
  assert "Today Date: 26 Jul 2024\n\n" + SYSTEM_PROMPT + "<|eot_id|>" in tok.decode(tokens)
  assert tok.decode([t for t, m in zip(tokens, mask) if m]) == rec.answer + "<|eot_id|>"
  assert tokens[:-sum(mask)] == encode_prompt(tok31, rec)


def test_plain_template_for_tokenizers_without_chat_template(tok):
  rec = fixture_records()[3]
  tok_plain = tokenizer_lib.load_tokenizer(tok.name_or_path)
  tok_plain.chat_template = None
  assert resolve_template(tok_plain, "auto") == "plain"
  with pytest.raises(ValueError, match="no chat_template"):
    resolve_template(tok_plain, "chat")
  tokens, mask = encode_example(tok_plain, rec, "auto", 512)
  prompt = encode_prompt(tok_plain, rec, "plain")
  assert tok.decode(prompt) == f"<|begin_of_text|>संदर्भ: {rec.context}\nप्रश्न: {rec.question}\nउत्तर:\n"
  assert tokens[:len(prompt)] == prompt and tokens[-1] == tok.eos_token_id
  assert tok.decode([t for t, m in zip(tokens, mask) if m]) == rec.answer + "<|end_of_text|>"
  assert sum(mask[:len(prompt)]) == 0


def test_long_context_is_truncated_never_question_or_answer(tok):
  rec = fixture_records()[1]
  long = Record(**{**rec.__dict__, "context": " ".join([rec.context] * 20)})
  full = build_example(tok, long, "chat", 10_000)
  ex = build_example(tok, long, "chat", 200)
  assert full.context_tokens_dropped == 0 and len(full.tokens) > 200
  assert 190 <= len(ex.tokens) <= 200  # cut by whole words: at most a word short of the limit
  assert ex.context_tokens_dropped == len(full.tokens) - len(ex.tokens)
  text = tok.decode(ex.tokens)
  assert f"\nप्रश्न: {rec.question}<|eot_id|>" in text and text.endswith(rec.answer + "<|eot_id|>")
  assert tok.decode([t for t, m in zip(ex.tokens, ex.loss_mask) if m]) == rec.answer + "<|eot_id|>"
  with pytest.raises(ValueError, match=r"record 'ga-2'.*question and answer alone take \d+ tokens"):
    build_example(tok, long, "chat", 40)
  prompt = encode_prompt(tok, long, "chat", max_context_tokens=30)
  assert len(encode_prompt(tok, long, "chat")) > len(prompt) > len(encode_prompt(
      tok, Record(**{**rec.__dict__, "context": ""}), "chat"))


def test_stop_ids():
  class Llama31Like:
    eos_token_id = 128009
    def get_vocab(self):
      return {"<|end_of_text|>": 128001, "<|eom_id|>": 128008, "<|eot_id|>": 128009, "a": 5}
  assert tokenizer_lib.stop_ids(Llama31Like()) == [128001, 128008, 128009]


def test_tokenizer_is_deterministic_with_llama3_specials(tmp_path, tok):
  texts = [c for _, c, _ in FIXTURE]
  a = tokenizer_lib.train_tokenizer(texts, tmp_path / "a", vocab_size=400)
  b = tokenizer_lib.train_tokenizer(list(reversed(texts)), tmp_path / "b", vocab_size=400)
  assert tokenizer_lib.tokenizer_hash(a) == tokenizer_lib.tokenizer_hash(b)
  assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
  assert tokenizer_lib.tokenizer_hash(a) != tokenizer_lib.tokenizer_hash(tok)
  assert len(tok) == 600 and tok.chat_template == tokenizer_lib.CHAT_TEMPLATE
  cfg = json.loads((Path(tok.name_or_path) / "tokenizer_config.json").read_text())
  assert cfg["chat_template"] == tokenizer_lib.CHAT_TEMPLATE
  # As in Llama-3: BPE tokens, then the special tokens, then reserved ones up to the vocab size.
  for t in (tok, a):
    n_bpe = t.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    assert [t.convert_tokens_to_ids(s) for s in tokenizer_lib.SPECIAL_TOKENS] == list(range(n_bpe, n_bpe + 6))
    assert [t.convert_tokens_to_ids(f"<|reserved_special_token_{i}|>") for i in range(len(t) - n_bpe - 6)] == list(
        range(n_bpe + 6, len(t)))
  assert len(a) == 400 and a.convert_tokens_to_ids("<|reserved_special_token_0|>") is not None  # corpus exhausted
  assert tok.pad_token == "<|finetune_right_pad_id|>" and tok.eos_token == "<|end_of_text|>"
  n_bpe = tok.backend_tokenizer.get_vocab_size(with_added_tokens=False)
  assert tokenizer_lib.stop_ids(tok) == [n_bpe + 1, n_bpe + 4]


# ------------------------------------------------------------------------------------ packing


def make_config(tok, train, synthetic=(), seq_len=256, strict=False):
  c = config_lib.default_config()
  c.tokenizer.path = tok.name_or_path
  c.data.train = tuple(str(p) for p in train)
  c.data.synthetic = tuple(str(p) for p in synthetic)
  c.data.seq_len = seq_len
  c.data.strict = strict
  return ml_collections.FrozenConfigDict(c)


def check_rows(ds, tok, answers):
  """Every row: segments 1..k then padding 0, positions restart, mask decodes to the answers."""
  got = []
  batch = ds.read_rows(np.arange(ds.num_rows))
  for toks, seg, pos, mask in zip(*(batch[k] for k in packing.KEYS)):
    k = seg.max()
    n_used = int((seg > 0).sum())
    assert k >= 1 and (seg[:n_used] > 0).all() and (seg[n_used:] == 0).all()
    assert (np.diff(seg[:n_used]) >= 0).all() and set(seg[:n_used]) == set(range(1, k + 1))
    assert (toks[n_used:] == tok.pad_token_id).all() and not mask[n_used:].any()
    assert not pos[n_used:].any()
    for s in range(1, k + 1):
      idx = np.flatnonzero(seg == s)
      np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
      assert toks[idx[0]] == tok.bos_token_id
      masked = toks[idx][mask[idx] == 1]
      assert len(masked) and mask[idx][-len(masked):].all()  # one run, at the end of the segment
      text = tok.decode(masked.tolist())
      assert text.endswith("<|eot_id|>")
      got.append(text[:-len("<|eot_id|>")])
  assert sorted(got) == sorted(answers)


def test_prepare_packs_exactly_and_writes_a_manifest(tmp_path, tok, capsys):
  records = fixture_records()
  syn = write_jsonl(tmp_path / "syn.jsonl", [Record(**{**r.__dict__, "id": "s-" + r.id,
                                                           "answer": "उत्तर: " + r.answer}) for r in records],
                    {"source": "teacher-a"})
  cfg = make_config(tok, [write_vatika(tmp_path / "train.json")], [syn], seq_len=256)
  out = tmp_path / "packed"
  manifest = packing.prepare(cfg, out, rows_per_shard=2)
  assert "packing efficiency" in capsys.readouterr().out
  ds = packing.PackedDataset(out)
  assert ds.manifest == manifest and ds.seq_len == 256
  assert manifest["num_examples"] == 18 and manifest["source_counts"] == {"original": 9, "teacher-a": 9}
  assert manifest["num_shards"] == -(-ds.num_rows // 2) and len(list(out.glob("tokens-*.npy"))) == manifest["num_shards"]
  assert manifest["tokenizer_hash"] == tokenizer_lib.tokenizer_hash(tok) and manifest["template"] == "chat"
  assert manifest["skipped"] == [] and manifest["truncated_examples"] == 0
  lengths = [len(encode_example(tok, r, "chat", 256)[0]) for r in records]
  assert manifest["tokens_per_example"]["max"] >= max(lengths)
  batch = ds.read_rows(np.arange(ds.num_rows))
  assert manifest["packing_efficiency"] == pytest.approx((batch["segment_ids"] > 0).mean())
  assert all(batch[k].dtype == np.int32 and batch[k].shape == (ds.num_rows, 256) for k in packing.KEYS)
  check_rows(ds, tok, [r.answer for r in records] + ["उत्तर: " + r.answer for r in records])
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".packed")]  # no temporary dir left behind


def test_prepare_strict_stops_before_writing_and_skip_mode_reports(tmp_path, tok):
  bad = _bad_vatika(tmp_path / "bad.json")
  out = tmp_path / "packed"
  with pytest.raises(ValueError, match=r"bad\.json: domains\[0\]\.contexts\[0\]\.qas\[1\] \(id 'no-q'\): no question"):
    packing.prepare(make_config(tok, [bad], strict=True), out)
  assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".packed")]
  manifest = packing.prepare(make_config(tok, [bad], seq_len=256), out)
  assert {(s["id"], s["reason"].split(" (")[0]) for s in manifest["skipped"]} == {
      ("no-q", "no question"), ("empty-a", "empty answer"), ("ok-1", "duplicate id")}
  assert manifest["num_examples"] == 2
  # Re-preparing over an existing directory replaces it whole.
  # At 110 tokens every context is cut (an example takes 117-129, without its context 87-93).
  manifest2 = packing.prepare(make_config(tok, [write_vatika(tmp_path / "t.json")], seq_len=110), out)
  assert packing.PackedDataset(out).manifest == manifest2 and manifest2["num_examples"] == 9
  assert manifest2["truncated_examples"] == 9 and manifest2["context_tokens_dropped"] >= 9 * 7
  assert manifest2["tokens_per_example"]["max"] <= 110


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tok):
  tmp = tmp_path_factory.mktemp("packed")
  cfg = make_config(tok, [write_vatika(tmp / "train.json")], seq_len=256)
  packing.prepare(cfg, tmp / "out", rows_per_shard=3)
  return tmp / "out"


def test_batches_are_a_pure_function_of_seed_and_step(packed):
  a, b = packing.PackedDataset(packed), packing.PackedDataset(packed)
  n = a.num_rows
  assert n >= 5 and a.manifest["num_shards"] >= 2
  for step in (0, 3, 7, 11):
    x, y = a.get_batch(step, 4, seed=1), b.get_batch(step, 4, seed=1)
    for k in packing.KEYS:
      np.testing.assert_array_equal(x[k], y[k])
      assert x[k].shape == (4, 256)
  assert not np.array_equal(a.row_indices(0, n, seed=1), a.row_indices(0, n, seed=2))
  # Any positions of a step's batch (the rows one process feeds) are those rows of the global batch, read alone.
  glob = a.get_batch(5, 4, seed=3)
  for positions in ([0, 1], [2, 3], [1, 3], [0, 1, 2, 3]):
    part = a.get_batch(5, 4, seed=3, positions=np.array(positions))
    for k in packing.KEYS:
      np.testing.assert_array_equal(part[k], glob[k][positions])
  for k in packing.KEYS:
    np.testing.assert_array_equal(glob[k], a.read_rows(a.row_indices(5, 4, seed=3))[k])
  with pytest.raises(ValueError, match="batch positions 2..4 outside a batch of 4 rows"):
    a.get_batch(0, 4, seed=0, positions=np.array([2, 4]))


def test_epochs_are_permutations_and_wrap_across_batches(packed):
  ds = packing.PackedDataset(packed)
  n, bsz = ds.num_rows, 3
  flat = np.concatenate([ds.row_indices(s, bsz, seed=0) for s in range(3 * n)])  # 3*n*bsz rows
  epochs = flat.reshape(-1, n)
  for e, rows in enumerate(epochs):
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    np.testing.assert_array_equal(rows, np.random.default_rng([0, e]).permutation(n))
  assert not all(np.array_equal(epochs[0], epochs[e]) for e in range(1, len(epochs)))
  big = ds.row_indices(1, 2 * n + 1, seed=0)  # a batch larger than the data set spans epochs
  np.testing.assert_array_equal(big, flat[2 * n + 1:4 * n + 2])


def test_bundled_set_packs_as_efficiently_as_the_readme_says(tmp_path):
  rebuilt = build_bundled_tokenizer(out_dir=tmp_path / "tok")
  assert len(rebuilt) == 4096
  tok_dir = REPO / "data" / "tokenizer"
  if (tok_dir / "tokenizer.json").exists():  # the committed tokenizer is what train.json makes now
    assert tokenizer_lib.tokenizer_hash(tok_dir) == tokenizer_lib.tokenizer_hash(rebuilt), (
        "data/tokenizer is stale: rebuild it with examples.build_bundled_tokenizer()")
  tok = rebuilt
  manifest = packing.prepare(make_config(tok, [BUNDLED / "train.json"], seq_len=512), tmp_path / "p")
  # The README's figure is this run's: best-fit decreasing on train.json at seq_len 512.
  claim = re.search(r"packing is (\d+\.\d)% efficient on\s+the bundled set", (REPO / "README.md").read_text())
  assert claim, "README.md no longer states the bundled set's packing efficiency"
  assert f"{100 * manifest['packing_efficiency']:.1f}" == claim.group(1), manifest["packing_efficiency"]
  assert manifest["packing_efficiency"] >= 0.90  # and a packer that got worse fails even with the README updated
  assert manifest["skipped"] == []
  records = read_records(BUNDLED / "train.json")
  check_rows(packing.PackedDataset(tmp_path / "p"), tok, [r.answer for r in records])


def test_packed_rows_of_the_bundled_set_keep_segments_apart_in_the_model(tmp_path):
  """Each segment of a real packed row gives the logits it gives alone: no attention across segments."""
  import jax
  import jax.numpy as jnp

  from hinqa_jax import model
  from hinqa_jax.tokenizer import load_tokenizer
  tok = load_tokenizer("data/tokenizer")
  recs = read_records("data/vatika_mini/train.json")[:6]
  examples = [build_example(tok, r, "auto", 512) for r in recs]
  rows = packing.pack_examples(examples, 512, tok.pad_token_id)
  cfg = model.ModelConfig.preset("tiny", vocab_size=len(tok))
  params = model.init(cfg, jax.random.key(0))
  row = 0
  logits = np.asarray(model.forward(cfg, params, jnp.asarray(rows["tokens"][row:row + 1]),
                                    segment_ids=jnp.asarray(rows["segment_ids"][row:row + 1]),
                                    positions=jnp.asarray(rows["positions"][row:row + 1])))[0]
  segs = [s for s in np.unique(rows["segment_ids"][row]) if s]
  assert len(segs) >= 2  # the test means something only with several examples in the row
  for s in segs:
    idx = np.where(rows["segment_ids"][row] == s)[0]
    alone = np.asarray(model.forward(cfg, params, jnp.asarray(rows["tokens"][row:row + 1, idx])))[0]
    np.testing.assert_allclose(logits[idx], alone, atol=1e-5, rtol=0)
