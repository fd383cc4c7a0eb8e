"""Curation of teacher outputs: filters with a reason code per rejected pair, and a report.

Order (cheap and per-pair first, the LLM judge last):
  not_hindi, too_short, too_long -> contaminated (held-out val/test1/test2) -> ungrounded
  -> per context, questions clustered by loose-key similarity (and the same interrogatives: कब
     and कहाँ questions never merge) with the original QA as seeds:
     same question as an original (duplicate_exact/_near, or conflict if the answers disagree);
     several teachers on one question: the best grounded survives, the rest are duplicate_* when
     their answers agree and conflict when not (conflict_policy=drop_all drops the whole cluster)
  -> the same (question, answer) in another context: duplicate_exact -> judge_rejected.
Answers agree when the F1 of their content tokens beyond the questions' words reaches
agree_threshold (`text.answer_agreement`: "सात पुजारी" vs "पाँच पुजारी" conflicts although most
words match). The report counts agreement per pair of teachers, which is what mixing teachers
(the paper's M3) runs into. Deterministic: same inputs and config, same bytes out.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Any, Iterable, Mapping

from gen import backends as backends_lib
from gen import prompts
from gen.parse import parse_verdict
from gen.synthesize import context_id, field, write_atomic
from gen.text import (answer_agreement, char_ngrams, devanagari_ratio, grounding_score, jaccard, loose_key, nfc,
                      norm_tokens, question_type, word_ngrams)

REASONS = ("not_hindi", "too_short", "too_long", "contaminated", "ungrounded", "duplicate_exact",
           "duplicate_near", "conflict", "judge_rejected")


@dataclasses.dataclass
class Item:
  rec: dict
  teacher: str
  cid: str
  q: str
  a: str
  grams: set  # char n-grams of the question's loose key
  qtype: frozenset = frozenset()  # interrogatives: near-duplicates must ask the same kind of thing
  grounding: float = 0.0
  reason: str = ""
  detail: str = ""
  verdict: bool | None = None


def _exact(q: str, a: str) -> tuple[str, str]:
  return " ".join(norm_tokens(q)), " ".join(norm_tokens(a))


def _agree(qa: tuple[str, str], qb: tuple[str, str], threshold: float) -> bool:
  return answer_agreement(qa[0], qa[1], qb[0], qb[1]) >= threshold


def teacher_files(out_dir: str, names: Iterable[str]) -> dict[str, list[str]]:
  """<teacher>.jsonl and <teacher>.shard-i-of-N.jsonl files per teacher (sorted)."""
  listing = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
  return {n: [os.path.join(out_dir, f) for f in listing
              if re.fullmatch(re.escape(n) + r"(\.shard-\d+-of-\d+)?\.jsonl", f)] for n in names}


def _missing_shards(files: list[str]) -> list[str]:
  seen = collections.defaultdict(set)
  for f in files:
    m = re.search(r"\.shard-(\d+)-of-(\d+)\.jsonl$", f)
    if m:
      seen[int(m.group(2))].add(int(m.group(1)))
  return [f"shard {i}/{n}" for n, got in sorted(seen.items()) for i in range(n) if i not in got]


def load_synthetic(files: Mapping[str, list[str]]) -> list[dict]:
  """Records of every teacher file; a bad line raises naming file and line; repeated ids once."""
  out, seen = [], set()
  for teacher, paths in files.items():
    for path in paths:
      with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
          try:
            rec = json.loads(line)
            missing = [k for k in ("id", "context", "question", "answer") if not isinstance(rec.get(k), str)]
          except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{path}:{lineno}: not a JSON object ({e})") from None
          if missing:
            raise ValueError(f"{path}:{lineno}: record {rec.get('id')!r} lacks string field(s) {missing}")
          if rec["id"] not in seen:
            seen.add(rec["id"])
            out.append({**rec, "source": rec.get("source") or teacher})
  return out


class HeldOut:
  """Held-out questions (loose-key n-grams, inverted index) and word n-grams of all held-out text."""

  def __init__(self, splits: Mapping[str, Iterable[Any]], ngram: int, word_n: int):
    self.ngram, self.word_n = ngram, word_n
    self.questions: list[tuple[str, str, set]] = []  # (split, id, grams)
    self.index: dict[str, list[int]] = collections.defaultdict(list)
    self.words: set[tuple[str, ...]] = set()
    for split, records in splits.items():
      seen_ctx = set()
      for r in records:
        q, ctx = nfc(str(field(r, "question"))), nfc(str(field(r, "context")))
        if q:
          grams = char_ngrams(loose_key(q), ngram)
          for g in grams:
            self.index[g].append(len(self.questions))
          self.questions.append((split, str(field(r, "id")), grams))
          self.words |= word_ngrams(norm_tokens(q), word_n) | word_ngrams(norm_tokens(str(field(r, "answer"))), word_n)
        if ctx and ctx not in seen_ctx:
          seen_ctx.add(ctx)
          self.words |= word_ngrams(norm_tokens(ctx), word_n)

  def nearest_question(self, grams: set) -> tuple[float, str]:
    """Best Jaccard against held-out questions, from shared-gram counts (no pairwise set ops)."""
    shared = collections.Counter(i for g in grams for i in self.index.get(g, ()))
    best, where = 0.0, ""
    for i, n in sorted(shared.items()):
      score = n / (len(grams) + len(self.questions[i][2]) - n)
      if score > best:
        best, where = score, f"{self.questions[i][0]}:{self.questions[i][1]}"
    return best, where


def _pair_filters(it: Item, cfg: Any, heldout: HeldOut, ctx_words: set) -> tuple[str, str]:
  ratio = devanagari_ratio(it.q + " " + it.a)
  if ratio < cfg.min_devanagari_ratio:
    return "not_hindi", f"devanagari ratio {ratio:.2f}"
  nq, na = len(norm_tokens(it.q)), len(norm_tokens(it.a))
  if nq < cfg.min_question_tokens or na < cfg.min_answer_tokens:
    return "too_short", f"{nq} question / {na} answer tokens"
  if nq > cfg.max_question_tokens or na > cfg.max_answer_tokens:
    return "too_long", f"{nq} question / {na} answer tokens"
  score, where = heldout.nearest_question(it.grams)
  if score >= cfg.contam_question_threshold:
    return "contaminated", f"question matches held-out {where} (jaccard {score:.2f})"
  # n-grams the pair shares with held-out text count only when its own context does not explain them
  leaked = (word_ngrams(norm_tokens(it.q), cfg.contam_ngram) | word_ngrams(norm_tokens(it.a), cfg.contam_ngram))
  leaked = (leaked & heldout.words) - ctx_words
  if leaked:
    return "contaminated", f"{len(leaked)} held-out {cfg.contam_ngram}-gram(s), e.g. {' '.join(sorted(leaked)[0])!r}"
  if it.grounding < cfg.grounding_threshold:
    return "ungrounded", f"grounding F1 {it.grounding:.2f}"
  return "", ""


def _resolve_clusters(items: list[Item], originals: list[tuple[str, str, str]], cfg: Any,
                      agreement: dict) -> None:
  """Cluster one context's surviving questions and mark duplicates and conflicts."""
  clusters: list[dict] = [{"orig": o, "grams": [char_ngrams(loose_key(o[1]), cfg.ngram)],
                           "qtype": question_type(o[1]), "members": []} for o in originals]
  for it in items:
    home = next((c for c in clusters if c["qtype"] == it.qtype
                 and any(jaccard(it.grams, g) >= cfg.near_dup_threshold for g in c["grams"])), None)
    if home is None:
      home = {"orig": None, "grams": [], "qtype": it.qtype, "members": []}
      clusters.append(home)
    home["grams"].append(it.grams)
    home["members"].append(it)
  for c in clusters:
    members = c["members"]
    if c["orig"] is not None:
      ref_id, ref_q, ref_a = c["orig"]
      ref_name, rest = "original", members
    elif members:
      best = min(members, key=lambda m: (-m.grounding, m.teacher, m.rec["id"]))
      ref_id, ref_q, ref_a, ref_name = best.rec["id"], best.q, best.a, best.teacher
      rest = [m for m in members if m is not best]
    else:
      continue
    disagree = [m for m in rest if not _agree((m.q, m.a), (ref_q, ref_a), cfg.agree_threshold)]
    for m in rest:
      if m in disagree:
        m.reason, m.detail = "conflict", f"answer disagrees with {ref_name} {ref_id}"
      elif _exact(m.q, m.a) == _exact(ref_q, ref_a):
        m.reason, m.detail = "duplicate_exact", f"same as {ref_name} {ref_id}"
      else:
        m.reason, m.detail = "duplicate_near", f"same question as {ref_name} {ref_id}"
    if c["orig"] is None and disagree and cfg.conflict_policy == "drop_all":
      best.reason, best.detail = "conflict", f"teachers disagree ({len(disagree)} other answer(s))"
    answers = collections.defaultdict(list)  # source -> its answers to this question
    answers[ref_name].append((ref_q, ref_a))
    for m in rest:
      answers[m.teacher].append((m.q, m.a))
    sources = sorted(answers)
    for i, s in enumerate(sources):  # agreement statistics per pair of sources sharing a question
      for t in sources[i + 1:]:
        pair = agreement.setdefault(f"{s}|{t}", {"shared_questions": 0, "disagree": 0})
        pair["shared_questions"] += 1
        pair["disagree"] += any(not _agree(x, y, cfg.agree_threshold) for x in answers[s] for y in answers[t])


