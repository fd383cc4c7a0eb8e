"""QA records in: VATIKA JSON, JSONL, CSV, SQuAD JSON or a saved `datasets` dir, all read as `Record`s.

Every reader yields the same `Record`s, text NFC-normalised with whitespace collapsed. A file that
is not what it claims raises at once; bad records are collected and reported together, so one run
shows every problem of a file. Prompts and tokenised examples are built from records in
`examples.py`; packing, shards and the batch iterator live in `packing.py`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import unicodedata
from pathlib import Path

from hinqa_jax.files import repo_path


@dataclasses.dataclass(frozen=True)
class Record:
  """One QA pair; source is "original" for human data, else the teacher's name."""
  id: str
  domain: str
  context: str
  question: str
  answer: str
  source: str = "original"
  meta: dict = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True)
class Problem:
  """A bad record: where it is in its file, its id when it has one, and what is wrong."""
  file: str
  where: str
  record_id: str | None
  reason: str

  def __str__(self) -> str:
    rid = f" (id {self.record_id!r})" if self.record_id is not None else ""
    return f"{self.where}{rid}: {self.reason}"


def format_problems(path: str | os.PathLike, problems: list[Problem]) -> str:
  lines = [f"{path}: {len(problems)} bad record(s):"] + [f"  {p}" for p in problems]
  return "\n".join(lines)


def normalize_text(text: str) -> str:
  """NFC, then every run of whitespace becomes one space, ends stripped."""
  return " ".join(unicodedata.normalize("NFC", text).split())


def is_devanagari(ch: str) -> bool:
  """A character of the Devanagari blocks (U+0900-097F, U+A8E0-A8FF): letters, vowel signs, digits, dandas."""
  return "\u0900" <= ch <= "\u097f" or "\ua8e0" <= ch <= "\ua8ff"


def devanagari_ratio(text: str) -> float:
  """Devanagari characters (letters, vowel signs, digits, dandas) against them plus the letters of other
  scripts; 0.0 for text with neither (a number or punctuation alone is no evidence of Hindi).

  One meaning for the reader's warning and curation's min_devanagari_ratio: ASCII digits, spaces and
  punctuation count on neither side, so "घाट 2 ghat!" is 3 / 7."""
  deva = other = 0
  for ch in text:
    if is_devanagari(ch):
      deva += 1
    elif ch.isalpha():
      other += 1
  return deva / (deva + other) if deva + other else 0.0


# ---------------------------------------------------------------------------------------------
# Readers: each returns a list of (where, raw dict or None, problem or None).


