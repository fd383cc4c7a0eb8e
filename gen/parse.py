"""Robust parsing of teacher outputs into (question, answer) pairs, and of judge verdicts.

Teachers rarely return exactly the JSON asked for. In order, `parse_pairs` tries:
1. the JSON value after any code fence or prose (a list, a single object, or an object wrapping
   a list such as {"pairs": [...]}, the shape structured output asks for), read leniently: raw
   line breaks inside strings (strict=False), trailing commas, Python literals (single quotes,
   True/None, read with ast.literal_eval, which evaluates literals only, never code), and last
   json-repair (unescaped inner quotes), only ever on a span whose brackets close;
2. salvage: every complete {...} object in a broken or truncated text (also JSON lines);
3. labelled lines: "1. प्रश्न: ... उत्तर: ..." (also Q:/A:, सवाल/जवाब, प्र./उ., प्र.१/उ.१), on one
   line or several;
4. markdown tables with a question and an answer column;
5. numbered, bulleted or bold question lines ending in "?" with the answer on the lines below.
Code fences anywhere (also glued to the last answer) are ignored by 3-5.
Keys are matched loosely (question/q/prashn/प्रश्न..., answer/a/uttar/उत्तर...). Every item the
parser sees but cannot use is counted in `Parsed.dropped` by reason (`PARSE_DROPS`).
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import json
import re

import json_repair

_Q_KEYS = {"question", "q", "ques", "prashn", "prashna", "prasna", "प्रश्न", "सवाल", "sawal", "query"}
_A_KEYS = {"answer", "a", "ans", "uttar", "uttara", "उत्तर", "जवाब", "jawab", "response"}
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|\Z)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
# A label: a word with an optional number and a separator ("प्रश्न 1:", "Q1.", "**उत्तर:**"), or the
# abbreviation with its dot and an optional number ("प्र.", "प्र.१", "उ०").
_Q_LABEL = r"(?:(?:प्रश्न|सवाल|question|ques|q)\**[ \t]*\d*[ \t]*\**[:：.)-]|प्र[.०॰][ \t]*\d*[ \t]*[:：.)-]?)"
_A_LABEL = r"(?:(?:उत्तर|जवाब|answer|ans|a)\**[ \t]*\d*[ \t]*\**[:：.)-]|उ[.०॰][ \t]*\d*[ \t]*[:：.)-]?)"
_ITEM_START = r"(?:^|\n)[ \t]*(?:[-*•]|\d+[.)])?[ \t]*\**" + _Q_LABEL
# A labelled question starts a line (after an optional "1." / "2)" / "-" marker and ** bold marks).
_LABELLED = re.compile(
  _ITEM_START + r"\**[ \t]*(.+?)"
  r"\s*(?<=[\s*|?।.)])\**" + _A_LABEL + r"\**[ \t]*(.*?)"
  r"(?=\n[ \t]*(?:[-*•]|\d+[.)])?[ \t]*\**" + _Q_LABEL + r"|\n\s*\n|\Z)",
  re.S | re.I)
# A question line: optional heading/bullet/number and bold marks around a sentence ending in "?".
_QUESTION_LINE = re.compile(r"[ \t]*(?:#+[ \t]*)?(?:[-*•][ \t]*)?\**[ \t]*(?:[\d]+[.)][ \t]*)?\**[ \t]*"
                            r"(\S.*?[?？])[ \t]*\**[ \t]*")
_TABLE_SEPARATOR = re.compile(r"\s*:?-{2,}:?\s*")
_Q_HEADER = re.compile(r"\W*(?:प्रश्न|सवाल|question|q)\W*", re.I)
_A_HEADER = re.compile(r"\W*(?:उत्तर|जवाब|answer|a)\W*", re.I)
_MAX_LITERAL = 200_000  # ast.literal_eval is safe, but its parse cost grows with size: cap it
# Reasons an item is dropped by the parser; each is counted in Parsed.dropped.
PARSE_DROPS = ("empty_question", "empty_answer", "missing_field", "not_text", "truncated", "repeated")


@dataclasses.dataclass(frozen=True)
class Parsed:
  pairs: list[tuple[str, str]]  # (question, answer), stripped, both non-empty
  status: str  # ok (clean JSON) | salvaged (repaired or non-JSON format) | garbage (nothing usable)
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # PARSE_DROPS reason -> count


def _pair_from(obj: object) -> tuple[str, str] | str | None:
  """(q, a), or the drop reason for an item that is a dict but unusable; None for a non-dict."""
  if not isinstance(obj, dict):
    return None
  q = a = None
  for key, value in obj.items():
    k = str(key).strip().lower()
    if k in _Q_KEYS and q is None:
      q = value
    elif k in _A_KEYS and a is None:
      a = value
  if q is None or a is None:
    return "missing_field"
  if not isinstance(q, str) or not isinstance(a, str):
    return "not_text"
  return _item(" ".join(q.split()), " ".join(a.split()))


def _pairs_from_value(value: object) -> list[tuple[str, str] | str] | None:
  """Items (pairs or drop reasons) of a decoded value; None when its shape is not a QA list at all."""
  if isinstance(value, dict):
    single = _pair_from(value)
    if isinstance(single, tuple):
      return [single]
    lists = [v for v in value.values() if isinstance(v, list)]
    if len(lists) != 1:  # a wrapper object like {"pairs": [...]} has exactly one list
      return None
    value = lists[0]
  if isinstance(value, list):
    items = [p for p in map(_pair_from, value) if p is not None]
    return items if any(isinstance(p, tuple) for p in items) else None
  return None


def _json_candidates(text: str) -> list[str]:
  fenced = [m.group(1) for m in _FENCE.finditer(text) if m.group(1).strip()]
  return fenced + [text]


def _unquoted(text: str, start: int = 0, opens_quote=lambda ch: ch in "\"'"):
  """(i, ch) for each character of text[start:] outside string literals (quotes and escapes skipped);
  opens_quote(ch) says whether a ' or " starts a string here (asked only outside one)."""
  quote, esc = "", False
  for i in range(start, len(text)):
    ch = text[i]
    if quote:
      if esc:
        esc = False
      elif ch == "\\":
        esc = True
      elif ch == quote:
        quote = ""
    elif ch in "\"'" and opens_quote(ch):
      quote = ch
    else:
      yield i, ch