def _judge(items: list[Item], backend: backends_lib.Backend, cfg: Any, batch_size: int) -> None:
  params = backends_lib.SamplingParams(temperature=float(cfg.judge.temperature), top_p=1.0,
                                       max_tokens=int(cfg.judge.max_tokens), seed=0,
                                       json_schema=prompts.VERDICT_SCHEMA)
  for start in range(0, len(items), max(1, batch_size)):
    batch = items[start:start + max(1, batch_size)]
    outs = backends_lib.generate_safe(
      backend, [prompts.build_judge_messages(it.rec["context"], it.q, it.a) for it in batch], params)
    for it, out in zip(batch, outs):
      it.verdict = parse_verdict(out if isinstance(out, str) else None)
      if it.verdict is False:
        it.reason, it.detail = "judge_rejected", "verdict no"
      elif it.verdict is None and cfg.judge.on_parse_failure == "drop":
        it.reason = "judge_rejected"
        it.detail = "unreadable verdict" if isinstance(out, str) else f"judge failed: {out}"


def curate_records(synthetic: list[dict], originals: Iterable[Any], heldout: Mapping[str, Iterable[Any]],
                   cfg: Any, judge_backend: backends_lib.Backend | None = None,
                   judge_batch_size: int = 16) -> tuple[list[dict], list[dict], dict]:
  """Pure curation: (kept records, rejected records with reason/detail, report dict)."""
  held = HeldOut(heldout, cfg.ngram, cfg.contam_ngram)
  orig_by_ctx: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
  orig_exact: dict[tuple[str, str], str] = {}
  for r in originals:
    ctx, q, a = nfc(str(field(r, "context"))), nfc(str(field(r, "question"))), nfc(str(field(r, "answer")))
    if ctx and q and a:
      orig_by_ctx[context_id(str(field(r, "domain")), ctx)].append((str(field(r, "id")), q, a))
      orig_exact.setdefault(_exact(q, a), str(field(r, "id")))
  items, ctx_words = [], {}
  for rec in sorted(synthetic, key=lambda r: (r.get("source", ""), r["id"])):
    rec = {**rec, "context": nfc(rec["context"]), "question": nfc(rec["question"]), "answer": nfc(rec["answer"]),
           "source": rec.get("source") or "unknown"}
    cid = context_id(str(rec.get("domain", "")), rec["context"])
    if cid not in ctx_words:
      ctx_words[cid] = word_ngrams(norm_tokens(rec["context"]), cfg.contam_ngram)
    grams = char_ngrams(loose_key(rec["question"]), cfg.ngram)
    it = Item(rec, rec["source"], cid, rec["question"], rec["answer"], grams, question_type(rec["question"]))
    it.grounding = grounding_score(it.a, rec["context"])
    it.reason, it.detail = _pair_filters(it, cfg, held, ctx_words[cid])
    items.append(it)
  by_ctx = collections.defaultdict(list)
  for it in items:
    if not it.reason:
      by_ctx[it.cid].append(it)
  agreement: dict = {}
  for cid in sorted(by_ctx):
    _resolve_clusters(by_ctx[cid], orig_by_ctx.get(cid, []) if cfg.against_original else [], cfg, agreement)
  seen_exact = dict(orig_exact) if cfg.against_original else {}
  for it in items:  # the same pair again in another context
    if not it.reason:
      key = _exact(it.q, it.a)
      if key in seen_exact:
        it.reason, it.detail = "duplicate_exact", f"same pair as {seen_exact[key]}"
      else:
        seen_exact[key] = it.rec["id"]
  if cfg.judge.enabled:
    if judge_backend is None:
      raise ValueError("curate.judge.enabled is set but no judge backend was given")
    _judge([it for it in items if not it.reason], judge_backend, cfg, judge_batch_size)
  kept, rejected = [], []
  for it in items:
    curation = {"grounding": round(it.grounding, 4), "judge": it.verdict}
    rec = {**it.rec, "provenance": {**(it.rec.get("provenance") or {}), "curation": curation}}
    if it.reason:
      rejected.append({**rec, "reason": it.reason, "detail": it.detail})
    else:
      kept.append(rec)
  return kept, rejected, _report(items, agreement, cfg)


