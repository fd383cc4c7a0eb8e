"""parse + curate on the labelled dev set of messy teacher outputs (tests/data/curation_dev/).

163 hand-written Hindi pairs in 32 outputs of five teachers over eleven contexts (eight places not in
data/, two of them held out: never inspected while choosing rules), in 24 formats: JSON (fenced,
wrapped, trailing commas, truncated, unescaped inner quotes, raw line breaks, JSON lines, a fence
glued to the end), Python literals, numbered प्रश्न/उत्तर text (also cut mid-answer), markdown,
Q1/A1 and प्र./उ. labels, markdown tables, bold or numbered questions with unlabelled answers; numbers
as ASCII and Devanagari digits and Hindi words in contexts and answers. Each pair has a gold
keep/drop label and reason. `python tests/test_gen_curation_dev.py` prints the figures and mistakes.
"""
import collections
import json
import pathlib

import gen
from gen.curate import curate_records, pipeline_sweeps
from gen.parse import PARSE_DROPS, parse_pairs
from hinqa_jax.records import normalize_text

DEV = pathlib.Path(__file__).parent / "data" / "curation_dev"


def _key(question):
  return " ".join(normalize_text(question).split())


def evaluate(cfg=None):
  """Parse recall, keep precision/recall, accuracy and the per-pair decisions on the dev set.

  Gold pairs sharing a `same` group are one fact written twice (often with the number written
  differently): keeping exactly one of them is right, whichever it is.
  """
  from hinqa_jax.records import read_records
  originals = read_records(str(DEV / "contexts.json"))
  contexts = {r.id.removeprefix("o-"): r.context for r in originals}
  outputs = [json.loads(line) for line in (DEV / "outputs.jsonl").read_text(encoding="utf-8").splitlines()]
  synthetic, gold, parse_drops = [], {}, collections.Counter()
  expected_drops = collections.Counter()
  found = complete = 0
  for out in outputs:
    parsed = parse_pairs(out["raw"])
    parse_drops.update(parsed.dropped)
    got = {_key(q): (q, a) for q, a in parsed.pairs}
    for g in out["gold"]:
      if g["reason"] in PARSE_DROPS:
        expected_drops[g["reason"]] += 1
        continue
      complete += 1
      rid = f"{out['teacher']}-{out['unit']}-{len(gold)}"
      gold[rid] = {**g, "split": out.get("split", "dev"), "format": out["format"]}
      if _key(g["question"]) in got:
        found += 1
        q, a = got[_key(g["question"])]
        synthetic.append({"id": rid, "domain": out["domain"], "context": contexts[out["context"]],
                          "question": q, "answer": a, "source": out["teacher"],
                          "provenance": {"finish_reason": out.get("finish_reason", "stop"),
                                         "pair_index": [_key(x) for x, _ in parsed.pairs].index(_key(q)),
                                         "pairs_in_output": len(parsed.pairs)}})
  cfg = cfg or gen.default_config().curate
  kept, rejected, report = curate_records(synthetic, originals, {}, cfg)
  decided = {r["id"]: "" for r in kept} | {r["id"]: r["reason"] for r in rejected}
  groups = collections.defaultdict(list)
  for rid, g in gold.items():
    if g.get("same"):
      groups[g["same"]].append(rid)
  for members in groups.values():  # exactly one kept: that one is the keeper, the others duplicates
    kept_ids = [rid for rid in members if decided.get(rid) == ""]
    if len(kept_ids) == 1:
      for rid in members:
        gold[rid] = {**gold[rid], "keep": rid == kept_ids[0], "reason": "" if rid == kept_ids[0] else "duplicate_near"}
  scores = {split: _scores(gold, decided, split) for split in ("all", "dev", "heldout")}
  return {**scores["all"], "splits": scores, "parse_drops": dict(parse_drops), "kept": kept,
          "expected_parse_drops": dict(expected_drops), "decided": decided, "gold": gold, "rejected": rejected,
          "report": report, "formats": {o["format"] for o in outputs}, "places": {o["context"] for o in outputs}}


def _scores(gold, decided, split):
  rows = {rid: g for rid, g in gold.items() if split == "all" or g["split"] == split}
  found = sum(1 for rid in rows if rid in decided)
  tp = sum(1 for rid, g in rows.items() if g["keep"] and decided.get(rid) == "")
  kept_n = sum(1 for rid in rows if decided.get(rid) == "")
  gold_keep = sum(1 for g in rows.values() if g["keep"])
  right = sum(1 for rid, g in rows.items() if rid in decided and (decided[rid] == "") == g["keep"])
  same_reason = sum(1 for rid, g in rows.items() if decided.get(rid) == g["reason"])
  return {"pairs": len(rows), "gold_keep": gold_keep, "parse_recall": found / len(rows),
          "keep_precision": tp / max(kept_n, 1), "keep_recall": tp / max(gold_keep, 1), "accuracy": right / len(rows),
          "reason_agreement": same_reason / len(rows)}