def _decode(path: Path, raw: bytes, line_offset: int = 0) -> str:
  try:
    return raw.decode("utf-8-sig" if line_offset == 0 else "utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1 + line_offset
    raise ValueError(f"{path}: invalid UTF-8 at byte {e.start} (line {line}): {e.reason}") from None


def _read_jsonl(path: Path) -> list[tuple]:
  out = []
  for i, raw in enumerate(path.read_bytes().split(b"\n"), 1):
    where = f"line {i}"
    try:
      line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
    except UnicodeDecodeError as e:
      out.append((where, None, f"invalid UTF-8 at byte {e.start} of the line: {e.reason}"))
      continue
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      out.append((where, None, f"not valid JSON ({e.msg} at column {e.colno})"))
      continue
    out.append((where, obj, None) if isinstance(obj, dict) else (where, None, "not a JSON object"))
  return out


def _read_csv(path: Path) -> list[tuple]:
  reader = csv.reader(io.StringIO(_decode(path, path.read_bytes()), newline=""))
  try:
    header = [h.strip() for h in next(reader)]
  except StopIteration:
    raise ValueError(f"{path}: empty CSV file (expected a header row)") from None
  missing = [c for c in ("context", "question", "answer", "id") if c not in header]
  if missing:
    raise ValueError(f"{path}: CSV header {header} lacks column(s) {missing} "
                     "(expected context,question,answer,id,domain[,source])")
  out, start = [], reader.line_num + 1
  for row in reader:
    where = f"line {start}"
    start = reader.line_num + 1
    if not any(cell.strip() for cell in row):
      continue
    if len(row) != len(header):
      out.append((where, None, f"{len(row)} fields, the header has {len(header)}"))
    else:
      out.append((where, dict(zip(header, row)), None))
  return out


def _read_vatika(doc: dict) -> list[tuple]:
  out = []
  if not isinstance(doc["domains"], list):
    return [("domains", None, "'domains' is not a list")]
  for i, dom in enumerate(doc["domains"]):
    where = f"domains[{i}]"
    if not isinstance(dom, dict) or not isinstance(dom.get("contexts"), list):
      out.append((where, None, "domain without a 'contexts' list"))
      continue
    for j, ctx in enumerate(dom["contexts"]):
      cwhere = f"{where}.contexts[{j}]"
      if not isinstance(ctx, dict) or not isinstance(ctx.get("qas"), list):
        out.append((cwhere, None, "context without a 'qas' list"))
        continue
      for k, qa in enumerate(ctx["qas"]):
        if not isinstance(qa, dict):
          out.append((f"{cwhere}.qas[{k}]", None, "qa is not a JSON object"))
          continue
        out.append((f"{cwhere}.qas[{k}]", {**qa, "domain": dom.get("domain", ""),
                                           "context": ctx.get("context")}, None))
  return out


def _read_squad(doc: dict) -> list[tuple]:
  out = []
  for i, art in enumerate(doc["data"] if isinstance(doc["data"], list) else []):
    for j, par in enumerate(art.get("paragraphs", []) if isinstance(art, dict) else []):
      for k, qa in enumerate(par.get("qas", []) if isinstance(par, dict) else []):
        where = f"data[{i}].paragraphs[{j}].qas[{k}]"
        if not isinstance(qa, dict):
          out.append((where, None, "qa is not a JSON object"))
          continue
        raw = {**qa, "domain": art.get("title", ""), "context": par.get("context")}
        if "answer" not in qa:
          answers = qa.get("answers") or []
          first = answers[0] if isinstance(answers, list) and answers else None
          raw["answer"] = first.get("text") if isinstance(first, dict) else None
        out.append((where, raw, None))
  return out


def _read_json(path: Path) -> list[tuple]:
  try:
    doc = json.loads(_decode(path, path.read_bytes()))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
  if isinstance(doc, dict) and "domains" in doc:
    return _read_vatika(doc)
  if isinstance(doc, dict) and "data" in doc:
    return _read_squad(doc)
  if isinstance(doc, list) and all(isinstance(x, dict) for x in doc):
    return [(f"[{i}]", x, None) for i, x in enumerate(doc)]
  shape = f"an object with keys {sorted(doc)[:8]}" if isinstance(doc, dict) else type(doc).__name__
  raise ValueError(f"{path}: JSON of unknown shape ({shape}); expected VATIKA {{\"domains\": [...]}}, "
                   "SQuAD {\"data\": [...]} or a list of records")


def _read_dataset_dir(path: Path) -> list[tuple]:
  import datasets  # lazy: pulls in pyarrow, and only a saved dataset dir needs it
  try:
    ds = datasets.load_from_disk(str(path))
  except Exception as e:  # datasets raises several types for a dir that is not a saved dataset
    raise ValueError(f"{path}: not a dataset saved with save_to_disk ({e})") from None
  if isinstance(ds, datasets.DatasetDict):
    if "train" not in ds:
      raise ValueError(f"{path}: DatasetDict has no 'train' split (splits: {sorted(ds)})")
    ds = ds["train"]
  out = []
  for i, row in enumerate(ds.to_list()):
    if "answer" not in row and isinstance(row.get("answers"), dict):  # SQuAD-style columns
      texts = row["answers"].get("text") or []
      row["answer"] = texts[0] if texts else None
    out.append((f"row {i}", row, None))
  return out


def _read_raw(path: Path) -> list[tuple]:
  if path.is_dir():
    return _read_dataset_dir(path)
  if not path.is_file():
    raise ValueError(f"{path}: no such file or directory")
  readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv, ".json": _read_json}
  if path.suffix.lower() in readers:
    return readers[path.suffix.lower()](path)
  head = path.read_bytes()[:4096].lstrip()  # unknown extension: judge by content
  if head.startswith((b"[", b"{")):
    return _read_jsonl(path) if b"\n{" in head and head.startswith(b"{") else _read_json(path)
  if b"question" in head.split(b"\n", 1)[0]:
    return _read_csv(path)
  raise ValueError(f"{path}: unknown format (expected .json, .jsonl, .csv or a saved dataset directory)")


