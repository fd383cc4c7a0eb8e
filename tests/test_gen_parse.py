"""Teacher-output parsing on messy outputs, judge verdicts, and prompt building."""
from gen import prompts
from gen.parse import parse_pairs, parse_verdict

Q1, A1 = "गंगा आरती कब होती है?", "गंगा आरती हर शाम सूर्यास्त के बाद होती है।"
Q2, A2 = "आरती कहाँ होती है?", "आरती दशाश्वमेध घाट पर होती है।"
Q3 = "आरती कितनी देर चलती है?"


def test_fenced_json_with_prose_before_and_after():
  text = (f'ज़रूर! यहाँ आपके प्रश्न हैं:\n```json\n[{{"question": "{Q1}", "answer": "{A1}"}},\n'
          f' {{"question": "{Q2}", "answer": "{A2}"}}]\n```\nआशा है इससे मदद मिलेगी। [नोट: सब संदर्भ से]')
  p = parse_pairs(text)
  assert p.status == "ok"
  assert p.pairs == [(Q1, A1), (Q2, A2)]


def test_unfenced_json_with_trailing_text_and_trailing_comma():
  text = f'उत्तर: [{{"question": "{Q1}", "answer": "{A1}"}},] -- समाप्त {{बाकी}}'
  assert parse_pairs(text).pairs == [(Q1, A1)]


def test_truncated_list_salvages_complete_objects():
  text = (f'[{{"question": "{Q1}", "answer": "{A1}"}}, {{"question": "{Q2}", "answer": "{A2}"}}, '
          f'{{"question": "{Q3}", "answer": "आरती लगभग पैंता')
  p = parse_pairs(text)
  assert p.status == "salvaged"
  assert p.pairs == [(Q1, A1), (Q2, A2)]


def test_braces_inside_strings_do_not_confuse_salvage():
  text = f'[{{"question": "{Q1} {{x}}", "answer": "{A1} }}"}}, {{"question": "{Q2}", "ans'
  assert parse_pairs(text).pairs == [(Q1 + " {x}", A1 + " }")]


def test_wrong_keys_single_object_and_wrapper():
  p = parse_pairs(f'[{{"q": "{Q1}", "a": "{A1}"}}, {{"Prashn": "{Q2}", "Uttar": "{A2}"}}, {{"प्रश्न": "{Q3}"}}]')
  assert p.pairs == [(Q1, A1), (Q2, A2)]  # the object without an answer is dropped
  assert parse_pairs(f'{{"question": "{Q1}", "answer": "{A1}"}}').pairs == [(Q1, A1)]
  assert parse_pairs(f'{{"pairs": [{{"question": "{Q1}", "answer": "{A1}"}}]}}').pairs == [(Q1, A1)]


def test_numbered_and_labelled_lists():
  text = (f"यहाँ प्रश्न-उत्तर हैं:\n1. प्रश्न: {Q1}\n   उत्तर: {A1}\n2. प्रश्न: {Q2} उत्तर: {A2}\n\n"
          "धन्यवाद! उत्तर प्रदेश का यह शहर सुंदर है।")
  p = parse_pairs(text)
  assert p.status == "salvaged"
  assert p.pairs == [(Q1, A1), (Q2, A2)]
  p = parse_pairs(f"**Q1:** {Q1}\n**A1:** {A1}\n**Q2:** {Q2}\n**A2:** {A2}")
  assert p.pairs == [(Q1, A1), (Q2, A2)]


def test_markdown_tables_with_and_without_a_header():
  table = f"| # | प्रश्न | उत्तर |\n|---|---|---|\n| 1 | {Q1} | **{A1}** |\n| 2 | {Q2} | {A2} |\n"
  assert parse_pairs("तालिका:\n\n" + table).pairs == [(Q1, A1), (Q2, A2)]
  assert parse_pairs(f"| {Q1} | {A1} |\n| {Q2} | {A2} |").pairs == [(Q1, A1), (Q2, A2)]
  assert parse_pairs(f"| प्रश्न | उत्तर |\n|:--|:--|\n| {Q1} | |").dropped == {"empty_answer": 1}


def test_abbreviated_hindi_labels():
  assert parse_pairs(f"प्र. {Q1}\nउ. {A1}\n\nप्र. {Q2}\nउ. {A2}").pairs == [(Q1, A1), (Q2, A2)]
  assert parse_pairs(f"प्र.१ {Q1}\nउ.१ {A1}\nप्र.२ {Q2}\nउ.२ {A2}").pairs == [(Q1, A1), (Q2, A2)]
  assert parse_pairs(f"प्र० {Q1}\nउ० {A1}").pairs == [(Q1, A1)]


