"""Curation of teacher outputs: filters with a reason code per rejected pair, and a report.

Order (cheap and per-pair first, the LLM judge last); every pair gets the first reason that applies:
  not_hindi_question, not_hindi_answer (Devanagari share of each field on its own), too_short,
  too_long, incomplete_answer (ends mid-phrase, or the last answer of a length-cut output without a
  sentence-final mark) -> contaminated (held-out val/test1/test2)
  -> faithfulness (gen/faithful.py): unsupported_number (a number or date the context does not
     state), unsupported_entity (a named entity it does not mention), restates_question (nothing
     new beyond the question's words, or a when/how-many/where question without that kind of
     fact), ungrounded (share of the answer's content found in its best context window)
  -> per context (gen/clusters.py), questions clustered by loose-key similarity (and the same interrogatives: कब
     and कहाँ questions never merge) with the original QA as seeds: the same question as an
     original is duplicate_* (or conflict when the answers disagree); several teachers on one
     question with disagreeing answers form a conflict group settled by the context: the answers
     whose differing facts all occur in the context (and that pass the faithfulness checks) may
     survive, the best grounded of them does; if none does, all are dropped (conflict);
     conflict_policy=drop_all drops every group with a disagreement
  -> corpus-wide near-duplicates (gen/dedup.py, MinHash LSH over normalised character n-grams,
     against the original data first): duplicate_exact / duplicate_near
  -> judge_rejected (an LLM judge that never judges its own teacher's pairs).
Answers agree when the F1 of their content tokens beyond the questions' words reaches
agree_threshold. The report counts agreement per pair of teachers and lists every conflict group.
Deterministic: same inputs and config, same bytes out.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import re
from typing import Any, Iterable, Mapping

from gen import backends as backends_lib
from gen import clusters, faithful, prompts, report as report_lib
from gen.judge import judge_assignment, judge_pairs
from gen.synthesize import context_id, field
from gen.text import char_ngrams, loose_key, norm_tokens, question_type, word_ngrams
from hinqa_jax.files import write_atomic
from hinqa_jax.records import devanagari_ratio, normalize_text, read_records

REASONS = ("not_hindi_question", "not_hindi_answer", "too_short", "too_long", "incomplete_answer", "contaminated",
           "unsupported_number",
           "unsupported_entity", "restates_question", "ungrounded", "duplicate_exact", "duplicate_near", "conflict",
           "judge_rejected")
_CHEAP = ("not_hindi_question", "not_hindi_answer", "too_short", "too_long", "incomplete_answer", "contaminated")


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
  scores: dict = dataclasses.field(default_factory=dict)  # per-check measurements (dry-run sweeps)
  flags: list = dataclasses.field(default_factory=list)  # every per-pair check that fails: (reason, detail)
  reason: str = ""
  detail: str = ""
  verdict: bool | None = None
  judged_by: str = ""  # the judge's teacher name ("" = not judged)


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
        q, ctx = normalize_text(str(field(r, "question"))), normalize_text(str(field(r, "context")))
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


def _pair_checks(it: Item, cfg: Any, heldout: HeldOut, ctx_words: set) -> list[tuple[str, str]]:
  """Every per-pair check that fails, in REASONS order (the first is the pair's reason)."""
  flags, ctx = [], it.rec["context"]
  rq, ra = devanagari_ratio(it.q), devanagari_ratio(it.a)
  nq, na = len(norm_tokens(it.q)), len(norm_tokens(it.a))
  it.scores.update(devanagari_question=rq, devanagari_answer=ra, question_tokens=nq, answer_tokens=na,
                   grounding=it.grounding)
  if rq < cfg.min_devanagari_ratio:
    flags.append(("not_hindi_question", f"question devanagari ratio {rq:.2f}"))
  if ra < cfg.min_devanagari_ratio:
    flags.append(("not_hindi_answer", f"answer devanagari ratio {ra:.2f}"))
  if nq < cfg.min_question_tokens or na < cfg.min_answer_tokens:
    flags.append(("too_short", f"{nq} question / {na} answer tokens"))
  if nq > cfg.max_question_tokens or na > cfg.max_answer_tokens:
    flags.append(("too_long", f"{nq} question / {na} answer tokens"))
  prov = it.rec.get("provenance") or {}
  last = prov.get("pair_index", -1) == prov.get("pairs_in_output", 0) - 1  # only the last answer can be cut
  why = faithful.incomplete(it.a, prov.get("finish_reason") == "length" and last)
  if why:
    flags.append(("incomplete_answer", why))
  score, where = heldout.nearest_question(it.grams)
  it.scores["heldout_question_jaccard"] = score
  # n-grams the pair shares with held-out text count only when its own context does not explain them
  leaked = (word_ngrams(norm_tokens(it.q), cfg.contam_ngram) | word_ngrams(norm_tokens(it.a), cfg.contam_ngram))
  leaked = (leaked & heldout.words) - ctx_words
  if score >= cfg.contam_question_threshold:
    flags.append(("contaminated", f"question matches held-out {where} (jaccard {score:.2f})"))
  elif leaked:
    flags.append(("contaminated", f"{len(leaked)} held-out {cfg.contam_ngram}-gram(s), "
                                  f"e.g. {' '.join(sorted(leaked)[0])!r}"))
  bad = faithful.unsupported_numbers(it.a, ctx)
  if bad:
    flags.append(("unsupported_number", "not in the context: " + ", ".join(bad)))
  bad = faithful.unsupported_entities(it.a, ctx, tuple(cfg.known_entities))
  if bad:
    flags.append(("unsupported_entity", "not in the context: " + ", ".join(bad)))
  why = faithful.restatement(it.q, it.a)
  if why:
    flags.append(("restates_question", why))
  support = faithful.new_content_support(it.q, it.a, ctx)
  it.scores["new_content_support"] = support
  if it.grounding < cfg.grounding_threshold:
    flags.append(("ungrounded", f"grounding {it.grounding:.2f} < {cfg.grounding_threshold}"))
  elif support < cfg.new_content_threshold:
    flags.append(("ungrounded", f"only {support:.2f} of what it adds beyond the question is in the context"))
  return flags


def curate_records(synthetic: list[dict], originals: Iterable[Any], heldout: Mapping[str, Iterable[Any]],
                   cfg: Any, judge_backends: Mapping[str, backends_lib.Backend] | None = None,
                   judge_batch_size: int = 16) -> tuple[list[dict], list[dict], dict]:
  """Pure curation: (kept records, rejected records with reason/detail, report dict).

  judge_backends maps judge names (config teacher names) to backends, used when cfg.judge.enabled.
  """
  items, orig_by_ctx, orig_all = _checked_items(synthetic, originals, heldout, cfg)
  agreement, conflicts = _cross_pair(items, orig_by_ctx, orig_all, cfg, judge_backends, judge_batch_size)
  reasons = {it.rec["id"]: it.reason for it in items}
  for group in conflicts:  # later passes (corpus duplicates, judge) may drop a group's survivor
    for m in group["members"]:
      m["reason"] = reasons[m["id"]]
    if group["kept"] and reasons[group["kept"]]:
      group["kept"] = None
  kept, rejected = [], []
  for it in items:
    curation = {"grounding": round(it.grounding, 4), "judge": it.verdict, "judged_by": it.judged_by}
    rec = {**it.rec, "provenance": {**(it.rec.get("provenance") or {}), "curation": curation}}
    if it.reason:
      rejected.append({**rec, "reason": it.reason, "detail": it.detail})
    else:
      kept.append(rec)
  return kept, rejected, report_lib.build(items, agreement, conflicts, cfg, REASONS)


def _checked_items(synthetic: list[dict], originals: Iterable[Any], heldout: Mapping[str, Iterable[Any]],
                   cfg: Any) -> tuple[list[Item], dict[str, list[tuple[str, str, str]]], list[tuple[str, str, str]]]:
  """The per-pair stage: every synthetic pair as an Item with its flags and first reason, and the
  originals by context and in all (id, question, answer)."""
  held = HeldOut(heldout, cfg.ngram, cfg.contam_ngram)
  orig_by_ctx: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
  orig_all = []
  for r in originals:
    ctx, q, a = (normalize_text(str(field(r, key))) for key in ("context", "question", "answer"))
    if ctx and q and a:
      orig_by_ctx[context_id(str(field(r, "domain")), ctx)].append((str(field(r, "id")), q, a))
      orig_all.append((str(field(r, "id")), q, a))
  items, ctx_words = [], {}
  for rec in sorted(synthetic, key=lambda r: (r.get("source", ""), r["id"])):
    rec = {**rec, **{key: normalize_text(rec[key]) for key in ("context", "question", "answer")},
           "source": rec.get("source") or "unknown"}
    cid = context_id(str(rec.get("domain", "")), rec["context"])
    if cid not in ctx_words:
      ctx_words[cid] = word_ngrams(norm_tokens(rec["context"]), cfg.contam_ngram)
    grams = char_ngrams(loose_key(rec["question"]), cfg.ngram)
    it = Item(rec, rec["source"], cid, rec["question"], rec["answer"], grams, question_type(rec["question"]))
    it.grounding = faithful.grounding_score(it.a, rec["context"])
    it.flags = _pair_checks(it, cfg, held, ctx_words[cid])
    it.reason, it.detail = it.flags[0] if it.flags else ("", "")
    items.append(it)
  return items, orig_by_ctx, orig_all


def _cross_pair(items: list[Item], orig_by_ctx: Mapping[str, list[tuple[str, str, str]]],
                orig_all: list[tuple[str, str, str]], cfg: Any,
                judge_backends: Mapping[str, backends_lib.Backend] | None = None,
                judge_batch_size: int = 16) -> tuple[dict, list]:
  """The steps where a pair's fate depends on the others (clusters, corpus duplicates, the judge): set
  the items' reasons; returns (teacher agreement, conflict groups)."""
  by_ctx = collections.defaultdict(list)
  for it in items:  # faithfulness failures stay in the clusters: a conflict group shows every answer
    if it.reason not in _CHEAP:
      by_ctx[it.cid].append(it)
  agreement: dict = {}
  conflicts: list = []
  for cid in sorted(by_ctx):
    clusters.resolve_clusters(by_ctx[cid], orig_by_ctx.get(cid, []) if cfg.against_original else [], cfg,
                              agreement, conflicts)
  clusters.corpus_duplicates(items, orig_all if cfg.against_original else [], cfg)
  if cfg.judge.enabled:
    judges = judge_assignment({it.teacher for it in items}, cfg.judge)
    missing = sorted(set(judges.values()) - set(judge_backends or {}))
    if missing:
      raise ValueError(f"curate.judge.enabled is set but no backend for judge(s) {missing}")
    judge_pairs([it for it in items if not it.reason], judge_backends, judges, cfg, judge_batch_size)
  return agreement, conflicts


def pipeline_sweeps(synthetic: list[dict], originals: Iterable[Any], heldout: Mapping[str, Iterable[Any]],
                    cfg: Any) -> dict:
  """Per cross-pair threshold and value: the pairs its reasons would drop, from a rerun of curation's
  cross-pair steps (the per-pair checks do not read these thresholds: they run once)."""
  items, orig_by_ctx, orig_all = _checked_items(synthetic, originals, heldout, cfg)
  out = {}
  for key, (reasons, values) in report_lib.PIPELINE_SWEEPS.items():
    rows = {}
    for v in sorted(set(values) | {cfg[key]}):
      trial = cfg.copy_and_resolve_references()
      with trial.unlocked():
        trial[key] = v
        trial.judge.enabled = False
      for it in items:  # back to the per-pair verdict before the cross-pair steps
        it.reason, it.detail = it.flags[0] if it.flags else ("", "")
      _cross_pair(items, orig_by_ctx, orig_all, trial)
      rejected = [it for it in items if it.reason]
      rows[str(v)] = {"would_drop": sum(it.reason in reasons for it in rejected), "rejected": len(rejected)}
    out[key] = {"current": cfg[key], "reasons": list(reasons), "values": rows}
  return out


def _read_split(path: str) -> list:
  return list(read_records(path))


def curate(config: Any, *, judge_backends: Mapping[str, backends_lib.Backend] | None = None,
           originals: Iterable[Any] | None = None, heldout: Mapping[str, Iterable[Any]] | None = None,
           dry_run: bool = False) -> dict:
  """Merge teacher (shard) files in config.out_dir, curate, write outputs; returns the report.

  `originals` / `heldout` replace reading config.data.train / val, test1, test2. dry_run writes
  nothing and adds report["dry_run"]: per filter and threshold, how many pairs it would drop.
  """
  cfg = config.curate
  out_dir = cfg.out_dir or os.path.join(config.out_dir, "curated")
  names = sorted(config.teachers.keys())
  files = teacher_files(config.out_dir, names)
  synthetic = load_synthetic(files)
  if originals is None:
    train = (config.data.train,) if isinstance(config.data.train, str) else tuple(config.data.train)
    originals = [r for p in train for r in _read_split(p)]
  if heldout is None:
    heldout = {s: _read_split(getattr(config.data, s)) for s in ("val", "test1", "test2") if getattr(config.data, s)}
  originals, heldout = list(originals), {s: list(r) for s, r in heldout.items()}  # read again by dry-run sweeps
  judges = judge_assignment(names, cfg.judge) if cfg.judge.enabled or cfg.judge.judges else {}
  if cfg.judge.enabled and not dry_run:
    unknown = sorted(set(judges.values()) - set(names))
    if unknown:
      raise ValueError(f"curate.judge names judge(s) {unknown} that are not teachers {names}")
    for t, j in sorted(judges.items()):  # two sections serving one model are one judge in disguise
      if config.teachers[j].model == config.teachers[t].model:
        raise ValueError(f"curate.judge: judge {j!r} serves the same model as teacher {t!r} "
                         f"({config.teachers[t].model!r}); a teacher never judges its own pairs")
    judge_backends = dict(judge_backends or {})
    for j in sorted(set(judges.values()) - set(judge_backends)):
      judge_backends[j] = backends_lib.make_backend(config.teachers[j], j)
  batch = min((int(config.teachers[j].batch_size) for j in set(judges.values()) if j in config.teachers), default=16)
  if not synthetic and not dry_run and not config.synth.allow_empty:  # M2/M3 would train on nothing
    found = sorted(os.path.basename(p) for ps in files.values() for p in ps)
    raise ValueError(f"curate: no synthetic pair in {config.out_dir} (teacher files: {found or 'none'}); run "
                     f"`python -m gen synthesize` first, or see its summary: its teachers wrote none")
  with cfg.unlocked() if dry_run else contextlib.nullcontext():
    if dry_run:
      cfg.judge.enabled = False  # a dry run asks no judge
    kept, rejected, report = curate_records(synthetic, originals, heldout, cfg, judge_backends, batch)
  report["parse"] = report_lib.parse_drops(config.out_dir, names)
  report["inputs"] = {"files": {t: [os.path.basename(p) for p in ps] for t, ps in files.items()},
                      "missing_shards": {t: _missing_shards(ps) for t, ps in files.items()},
                      "heldout": {s: len(list(r)) for s, r in heldout.items()},
                      "prompt_versions": sorted({str((r.get("provenance") or {}).get("prompt_version"))
                                                 for r in synthetic})}
  report["judge"] = {"enabled": bool(cfg.judge.enabled), "judges": judges, "version": prompts.JUDGE_VERSION,
                     "template_hash": prompts.judge_template_hash()}
  if dry_run:
    report["dry_run"]["sweeps"].update(pipeline_sweeps(synthetic, originals, heldout, cfg))
    return report
  names_out = {"curated": "synthetic.jsonl", "rejected": "rejected.jsonl", "json": "report.json", "md": "report.md"}
  paths = {k: os.path.join(out_dir, f) for k, f in names_out.items()}
  report["outputs"] = paths
  dump = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
  write_atomic(paths["curated"], dump(kept))
  write_atomic(paths["rejected"], dump(rejected))
  write_atomic(paths["json"], json.dumps(report, ensure_ascii=False, indent=1, sort_keys=True))
  write_atomic(paths["md"], report_lib.markdown(report, REASONS))
  return report
