"""Synthesis: every (training context, sample) unit x every teacher -> parsed QA records in JSONL.

Crash safety, and why this design (not one part file per context): outputs are appended once per
completed batch, records first and then the batch's entries in a done-journal, each write flushed
and fsynced. On start, `_recover` keeps only records whose unit the journal lists and drops a torn
last line, rewriting the file atomically if anything was dropped. So after a crash at any point
every unit is either fully in the output exactly once or regenerated; a run of 10^5 contexts makes
two growing files per teacher and shard instead of 10^5 small ones to merge.

Sharding: a unit belongs to worker i of N when int(context_id, 16) % N == i, so N nodes running
`--shard=i/N` partition the contexts without coordinating; each writes <teacher>.shard-i-of-N.jsonl
and curation merges them.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Iterable, Mapping

from tqdm import tqdm

from gen import backends as backends_lib
from gen import prompts
from gen.parse import PARSE_DROPS, parse_pairs
from hinqa_jax import locks
from hinqa_jax.files import write_atomic
from hinqa_jax.records import normalize_text, read_records

log = logging.getLogger(__name__)
STATUSES = ("ok", "salvaged", "garbage", "failed", "too_long")


@dataclasses.dataclass
class Context:
  cid: str  # stable id: sha1 of domain and NFC context text
  domain: str
  text: str
  qas: list[tuple[str, str, str]]  # (record id, question, answer) of the original data


def field(record: Any, name: str, default: Any = "") -> Any:
  """A record field, whether read_records returns mappings or objects."""
  if isinstance(record, Mapping):
    return record.get(name, default)
  return getattr(record, name, default)


def context_id(domain: str, text: str) -> str:
  """Stable 16-hex-digit id of a context (independent of file order and QA ids)."""
  return hashlib.sha1(f"{domain}\n{normalize_text(text)}".encode("utf-8")).hexdigest()[:16]


def group_contexts(records: Iterable[Any]) -> list[Context]:
  """Group QA records by (domain, context), in order of first appearance."""
  by_id: dict[str, Context] = {}
  for r in records:
    domain, text = str(field(r, "domain")), normalize_text(str(field(r, "context")))
    if not text:
      continue
    cid = context_id(domain, text)
    ctx = by_id.setdefault(cid, Context(cid, domain, text, []))
    q, a = normalize_text(str(field(r, "question"))), normalize_text(str(field(r, "answer")))
    if q and a:
      ctx.qas.append((str(field(r, "id")), q, a))
  return list(by_id.values())


def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
  """'i/N' (or (i, N)) -> (i, N) with 0 <= i < N."""
  if isinstance(spec, str):
    try:
      i, n = (int(x) for x in spec.split("/"))
    except ValueError:
      raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}") from None
  else:
    i, n = spec
  if not 0 <= i < n:
    raise ValueError(f"shard {i}/{n}: need 0 <= i < N")
  return i, n


def in_shard(cid: str, shard: tuple[int, int]) -> bool:
  return int(cid, 16) % shard[1] == shard[0]


def output_stem(teacher: str, shard: tuple[int, int]) -> str:
  return teacher if shard[1] == 1 else f"{teacher}.shard-{shard[0]}-of-{shard[1]}"


def _append(path: str, rows: list[dict]) -> None:
  if rows:
    with open(path, "a", encoding="utf-8") as f:
      f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
      f.flush()
      os.fsync(f.fileno())


def _read_lines(path: str) -> tuple[list[dict], bool]:
  """Parsed JSONL rows and whether every line parsed (a crash may leave a torn last line)."""
  if not os.path.exists(path):
    return [], True
  rows, clean = [], True
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        clean = False
  return rows, clean


def _recover(out_path: str, done_path: str) -> dict[str, dict]:
  """Done-journal entries by unit (last wins), after making the output agree with the journal."""
  entries, clean = _read_lines(done_path)
  if not clean:
    write_atomic(done_path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
  done = {e["unit"]: e for e in entries}
  rows, clean = _read_lines(out_path)
  kept = [r for r in rows if (r.get("provenance") or {}).get("unit") in done]
  if not clean or len(kept) != len(rows):
    log.warning("%s: dropping %d records of unfinished units", out_path, len(rows) - len(kept))
    write_atomic(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
  return done


def _load_contexts(config: Any, records: Iterable[Any] | None) -> list[Context]:
  if records is None:
    paths = (config.data.train,) if isinstance(config.data.train, str) else tuple(config.data.train)
    records = [r for p in paths for r in read_records(p)]
  contexts = group_contexts(records)
  if not contexts:
    raise ValueError(f"no contexts found in {config.data.train}")
  return contexts[:config.synth.max_contexts] if config.synth.max_contexts else contexts


def _unit_messages(config: Any, ctx: Context, sample: int,
                   pools: dict[str, list[tuple[str, str, str]]]) -> list[dict[str, str]]:
  p = config.prompt
  examples = prompts.pick_examples(pools[ctx.domain], p.num_examples,
                                   seed=f"{config.seed}:{ctx.cid}:{sample}", exclude_context=ctx.cid)
  existing = [q for _, q, _ in ctx.qas][:p.max_existing] if p.show_existing else []
  return prompts.build_messages(ctx.domain, ctx.text, examples, p.num_pairs, existing)


def _batch_seed(base: int, unit: str) -> int:
  # A batch's seed depends on its first unit, not on its position, so a resumed run redoes a
  # unit with the same seed it would have had.
  return int(hashlib.sha1(f"{base}:{unit}".encode()).hexdigest()[:8], 16) % (2 ** 31)


def _unit_result(name: str, ctx: Context, sample: int, out: Any, base: dict) -> tuple[dict, list[dict]]:
  """Journal entry and output records of one generated (or failed) unit."""
  unit = f"{ctx.cid}#{sample}"
  entry = {"unit": unit, "context_id": ctx.cid, "sample": sample}
  if isinstance(out, backends_lib.ContextTooLong):
    return {**entry, "status": "too_long", "pairs": 0, "error": str(out)}, []
  if out is None or isinstance(out, Exception):
    return {**entry, "status": "failed", "pairs": 0, "error": f"{type(out).__name__}: {out}"}, []
  parsed = parse_pairs(out)
  finish = getattr(out, "finish_reason", "")
  entry.update(status=parsed.status, pairs=len(parsed.pairs), finish_reason=finish, dropped=parsed.dropped)
  if parsed.status == "garbage":
    entry["raw"] = out[:500]  # enough to see how a teacher goes wrong
  provenance = {**base, "context_id": ctx.cid, "sample": sample, "unit": unit, "parse_status": parsed.status,
                "finish_reason": finish}
  rows = [{"id": f"{name}-{ctx.cid}-{sample}-{k}", "domain": ctx.domain, "context": ctx.text,
           "question": q, "answer": a, "source": name,
           "provenance": {**provenance, "pair_index": k, "pairs_in_output": len(parsed.pairs)}}
          for k, (q, a) in enumerate(parsed.pairs)]
  return entry, rows


def _stop_on_client_errors(name: str, outputs: list[Any], run: collections.Counter) -> None:
  """Stop the run when everything so far failed with one and the same client (4xx) error.

  A wrong model name, key or schema fails every request identically; going on would only write
  a journal of failures and exit 0.
  """
  errors = {(o.code, o.detail) for o in outputs if isinstance(o, backends_lib.ClientError)}
  all_failed = outputs and all(isinstance(o, backends_lib.ClientError) for o in outputs)
  if all_failed and len(errors) == 1 and not any(run[s] for s in ("ok", "salvaged", "garbage", "too_long")):
    code, detail = errors.pop()
    raise RuntimeError(f"teacher {name!r}: all {len(outputs)} requests failed with the same client error "
                       f"HTTP {code}: {detail} -- check the teacher's model, base_url, api key and structured setting")


def _run_teacher(config: Any, name: str, contexts: list[Context], shard: tuple[int, int],
                 backend: backends_lib.Backend | None) -> dict:
  tcfg = config.teachers[name]
  stem = os.path.join(config.out_dir, output_stem(name, shard))
  out_path, done_path = stem + ".jsonl", stem + ".done.jsonl"
  done = _recover(out_path, done_path)
  for path in (out_path, done_path):  # exist even when empty: "no pairs" differs from "not run"
    open(path, "a", encoding="utf-8").close()
  pools: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
  for c in contexts:  # the few-shot pool is the whole training set, not just this shard
    pools[c.domain].extend((c.cid, q, a) for _, q, a in c.qas)
  units = [(c, j) for c in contexts if in_shard(c.cid, shard) for j in range(config.synth.samples_per_context)]
  retry = {"failed"} if config.synth.retry_failed else set()
  pending = [(c, j) for c, j in units
             if f"{c.cid}#{j}" not in done or done[f"{c.cid}#{j}"]["status"] in retry]
  run = collections.Counter()
  if pending and backend is None:
    backend = backends_lib.make_backend(tcfg, name)
  thash = prompts.template_hash()
  bar = tqdm(total=len(pending), desc=f"synthesize {name}", unit="prompt", disable=not config.synth.progress)
  for start in range(0, len(pending), max(1, int(tcfg.batch_size))):
    batch = pending[start:start + max(1, int(tcfg.batch_size))]
    seed = _batch_seed(int(tcfg.seed), f"{batch[0][0].cid}#{batch[0][1]}")
    params = backends_lib.sampling_params(tcfg, prompts.PAIRS_SCHEMA, seed=seed)
    outputs = backends_lib.generate_safe(backend, [_unit_messages(config, c, j, pools) for c, j in batch], params)
    base = {"teacher": name, "backend": tcfg.backend, "model": getattr(backend, "model", tcfg.model),
            "prompt_version": prompts.PROMPT_VERSION, "template_hash": thash,
            "sampling": {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
                         "max_tokens": params.max_tokens, "structured": params.structured},
            "seed": int(tcfg.seed), "batch_seed": seed, "shard": f"{shard[0]}/{shard[1]}"}
    rows, entries = [], []
    _stop_on_client_errors(name, outputs, run)
    for (ctx, j), out in zip(batch, outputs):
      entry, unit_rows = _unit_result(name, ctx, j, out, base)
      if entry["status"] not in ("ok", "salvaged"):
        log.warning("%s: context %s sample %d: %s %s", name, ctx.cid, j, entry["status"], entry.get("error", ""))
      run[entry["status"]] += 1
      run["pairs"] += entry["pairs"]
      run["truncated"] += entry.get("finish_reason") == "length"
      for reason, n in entry.get("dropped", {}).items():
        run["dropped_" + reason] += n
      entries.append(entry)
      rows += unit_rows
    _append(out_path, rows)  # records before their journal entries: see the module docstring
    _append(done_path, entries)
    for e in entries:
      done[e["unit"]] = e
    bar.update(len(batch))
  bar.close()
  in_shard_units = {f"{c.cid}#{j}" for c, j in units}
  totals = collections.Counter(e["status"] for u, e in done.items() if u in in_shard_units)
  summary = {
    "teacher": name, "shard": f"{shard[0]}/{shard[1]}", "output": out_path, "units": len(units),
    "skipped_done": len(units) - len(pending),
    "this_run": {k: run[k] for k in (*STATUSES, "pairs", "truncated", *(f"dropped_{r}" for r in PARSE_DROPS))},
    "truncated": sum(e.get("finish_reason") == "length" for u, e in done.items() if u in in_shard_units),
    "status": {k: totals[k] for k in STATUSES},
    "pairs": sum(e["pairs"] for u, e in done.items() if u in in_shard_units),
    "backend_stats": dict(getattr(backend, "stats", {}) or {}),
  }
  write_atomic(stem + ".summary.json", json.dumps(summary, ensure_ascii=False, indent=1, sort_keys=True))
  return summary


def _teacher_problem(name: str, summary: dict, max_failure_rate: float, allow_empty: bool) -> str | None:
  """Why a teacher's run is an error: it never answered, or it failed too often this run."""
  this = summary["this_run"]
  attempted = sum(this[s] for s in STATUSES)
  done_path = summary["output"].removesuffix(".jsonl") + ".done.jsonl"
  if attempted and this["failed"] / attempted > max_failure_rate:
    return (f"teacher {name!r}: {this['failed']} of {attempted} requests failed this run (more than "
            f"synth.max_failure_rate={max_failure_rate}); errors are in {done_path}; a rerun retries them")
  if summary["units"] and not summary["pairs"] and not allow_empty:
    return f"teacher {name!r}: no pair from {summary['units']} prompts (statuses {summary['status']}); see {done_path}"
  return None