def _report(items: list[Item], agreement: dict, cfg: Any) -> dict:
  per_teacher: dict = {}
  per_reason = {r: {"count": 0, "examples": []} for r in REASONS}
  for it in items:
    t = per_teacher.setdefault(it.teacher, {"input": 0, "kept": 0, "rejected": {r: 0 for r in REASONS}})
    t["input"] += 1
    if not it.reason:
      t["kept"] += 1
      continue
    t["rejected"][it.reason] += 1
    slot = per_reason[it.reason]
    slot["count"] += 1
    if len(slot["examples"]) < cfg.examples_per_reason:
      slot["examples"].append({"id": it.rec["id"], "question": it.q, "answer": it.a, "detail": it.detail})
  for t in per_teacher.values():
    t["keep_rate"] = round(t["kept"] / t["input"], 4) if t["input"] else 0.0
  for pair in agreement.values():
    pair["agree_rate"] = round(1 - pair["disagree"] / pair["shared_questions"], 4)
  kept = sum(t["kept"] for t in per_teacher.values())
  return {"totals": {"input": len(items), "kept": kept, "rejected": len(items) - kept},
          "per_teacher": per_teacher, "per_reason": per_reason,
          "agreement": dict(sorted(agreement.items())), "thresholds": cfg.to_dict()}