# ---------------------------------------------------------------------------------------------
# Validation.


def _to_record(raw: dict) -> tuple[Record | None, str | None]:
  """Raw fields -> Record, or the reason it cannot be one."""
  rid = raw.get("id")
  if rid is None or (isinstance(rid, str) and not rid.strip()):
    return None, "no id"
  fields = {}
  for key in ("context", "question", "answer"):
    value = raw.get(key)
    if value is None:
      return None, f"no {key}"
    if not isinstance(value, str):
      return None, f"{key} is not a string ({type(value).__name__})"
    fields[key] = normalize_text(value)
    if not fields[key]:
      return None, f"empty {key}"
  meta = {}
  prov = raw.get("provenance")
  if isinstance(prov, str) and prov.strip():  # CSV and datasets carry it as JSON text
    try:
      prov = json.loads(prov)
    except json.JSONDecodeError:
      return None, "provenance is not valid JSON"
  if prov:
    if not isinstance(prov, dict):
      return None, f"provenance is not an object ({type(prov).__name__})"
    meta["provenance"] = prov
  source = normalize_text(str(raw.get("source") or "")) or "original"
  return Record(id=normalize_text(str(rid)), domain=normalize_text(str(raw.get("domain") or "")),
                source=source, meta=meta, **fields), None


def read_records_report(path: str | os.PathLike) -> tuple[list[Record], list[Problem]]:
  """All good records of a file and every bad record's problem (a bad file as a whole raises)."""
  path = repo_path(path)
  records, problems, seen = [], [], {}
  for where, raw, problem in _read_raw(path):
    rid = raw.get("id") if isinstance(raw, dict) else None
    rid = None if rid is None else normalize_text(str(rid))
    if problem is None:
      record, problem = _to_record(raw)
    if problem is None and record.id in seen:
      problem = f"duplicate id (first at {seen[record.id]})"
    if problem is not None:
      problems.append(Problem(str(path), where, rid, problem))
      continue
    seen[record.id] = where
    records.append(record)
  if not records and not problems:
    raise ValueError(f"{path}: no records")
  non_hindi = [r.id for r in records
               if devanagari_ratio(r.question) < 0.5 or devanagari_ratio(r.answer) < 0.5]
  if non_hindi:
    logging.warning("%s: %d of %d records have a question or answer that is mostly not Devanagari "
                    "(e.g. ids %s)", path, len(non_hindi), len(records), non_hindi[:5])
  return records, problems


def read_records(path: str | os.PathLike, strict: bool = True) -> list[Record]:
  """Records of a VATIKA/SQuAD JSON, JSONL, CSV file or saved dataset dir.

  strict: any bad record raises one ValueError listing them all; else they are skipped with a
  warning (use `read_records_report` to get them).
  """
  records, problems = read_records_report(path)
  if problems:
    if strict:
      raise ValueError(format_problems(path, problems))
    logging.warning("skipping %s", format_problems(path, problems))
  return records


def split_records(path: str | os.PathLike, strict: bool = True) -> list[Record]:
  """An evaluation split (val, test1, test2): just its records."""
  return read_records(path, strict=strict)