def synthesize(config: Any, shard: tuple[int, int] | str = (0, 1), *, records: Iterable[Any] | None = None,
               backends: Mapping[str, backends_lib.Backend] | None = None) -> dict:
  """Run every teacher on this shard's contexts; returns (and writes) a summary of counts.

  `records` replaces reading config.data.train; `backends` maps teacher names to ready backends
  (e.g. `JaxBackend.from_loaded(...)`) instead of building them from the config.
  """
  shard = parse_shard(shard)
  contexts = _load_contexts(config, records)
  names = [n for n in sorted(config.teachers.keys()) if not config.synth.only or n in config.synth.only]
  unknown = set(config.synth.only) - set(config.teachers.keys())
  if unknown or not names:
    raise ValueError(f"synth.only names unknown teachers {sorted(unknown)}; have {sorted(config.teachers.keys())}")
  os.makedirs(config.out_dir, exist_ok=True)
  summary = {"shard": f"{shard[0]}/{shard[1]}", "contexts": len(contexts),
             "contexts_in_shard": sum(in_shard(c.cid, shard) for c in contexts), "teachers": {}}
  suffix = "" if shard[1] == 1 else f".shard-{shard[0]}-of-{shard[1]}"
  with locks.hold(config.out_dir, f"gen synthesize shard {shard[0]}/{shard[1]}", name=f".lock{suffix}"):
    for name in names:  # one writer per (out_dir, shard): a second would request every pair again
      summary["teachers"][name] = _run_teacher(config, name, contexts, shard, (backends or {}).get(name))
  write_atomic(os.path.join(config.out_dir, f"summary{suffix}.json"),
               json.dumps(summary, ensure_ascii=False, indent=1, sort_keys=True))
  # Every teacher ran and every output and summary is saved (a rerun resumes); then a teacher that wrote
  # nothing, or failed too often, is an error: curating and training on nothing would look like success.
  problems = [p for n in names if (p := _teacher_problem(n, summary["teachers"][n], config.synth.max_failure_rate,
                                                         config.synth.allow_empty))]
  if problems:
    raise RuntimeError("; ".join(problems))
  return summary
