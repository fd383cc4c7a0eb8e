"""The LLM judge: a second model reads (context, question, answer) and answers yes or no.

A teacher never judges its own pairs (a model rates its own outputs too kindly): the config names a
judge per teacher (curate.judge.judges = "llama70b:phi4,phi4:llama70b"; curate.judge.teacher is the
default for teachers not listed), and a config where a teacher would judge itself is an error.
"""
from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping

from gen import backends as backends_lib
from gen import prompts
from gen.parse import parse_verdict


def judge_assignment(teachers: Iterable[str], judge_cfg: Any) -> dict[str, str]:
  """teacher -> judge name; judge.judges ("t1:j1,t2:j2") overrides judge.teacher; never self-judging."""
  teachers = sorted(teachers)
  table = {t: judge_cfg.teacher for t in teachers}
  for part in filter(None, (p.strip() for p in str(judge_cfg.judges).split(","))):
    t, sep, j = (x.strip() for x in part.partition(":"))
    if not sep or not t or not j:
      raise ValueError(f"curate.judge.judges: {part!r} is not 'teacher:judge'")
    table[t] = j
  for t, j in sorted(table.items()):
    if not j:
      raise ValueError(f"curate.judge: no judge for teacher {t!r} (set judge.teacher or judge.judges)")
    if j == t:
      raise ValueError(f"curate.judge: teacher {t!r} would judge its own pairs; name another judge in judge.judges")
  return table


def judge_pairs(items: list, backends: Mapping[str, backends_lib.Backend], judges: Mapping[str, str], cfg: Any,
           batch_size: int) -> None:
  """Ask each pair's judge; a "no" (or an unreadable verdict, if so configured) rejects it."""
  params = backends_lib.SamplingParams(temperature=float(cfg.judge.temperature), top_p=1.0,
                                       max_tokens=int(cfg.judge.max_tokens), seed=0, structured="json_schema",
                                       json_schema=prompts.VERDICT_SCHEMA)
  by_judge = collections.defaultdict(list)
  for it in items:
    by_judge[judges[it.teacher]].append(it)
  for judge, todo in sorted(by_judge.items()):
    for start in range(0, len(todo), max(1, batch_size)):
      batch = todo[start:start + max(1, batch_size)]
      outs = backends_lib.generate_safe(
        backends[judge], [prompts.build_judge_messages(it.rec["context"], it.q, it.a) for it in batch], params)
      for it, out in zip(batch, outs):
        it.verdict = parse_verdict(out if isinstance(out, str) else None)
        it.judged_by = judge
        if it.verdict is False:
          it.reason, it.detail = "judge_rejected", f"verdict no ({judge})"
        elif it.verdict is None and cfg.judge.on_parse_failure == "drop":
          it.reason = "judge_rejected"
          it.detail = "unreadable verdict" if isinstance(out, str) else f"judge failed: {out}"