def report_markdown(report: dict) -> str:
  """The report as a short Markdown page."""
  t = report["totals"]
  lines = ["# Synthetic data curation", "", f"{t['input']} pairs in, {t['kept']} kept, {t['rejected']} rejected.", "",
           "| teacher | in | kept | keep rate | " + " | ".join(REASONS) + " |",
           "|---" * (4 + len(REASONS)) + "|"]
  for name, s in sorted(report["per_teacher"].items()):
    lines.append(f"| {name} | {s['input']} | {s['kept']} | {s['keep_rate']:.2f} | "
                 + " | ".join(str(s["rejected"][r]) for r in REASONS) + " |")
  if report["agreement"]:
    lines += ["", "## Agreement on shared questions", "", "| sources | shared questions | disagree | agree rate |",
              "|---|---|---|---|"]
    lines += [f"| {k.replace('|', ' vs ')} | {v['shared_questions']} | {v['disagree']} | {v['agree_rate']:.2f} |"
              for k, v in report["agreement"].items()]
  lines += ["", "## Rejections by reason", ""]
  for reason, slot in report["per_reason"].items():
    if slot["count"]:
      lines.append(f"### {reason} ({slot['count']})")
      lines += [f"- `{e['id']}`: {e['question']} → {e['answer']} ({e['detail']})" for e in slot["examples"]]
      lines.append("")
  return "\n".join(lines) + "\n"


def _read_split(path: str) -> list:
  from hinqa_jax import data  # noqa: PLC0415 -- the reader shared with training
  return list(data.read_records(path))


def curate(config: Any, *, judge_backend: backends_lib.Backend | None = None,
           originals: Iterable[Any] | None = None, heldout: Mapping[str, Iterable[Any]] | None = None) -> dict:
  """Merge teacher (shard) files in config.out_dir, curate, write outputs; returns the report.

  `originals` / `heldout` replace reading config.data.train / val, test1, test2.
  """
  cfg = config.curate
  out_dir = cfg.out_dir or os.path.join(config.out_dir, "curated")
  files = teacher_files(config.out_dir, sorted(config.teachers.keys()))
  synthetic = load_synthetic(files)
  if originals is None:
    train = (config.data.train,) if isinstance(config.data.train, str) else tuple(config.data.train)
    originals = [r for p in train for r in _read_split(p)]
  if heldout is None:
    heldout = {s: _read_split(getattr(config.data, s)) for s in ("val", "test1", "test2") if getattr(config.data, s)}
  if cfg.judge.enabled and judge_backend is None:
    if cfg.judge.teacher not in config.teachers:
      raise ValueError(f"curate.judge.teacher {cfg.judge.teacher!r} is not one of {sorted(config.teachers.keys())}")
    judge_backend = backends_lib.make_backend(config.teachers[cfg.judge.teacher], cfg.judge.teacher)
  batch = int(config.teachers[cfg.judge.teacher].batch_size) if cfg.judge.teacher in config.teachers else 16
  kept, rejected, report = curate_records(synthetic, originals, heldout, cfg, judge_backend, batch)
  report["inputs"] = {"files": {t: [os.path.basename(p) for p in ps] for t, ps in files.items()},
                      "missing_shards": {t: _missing_shards(ps) for t, ps in files.items()},
                      "heldout": {s: len(list(r)) for s, r in heldout.items()},
                      "prompt_versions": sorted({str((r.get("provenance") or {}).get("prompt_version"))
                                                 for r in synthetic})}
  report["judge"] = {"enabled": bool(cfg.judge.enabled), "version": prompts.JUDGE_VERSION,
                     "template_hash": prompts.judge_template_hash()}
  names = {"curated": "synthetic.jsonl", "rejected": "rejected.jsonl", "json": "report.json", "md": "report.md"}
  paths = {k: os.path.join(out_dir, f) for k, f in names.items()}
  report["outputs"] = paths
  dump = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
  write_atomic(paths["curated"], dump(kept))
  write_atomic(paths["rejected"], dump(rejected))
  write_atomic(paths["json"], json.dumps(report, ensure_ascii=False, indent=1, sort_keys=True))
  write_atomic(paths["md"], report_markdown(report))
  return report