def _balanced_end(text: str, start: int) -> int:
  """Index after the bracket that closes text[start]; -1 if it never closes (strings of ' or " skipped)."""
  depth = 0
  for i, ch in _unquoted(text, start):
    if ch in "[{":
      depth += 1
    elif ch in "]}":
      depth -= 1
      if depth == 0:
        return i + 1
  return -1


def _literal(text: str) -> object:
  """A JSON or Python-literal value of exactly `text`; raises ValueError if it is neither."""
  for candidate in (text, _TRAILING_COMMA.sub(r"\1", text)):
    try:
      return json.loads(candidate, strict=False)  # strict=False: raw line breaks inside strings
    except json.JSONDecodeError:
      pass
  if len(text) <= _MAX_LITERAL:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
      pass
    # unescaped inner quotes ("किले में "सोनवा मंडप" कहाँ है?"): json-repair reads them. Only on a span
    # whose brackets close: on a cut-off list it would complete the cut answer as if whole.
    value = json_repair.loads(text)
    if isinstance(value, (list, dict)) and value:
      return value
  raise ValueError("not a literal")


def _decode_first(text: str) -> object:
  """Decode the first JSON/Python-literal list or object in text, ignoring prose around it."""
  decoder = json.JSONDecoder(strict=False)
  for match in re.finditer(r"[\[{]", text):
    for candidate in (text[match.start():], _TRAILING_COMMA.sub(r"\1", text[match.start():])):
      try:
        return decoder.raw_decode(candidate)[0]
      except json.JSONDecodeError:
        continue
    end = _balanced_end(text, match.start())
    if end > 0:
      try:
        return _literal(text[match.start():end])
      except ValueError:
        continue
  raise ValueError("no JSON value")


def _complete_objects(text: str) -> tuple[list[str], bool]:
  """Innermost-first balanced {...} substrings, and whether an object was left open (truncation)."""
  found, starts = [], []
  # An apostrophe in prose outside any object is no quote.
  for i, ch in _unquoted(text, opens_quote=lambda ch: ch == '"' or bool(starts)):
    if ch == "{":
      starts.append(i)
    elif ch == "}" and starts:
      found.append(text[starts.pop():i + 1])
  return found, bool(starts)


def _tally(items: list[tuple[str, str] | str]) -> tuple[list[tuple[str, str]], collections.Counter]:
  pairs, dropped = [], collections.Counter()
  for item in items:
    if isinstance(item, str):
      dropped[item] += 1
    elif item in pairs:
      dropped["repeated"] += 1
    else:
      pairs.append(item)
  return pairs, dropped