def test_numbered_or_bold_questions_with_unlabelled_answers():
  text = f"यहाँ प्रश्न हैं।\n\n**1. {Q1}**\n{A1}\n\n**{Q2}**\n{A2}\n```"
  assert parse_pairs(text).pairs == [(Q1, A1), (Q2, A2)]
  assert parse_pairs(f"1. {Q1}\n{A1}\n2) {Q2}\n{A2}").pairs == [(Q1, A1), (Q2, A2)]
  assert parse_pairs(f"- {Q1}\n  {A1}\n  दूसरी पंक्ति।").pairs == [(Q1, A1 + " दूसरी पंक्ति।")]


def test_json_lines_inner_quotes_raw_newlines_and_glued_fences():
  lines = f'{{"question": "{Q1}", "answer": "{A1}"}}\n{{"question": "{Q2}", "answer": "{A2}"}}'
  assert parse_pairs(lines).pairs == [(Q1, A1), (Q2, A2)]
  cut = parse_pairs(lines + f'\n{{"question": "{Q3}", "answer": "आरती लगभग')
  assert cut.pairs == [(Q1, A1), (Q2, A2)] and cut.dropped == {"truncated": 1}  # never completed by repair
  quoted = f'[{{"question": "आरती में "दीपक" कौन उठाते हैं?", "answer": "सात "युवा" पुजारी।"}}]'
  assert parse_pairs(quoted).pairs == [('आरती में "दीपक" कौन उठाते हैं?', 'सात "युवा" पुजारी।')]
  newline = f'```json\n[{{"question": "{Q1}", "answer": "गंगा आरती हर शाम\nसूर्यास्त के बाद होती है।"}}]```'
  assert parse_pairs(newline).pairs == [(Q1, A1)]
  assert parse_pairs(f"प्रश्न: {Q1}\nउत्तर: {A1}```").pairs == [(Q1, A1)]


def test_garbage_and_empty():
  for text in ("मुझे खेद है, मैं यह नहीं कर सकता।", "", None, "[1, 2, 3]", '{"foo": "bar"}'):
    p = parse_pairs(text)
    assert (p.pairs, p.status) == ([], "garbage"), text


def test_verdicts():
  assert parse_verdict('```json\n{"verdict": "yes", "reason": "ठीक"}\n```') is True
  assert parse_verdict('मेरा निर्णय: {"verdict": "नहीं", "reason": "गलत संख्या"}') is False
  assert parse_verdict('{"verdict": false}') is False
  assert parse_verdict("शायद") is None
  assert parse_verdict('{"verdict": "maybe"}') is None


def test_prompt_messages_are_hindi_few_shot_and_hashed():
  pool = [("c1", "प्रश्न एक?", "उत्तर एक।"), ("c2", "प्रश्न दो?", "उत्तर दो।"), ("c3", "प्रश्न तीन?", "उत्तर तीन।")]
  ex_a = prompts.pick_examples(pool, 2, seed="0:c1:0", exclude_context="c1")
  assert ex_a == prompts.pick_examples(pool, 2, seed="0:c1:0", exclude_context="c1")  # seeded
  assert len(ex_a) == 2 and ("प्रश्न एक?", "उत्तर एक।") not in ex_a  # own context's QA excluded
  msgs = prompts.build_messages("Ganga Aarti", "संदर्भ का पाठ।", ex_a, 4, ["पुराना प्रश्न?"])
  assert [m["role"] for m in msgs] == ["system", "user"]
  user = msgs[1]["content"]
  assert "संदर्भ का पाठ।" in user and "4 नए प्रश्न-उत्तर" in user and "- पुराना प्रश्न?" in user
  assert '"question"' in user and ex_a[0][0] in user and "JSON" in user
  assert prompts.template_hash() == prompts.template_hash() and len(prompts.template_hash()) == 64
  assert prompts.template_hash() != prompts.judge_template_hash()
  judge = prompts.build_judge_messages("संदर्भ।", "प्रश्न?", "उत्तर।")
  assert '"verdict"' in judge[1]["content"] and "प्रश्न: प्रश्न?" in judge[1]["content"]
