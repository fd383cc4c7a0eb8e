"""Per-context clusters of one question's answers and corpus-wide duplicates (the cross-pair part of curation).

Questions of one context are clustered by loose-key similarity (and the same interrogatives) with the
original QA as seeds: the same question as an original is duplicate_* (or conflict when the answers
disagree); several teachers on one question with disagreeing answers form a conflict group that
the context settles. Corpus-wide near-duplicates use MinHash LSH (gen/dedup.py). Items are
gen.curate.Item; these functions set their reason and detail.
"""
from __future__ import annotations

from typing import Any

from gen import faithful
from gen.dedup import NearDuplicates, pair_grams
from gen.text import answer_agreement, char_ngrams, jaccard, loose_key, norm_tokens, question_type


def exact_key(q: str, a: str) -> tuple[str, str]:
  return " ".join(norm_tokens(q)), " ".join(norm_tokens(a))


def _agree(qa: tuple[str, str], qb: tuple[str, str], threshold: float) -> bool:
  return answer_agreement(qa[0], qa[1], qb[0], qb[1]) >= threshold


def _differing_supported(m: Any, group: list[Any]) -> bool:
  """Whether the facts m's answer adds, beyond its group's questions and what every answer shares, are in the context."""
  asked = set().union(*(faithful.content_stems(x.q) for x in group))
  shared = set.intersection(*(set(faithful.content_stems(x.a)) for x in group))
  ctx = faithful.context_stems(m.rec["context"])
  differing = {s for s in faithful.content_stems(m.a) if s not in asked and s not in shared}
  return differing <= ctx and not faithful.unsupported_numbers(m.a, m.rec["context"])


def _settle_conflict(members: list[Any], cfg: Any) -> dict:
  """A group of one question's disagreeing answers: the context decides; returns the report entry."""
  supported = {id(m): not m.reason and _differing_supported(m, members) for m in members}
  winners = [m for m in members if supported[id(m)]] if cfg.conflict_policy == "context" else []
  best = min(winners, key=lambda m: (-m.grounding, m.teacher, m.rec["id"])) if winners else None
  for m in members:
    if m is best or m.reason:
      continue
    if best is not None and _agree((m.q, m.a), (best.q, best.a), cfg.agree_threshold):
      m.reason, m.detail = "duplicate_near", f"same answer as {best.teacher} {best.rec['id']}"
    elif best is not None:
      m.reason, m.detail = "conflict", f"contradicts {best.teacher} {best.rec['id']}, which the context supports"
    else:
      m.reason, m.detail = "conflict", f"teachers disagree and no answer's differing facts are in the context"
  return {"context_id": members[0].cid, "question": members[0].q,
          "kept": best.rec["id"] if best else None,
          "members": [{"id": m.rec["id"], "teacher": m.teacher, "answer": m.a, "supported": supported[id(m)],
                       "reason": m.reason} for m in members]}


def resolve_clusters(items: list[Any], originals: list[tuple[str, str, str]], cfg: Any,
                      agreement: dict, conflicts: list) -> None:
  """Cluster one context's questions; mark duplicates of originals and settle teacher conflicts."""
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
      ref_name, (ref_id, ref_q, ref_a) = "original", c["orig"]
      for m in members:
        if m.reason:
          continue
        if not _agree((m.q, m.a), (ref_q, ref_a), cfg.agree_threshold):
          m.reason, m.detail = "conflict", f"answer disagrees with original {ref_id}"
        elif exact_key(m.q, m.a) == exact_key(ref_q, ref_a):
          m.reason, m.detail = "duplicate_exact", f"same as original {ref_id}"
        else:
          m.reason, m.detail = "duplicate_near", f"same question as original {ref_id}"
      answers = {ref_name: [(ref_q, ref_a)]}
    elif members:
      pairs = [(x.q, x.a) for x in members]
      if len(members) > 1 and any(not _agree(x, y, cfg.agree_threshold) for i, x in enumerate(pairs)
                                  for y in pairs[i + 1:]):
        conflicts.append(_settle_conflict(members, cfg))
      else:
        alive = [m for m in members if not m.reason]
        best = min(alive, key=lambda m: (-m.grounding, m.teacher, m.rec["id"])) if alive else None
        for m in alive:
          if m is not best:
            same = exact_key(m.q, m.a) == exact_key(best.q, best.a)
            m.reason = "duplicate_exact" if same else "duplicate_near"
            m.detail = f"same question as {best.teacher} {best.rec['id']}"
      answers = {}
    else:
      continue
    for m in members:
      answers.setdefault(m.teacher, []).append((m.q, m.a))
    sources = sorted(answers)
    for i, s in enumerate(sources):  # agreement statistics per pair of sources sharing a question
      for t in sources[i + 1:]:
        pair = agreement.setdefault(f"{s}|{t}", {"shared_questions": 0, "disagree": 0})
        pair["shared_questions"] += 1
        pair["disagree"] += any(not _agree(x, y, cfg.agree_threshold) for x in answers[s] for y in answers[t])


def corpus_duplicates(items: list[Any], originals: list[tuple[str, str, str]], cfg: Any) -> None:
  """MinHash LSH over the whole corpus: each surviving pair against the originals and earlier pairs."""
  index = NearDuplicates(cfg.minhash_threshold, cfg.minhash_ngram)
  for rid, q, a in originals:
    index.add(f"original {rid}", pair_grams(q, a, cfg.minhash_ngram))
  for it in items:
    if it.reason:
      continue
    grams = pair_grams(it.q, it.a, cfg.minhash_ngram)
    key, score = index.find(grams)
    if key:
      it.reason = "duplicate_exact" if score == 1.0 else "duplicate_near"
      it.detail = f"{'same' if score == 1.0 else 'near-duplicate'} pair as {key} (jaccard {score:.2f})"
    else:
      index.add(f"{it.teacher} {it.rec['id']}", grams)