def parse_pairs(text: str | None) -> Parsed:
  """Parse one teacher response; never raises."""
  if not text or not text.strip():
    return Parsed([], "garbage")
  decoded: list = []
  for candidate in _json_candidates(text):
    try:
      decoded = _pairs_from_value(_decode_first(candidate)) or []
    except ValueError:
      continue
    if decoded:
      break
  objects, left_open = _complete_objects(text)
  salvaged: list = []
  for obj_text in objects:
    try:
      value = _literal(obj_text)
    except ValueError:
      continue
    if isinstance(value, dict) and any(isinstance(v, (list, dict)) for v in value.values()):
      continue  # a wrapper ({"pairs": [...]}), not an item
    item = _pair_from(value)
    if item is not None and (isinstance(item, str) or item not in salvaged):
      salvaged.append(item)
  # A truncated list decodes only as its first inner object: the salvage then finds more.
  n_dec, n_salv = (sum(isinstance(p, tuple) for p in x) for x in (decoded, salvaged))
  if n_dec and n_dec >= n_salv or n_salv:
    use_decoded = n_dec > n_salv or n_dec == n_salv and len(decoded) >= len(salvaged)
    pairs, dropped = _tally(decoded if use_decoded else salvaged)
    if left_open:  # the last item was cut off (max_tokens): counted, not silently lost
      dropped["truncated"] += 1
    return Parsed(pairs, "ok" if use_decoded and not left_open else "salvaged", dict(dropped))
  text = re.sub(r"```[a-zA-Z]*", "\n", text)  # fences anywhere, also glued to the last answer
  items: list = []
  for m in _LABELLED.finditer(text):
    items.append(_item(*map(_clean, m.groups())))
  starts = len(re.findall(_ITEM_START, text, re.I))
  if not items:
    starts = 0
    items = _table_items(text) or _question_line_items(text)
  pairs, dropped = _tally(items)
  if pairs and starts > len(items):  # a labelled question with no answer label after it
    dropped["missing_field"] += starts - len(items)
  return Parsed(pairs, "salvaged" if pairs else "garbage", dict(dropped))


def _clean(cell: str) -> str:
  return " ".join(cell.strip(" *\"'").split())


def _item(q: str, a: str) -> tuple[str, str] | str:
  """(q, a), or the PARSE_DROPS reason when either is empty: one rule for every format."""
  return "empty_question" if not q else "empty_answer" if not a else (q, a)


def _table_items(text: str) -> list[tuple[str, str] | str]:
  """Rows of a markdown table: the columns headed प्रश्न/question and उत्तर/answer, else the cell
  ending in "?" and the one after it."""
  rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
          if line.strip().startswith("|") and line.strip().count("|") >= 3]
  rows = [r for r in rows if not all(_TABLE_SEPARATOR.fullmatch(c) or not c for c in r)]
  if not rows:
    return []
  q_col = next((i for i, c in enumerate(rows[0]) if _Q_HEADER.fullmatch(c)), None)
  a_col = next((i for i, c in enumerate(rows[0]) if _A_HEADER.fullmatch(c)), None)
  items: list = []
  for row in rows[1:] if q_col is not None and a_col is not None else rows:
    if q_col is not None and a_col is not None:
      q, a = (_clean(row[i]) if i < len(row) else "" for i in (q_col, a_col))
    else:
      i = next((i for i, c in enumerate(row) if c.rstrip(" *").endswith(("?", "？"))), None)
      if i is None:
        continue
      q, a = _clean(row[i]), _clean(row[i + 1]) if i + 1 < len(row) else ""
    items.append(_item(q, a))
  return items


def _question_line_items(text: str) -> list[tuple[str, str] | str]:
  """A line that is a question ("**1. ...?**", "2) ...?", "- ...?") and the lines under it as its answer."""
  items: list = []
  question, answer = None, []
  for line in text.splitlines() + [""]:
    m = _QUESTION_LINE.fullmatch(line)
    if m or not line.strip() and answer:
      if question is not None and answer:
        items.append((question, _clean(" ".join(answer))))
      question, answer = (_clean(m.group(1)) if m else None), []
    elif line.strip() and question is not None:
      answer.append(line)
  return [x for x in items if x[0] and x[1]]


_YES = {"yes", "true", "accept", "keep", "हाँ", "हां", "सही", "स्वीकार"}
_NO = {"no", "false", "reject", "drop", "नहीं", "गलत", "ग़लत", "अस्वीकार"}


def parse_verdict(text: str | None) -> bool | None:
  """Judge verdict from {"verdict": "yes"|"no", ...}; True/False, or None when unreadable."""
  if not text:
    return None
  for candidate in _json_candidates(text):
    try:
      value = _decode_first(candidate)
    except ValueError:
      continue
    if isinstance(value, dict):
      verdict = next((v for k, v in value.items() if str(k).strip().lower() in ("verdict", "निर्णय")), None)
      if isinstance(verdict, bool):
        return verdict
      if isinstance(verdict, str):
        word = verdict.strip().lower().strip(".।!")
        if word in _YES:
          return True
        if word in _NO:
          return False
  return None