def test_dev_set_parse_recall_keep_precision_recall_and_accuracy():
  r = evaluate()
  wrong = {rid: (g["keep"], g["reason"], r["decided"].get(rid), g["question"]) for rid, g in r["gold"].items()
           if (r["decided"].get(rid) == "") != g["keep"]}
  from hinqa_jax.records import read_records
  bundled = "".join(p.read_text(encoding="utf-8") for p in (pathlib.Path(__file__).parents[1] / "data").rglob("*.json"))
  originals = read_records(str(DEV / "contexts.json"))
  new_places = [r.context for r in originals if " ".join(r.context.split()[:2]) not in bundled]  # "चुनार का", "लमही गाँव"
  assert r["pairs"] >= 150 and len(r["formats"]) >= 12 and len(new_places) >= 8, (r["pairs"], r["formats"])
  assert r["parse_recall"] >= 0.95, r["parse_recall"]
  assert r["keep_precision"] >= 0.9 and r["keep_recall"] >= 0.9, (r["keep_precision"], r["keep_recall"], wrong)
  assert r["accuracy"] >= 0.93, (r["accuracy"], wrong)
  held = r["splits"]["heldout"]  # two places never looked at while choosing rules and thresholds
  assert held["pairs"] >= 20 and held["accuracy"] >= 0.9, (held, wrong)
  assert all(x["reason"] and x["detail"] for x in r["rejected"])  # every drop with a reason
  # the parser counts every item it drops: the empty answer and the truncated last items
  assert r["parse_drops"] == r["expected_parse_drops"] == {"empty_answer": 1, "truncated": 3}
  # a line-based output cut by the length limit: its last answer is dropped as incomplete, the rest kept
  cut = [rid for rid, g in r["gold"].items() if g["format"] == "lines_truncated"]
  assert [r["decided"][rid] for rid in cut] == [""] * (len(cut) - 1) + ["incomplete_answer"]
  # every cross-teacher conflict is settled by the answer the context supports
  conflicts = r["report"]["conflicts"]
  assert len(conflicts) >= 8
  for group in conflicts:
    gold_keep = [m["id"] for m in group["members"] if r["gold"][m["id"]]["keep"]]
    assert (group["kept"] is None) == (not gold_keep) and (group["kept"] is None or group["kept"] in gold_keep), group
  [group] = [g for g in conflicts if "दीये" in g["question"] and "देव दीपावली" in g["question"]]
  assert len(group["members"]) == 3 and sum(m["supported"] for m in group["members"]) == 1


def test_threshold_sweeps_on_the_dev_set():
  """The dry-run sweeps: per-pair thresholds from the pairs' scores, cross-pair ones by rerunning curation;
  at the configured value each equals what the real run drops."""
  r = evaluate()
  cfg = gen.default_config().curate
  sweeps = r["report"]["dry_run"]["sweeps"]
  assert set(sweeps) >= {"grounding_threshold", "new_content_threshold", "min_devanagari_ratio", "min_question_tokens",
                         "max_question_tokens", "min_answer_tokens", "max_answer_tokens", "contam_question_threshold"}
  flags = r["report"]["dry_run"]["filters"]
  assert sweeps["min_devanagari_ratio"]["values"]["0.8"]["would_drop"] == (
    len({x["id"] for reason in ("not_hindi_question", "not_hindi_answer") for x in r["rejected"] if x["reason"] == reason}))
  assert flags["not_hindi_answer"]["alone"] >= 2
  synthetic = [{k: v for k, v in x.items() if k not in ("reason", "detail")} for x in r["rejected"]] + r["kept"]
  from hinqa_jax.records import read_records
  pipeline = pipeline_sweeps(synthetic, read_records(str(DEV / "contexts.json")), {}, cfg)
  assert set(pipeline) == {"near_dup_threshold", "agree_threshold", "minhash_threshold"}
  for key, sweep in pipeline.items():
    actual = sum(x["reason"] in sweep["reasons"] for x in r["rejected"])
    assert sweep["values"][str(cfg[key])]["would_drop"] == actual, (key, sweep, actual)
  minhash = [row["would_drop"] for _, row in sorted(pipeline["minhash_threshold"]["values"].items())]
  assert minhash == sorted(minhash, reverse=True) and minhash[0] > minhash[-1]  # lower threshold, more duplicates


if __name__ == "__main__":  # print the figures and the mistakes (used to choose the thresholds)
  import sys
  cfg = gen.default_config().curate
  for arg in [a for a in sys.argv[1:] if "=" in a]:
    k, v = arg.split("=")
    setattr(cfg, k, type(cfg[k])(v))
  r = evaluate(cfg)
  for split, sc in r["splits"].items():
    print(split, {k: round(v, 3) for k, v in sc.items()})
  print(r["parse_drops"], len(r["formats"]), "formats", len(r["places"]), "places")
  for rid, g in r["gold"].items():
    if g["split"] == "heldout" and "--show-heldout" not in sys.argv:
      continue
    got = r["decided"].get(rid, "NOT PARSED")
    if (got == "") != g["keep"] or (not g["keep"] and got != g["reason"]):
      print(rid, "gold", g["keep"], g["reason"], "got", repr(got), g["question"], "->", g["answer"])
