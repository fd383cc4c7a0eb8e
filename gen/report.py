"""The curation report: counts per teacher and reason, conflict groups, and per-filter statistics.

`filters` is what `python -m gen curate --dry-run` prints: for every per-pair filter, how many
pairs it alone would drop (`alone`, the checks are independent) and how many it drops in the
pipeline order (`first`), with examples; `sweeps` counts what each numeric threshold would drop
at other values (per-pair thresholds from the pairs' scores; the cross-pair ones, near-duplicate,
agreement and MinHash thresholds, by rerunning curation in a dry run), so a user can tune
thresholds on their own data before committing.
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Any, Iterable, Sequence

_DROPS = {"below": lambda score, v: score < v, "above": lambda score, v: score > v,
          "at_least": lambda score, v: score >= v}
_SWEEPS = {  # threshold key -> (per-pair score(s), when a pair drops, values)
  "grounding_threshold": ("grounding", "below", (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
  "new_content_threshold": ("new_content_support", "below", (0.3, 0.5, 0.7, 0.9)),
  "min_devanagari_ratio": (("devanagari_question", "devanagari_answer"), "below", (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)),
  "min_question_tokens": ("question_tokens", "below", (2, 3, 4, 5)),
  "max_question_tokens": ("question_tokens", "above", (20, 30, 40, 60)),
  "min_answer_tokens": ("answer_tokens", "below", (2, 3, 4, 5, 6)),
  "max_answer_tokens": ("answer_tokens", "above", (40, 60, 80, 120)),
  "contam_question_threshold": ("heldout_question_jaccard", "at_least", (0.5, 0.6, 0.7, 0.8, 0.9)),
}
# Thresholds of the cross-pair steps: a pair's fate depends on the others, so the sweep reruns
# curation with the one value changed (gen.curate.pipeline_sweeps) and counts the drops these reasons.
PIPELINE_SWEEPS = {
  "near_dup_threshold": (("duplicate_exact", "duplicate_near", "conflict"), (0.6, 0.7, 0.8, 0.9)),
  "agree_threshold": (("duplicate_exact", "duplicate_near", "conflict"), (0.4, 0.5, 0.6, 0.7, 0.8)),
  "minhash_threshold": (("duplicate_exact", "duplicate_near"), (0.6, 0.7, 0.8, 0.9)),
}


def _example(it: Any, detail: str) -> dict:
  return {"id": it.rec["id"], "teacher": it.teacher, "question": it.q, "answer": it.a, "detail": detail}


def filter_stats(items: list, cfg: Any, reasons: Sequence[str]) -> dict:
  """Per filter: pairs it alone would drop and pairs it drops first, with examples; threshold sweeps."""
  k = int(cfg.examples_per_reason)
  filters = {r: {"alone": 0, "first": 0, "examples": []} for r in reasons}
  for it in items:
    for reason, detail in it.flags:
      slot = filters[reason]
      slot["alone"] += 1
      if len(slot["examples"]) < k:
        slot["examples"].append(_example(it, detail))
    if it.reason:
      filters[it.reason]["first"] += 1
  sweeps = {}
  for key, (score, mode, values) in _SWEEPS.items():
    names = score if isinstance(score, tuple) else (score,)
    rows = {}
    for v in values:
      hit = [it for it in items if any(_DROPS[mode](it.scores[n], v) for n in names)]
      rows[str(v)] = {"would_drop": len(hit), "examples": [_example(it, "") for it in hit[:k]]}
    sweeps[key] = {"current": cfg[key], "values": rows}
  return {"filters": filters, "sweeps": sweeps}


def build(items: list, agreement: dict, conflicts: list, cfg: Any, reasons: Sequence[str]) -> dict:
  """The report dict of one curation run."""
  per_teacher: dict = {}
  per_reason = {r: {"count": 0, "examples": []} for r in reasons}
  for it in items:
    t = per_teacher.setdefault(it.teacher, {"input": 0, "kept": 0, "rejected": {r: 0 for r in reasons}})
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
          "per_teacher": per_teacher, "per_reason": per_reason, "conflicts": conflicts,
          "agreement": dict(sorted(agreement.items())), "thresholds": cfg.to_dict(),
          "dry_run": filter_stats(items, cfg, reasons)}


def markdown(report: dict, reasons: Sequence[str]) -> str:
  """The report as a short Markdown page."""
  t = report["totals"]
  lines = ["# Synthetic data curation", "", f"{t['input']} pairs in, {t['kept']} kept, {t['rejected']} rejected.", "",
           "| teacher | in | kept | keep rate | " + " | ".join(reasons) + " |",
           "|---" * (4 + len(reasons)) + "|"]
  for name, s in sorted(report["per_teacher"].items()):
    lines.append(f"| {name} | {s['input']} | {s['kept']} | {s['keep_rate']:.2f} | "
                 + " | ".join(str(s["rejected"][r]) for r in reasons) + " |")
  if report.get("parse"):
    lines += ["", "## Generation and parsing", ""]
    lines += [f"- {name}: " + (", ".join(f"{k} {v}" for k, v in s.items()) or "no journal") for name, s in
              sorted(report["parse"].items())]
  if report["agreement"]:
    lines += ["", "## Agreement on shared questions", "", "| sources | shared questions | disagree | agree rate |",
              "|---|---|---|---|"]
    lines += [f"| {k.replace('|', ' vs ')} | {v['shared_questions']} | {v['disagree']} | {v['agree_rate']:.2f} |"
              for k, v in report["agreement"].items()]
  if report["conflicts"]:
    lines += ["", f"## Conflict groups ({len(report['conflicts'])})", ""]
    for g in report["conflicts"]:
      lines.append(f"- {g['question']} (context {g['context_id']}): "
                   + (f"kept `{g['kept']}`" if g["kept"] else "all dropped"))
      lines += [f"  - `{m['id']}` ({m['teacher']}, {'in context' if m['supported'] else 'not in context'}, "
                f"{m['reason'] or 'kept'}): {m['answer']}" for m in g["members"]]
  lines += ["", "## Rejections by reason", ""]
  for reason, slot in report["per_reason"].items():
    if slot["count"]:
      lines.append(f"### {reason} ({slot['count']})")
      lines += [f"- `{e['id']}`: {e['question']} → {e['answer']} ({e['detail']})" for e in slot["examples"]]
      lines.append("")
  return "\n".join(lines) + "\n"


def parse_drops(out_dir: str, names: Iterable[str]) -> dict[str, dict]:
  """Per teacher, from its done-journals: unit statuses, truncated outputs and parser drops by reason."""
  out = {}
  for name in names:
    stats: collections.Counter = collections.Counter()
    listing = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    for f in listing:
      if re.fullmatch(re.escape(name) + r"(\.shard-\d+-of-\d+)?\.done\.jsonl", f):
        with open(os.path.join(out_dir, f), encoding="utf-8") as fh:
          for line in fh:
            try:  # a crash can leave a torn last line; synthesize repairs it on its next start
              e = json.loads(line)
            except json.JSONDecodeError:
              stats["journal_unreadable_lines"] += 1
              continue
            if not isinstance(e, dict):
              stats["journal_unreadable_lines"] += 1
              continue
            stats["unit_" + e.get("status", "unknown")] += 1
            stats["truncated_outputs"] += e.get("finish_reason") == "length"
            for reason, n in (e.get("dropped") or {}).items():
              stats["dropped_" + reason] += n
    out[name] = dict(sorted(stats.items()))
  return out
