"""The bundled set keeps the split design its README states: held-out names, kinds of contexts, counts."""
import json
import re
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "data" / "vatika_mini"
SPLITS = ("train", "val", "test1", "test2")

# The Test-2 places and what belongs only to them, as written in test2.json. README: none occurs in train,
# val or test1, so a model never reads them before Test-2.
TEST2_NAMES = (
    "रामनगर", "रामलीला", "काशी नरेश", "सारनाथ", "धमेख", "धर्मचक्र", "अशोक", "सिंह शीर्ष", "बुद्ध", "बौद्ध",
    "तुलसी मानस", "तुलसीदास", "रामचरितमानस", "भारत माता", "काशी विद्यापीठ", "कबीर", "गंगा विलास", "डिब्रूगढ़",
    "ब्रह्मपुत्र", "लोलार्क")
# An answer that opens with one of these leans on a referent only its context names.
PRONOUNS = frozenset(
    "यह ये वह वे यहाँ यहां वहाँ वहां इसे इसका इसकी इसके इसमें इससे इसी इन इनका इनकी इनके इन्हें इनमें इस उस उसका "
    "उसकी उसके उसे उसमें उन उनका उनकी उनके उन्हें".split())


def contexts(split: str) -> list[dict]:
  """[{id, domain, text (context, questions and answers), context, qas}] of one file."""
  doc = json.loads((BUNDLED / f"{split}.json").read_text(encoding="utf-8"))
  out = []
  for dom in doc["domains"]:
    for ctx in dom["contexts"]:
      cid = ctx["qas"][0]["id"].rsplit("-q", 1)[0]
      text = "\n".join([ctx["context"]] + [q[k] for q in ctx["qas"] for k in ("question", "answer")])
      out.append({"id": cid, "domain": dom["domain"], "text": text, "context": ctx["context"], "qas": ctx["qas"]})
  return out


def split_text(split: str) -> str:
  return "\n".join(c["text"] for c in contexts(split))


def readme_rows(pattern: str) -> list[tuple[str, ...]]:
  readme = (BUNDLED / "README.md").read_text(encoding="utf-8")
  return re.findall(pattern, readme, flags=re.M)


def test_test2_names_occur_in_test2_only():
  text = {s: split_text(s) for s in SPLITS}
  missing = [n for n in TEST2_NAMES if n not in text["test2"]]
  assert not missing, f"not in test2.json (misspelt?): {missing}"
  leaks = [(n, s, c["id"]) for n in TEST2_NAMES for s in SPLITS[:3] for c in contexts(s) if n in c["text"]]
  assert not leaks, f"held-out names outside test2 (name, file, context): {leaks}"


def test_readme_table_of_contexts_holds():
  """Every context outside train is in the README's table; its kind holds against train (and val, test1)."""
  rows = readme_rows(r"^\| ((?:val|test1|test2)-[a-z]+-\d\d) \| (shared|new|held out) \| (.+?) \|$")
  table = {cid: (kind, [n.strip() for n in names.split(",")]) for cid, kind, names in rows}
  assert len(table) == len(rows), "a context is listed twice"
  by_id = {c["id"]: c for s in SPLITS[1:] for c in contexts(s)}
  assert set(table) == set(by_id), f"unlisted: {sorted(set(by_id) - set(table))}, unknown: {sorted(set(table) - set(by_id))}"
  train = split_text("train")
  seen_outside_test2 = split_text("train") + split_text("val") + split_text("test1")
  wrong = []
  for cid, (kind, names) in table.items():
    assert (kind == "held out") == cid.startswith("test2-"), f"{cid}: kind {kind!r}, but test2 is held out by place"
    for name in names:
      if name not in by_id[cid]["text"]:
        wrong.append(f"{cid}: {name!r} is not in the context")
      elif kind == "shared" and name not in train:
        wrong.append(f"{cid}: {name!r} is listed as shared with train but train lacks it")
      elif kind == "new" and name in train:
        wrong.append(f"{cid}: {name!r} is listed as new but train has it")
      elif kind == "held out" and name in seen_outside_test2:
        wrong.append(f"{cid}: {name!r} is held out but train, val or test1 has it")
  assert not wrong, "\n".join(wrong)
  for split in ("val", "test1"):  # the README's role line: "N about places and topics of train, M about ones train lacks"
    kinds = [table[c["id"]][0] for c in contexts(split)]
    (shared, new), = readme_rows(rf"^\| `{split}\.json` \| .*?; (\d+) about places and topics of train, (\d+) about ones")
    assert (kinds.count("shared"), kinds.count("new")) == (int(shared), int(new)), split


def test_readme_counts_match_the_files():
  rows = readme_rows(r"^\| (\*\*Total\*\*|[A-Z][A-Za-z ]+?) \|((?: \d+ / \d+ \|){5})$")
  assert len(rows) == 11, rows  # ten domains and the total
  got = {}
  for split in SPLITS:
    for c in contexts(split):
      for key in (c["domain"], "**Total**"):
        n_ctx, n_qa = got.get((key, split), (0, 0))
        got[key, split] = (n_ctx + 1, n_qa + len(c["qas"]))
  for domain, cells in rows:
    pairs = [tuple(map(int, p)) for p in re.findall(r"(\d+) / (\d+)", cells)]
    want = dict(zip(SPLITS, pairs[:4]))
    for split in SPLITS:
      assert got.get((domain, split), (0, 0)) == want[split], (domain, split)
    assert tuple(map(sum, zip(*pairs[:4]))) == pairs[4], f"{domain}: the Total column is not the sum"


def test_no_context_or_question_repeated_across_files():
  first = {}
  for split in SPLITS:
    for c in contexts(split):
      for item in [c["context"]] + [q["question"] for q in c["qas"]]:
        assert first.setdefault(item, split) == split, f"in {first[item]} and {split}: {item}"


def test_answers_name_what_they_are_about():
  opening = [(q["id"], q["answer"]) for s in SPLITS for c in contexts(s) for q in c["qas"]
             if q["answer"].split()[0] in PRONOUNS]
  assert not opening, f"answers opening with a pronoun: {opening}"
