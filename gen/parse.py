"""Robust parsing of teacher outputs into (question, answer) pairs, and of judge verdicts.

Teachers rarely return exactly the JSON asked for. In order, `parse_pairs` tries:
1. the JSON value after any code fence or prose (a list, a single object, or an object wrapping
   a list such as {"pairs": [...]} which json_object response formats force);
2. salvage: every complete {...} object in a broken or truncated JSON text;
3. labelled lines: "1. प्रश्न: ... उत्तर: ..." (also Q:/A:, सवाल/जवाब), on one line or several.
Keys are matched loosely (question/q/prashn/प्रश्न..., answer/a/uttar/उत्तर...).
"""
from __future__ import annotations

import dataclasses
import json
import re

_Q_KEYS = {"question", "q", "ques", "prashn", "prashna", "prasna", "प्रश्न", "सवाल", "sawal", "query"}
_A_KEYS = {"answer", "a", "ans", "uttar", "uttara", "उत्तर", "जवाब", "jawab", "response"}
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|\Z)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_Q_LABEL = r"(?:प्रश्न|सवाल|question|ques|q)"
_A_LABEL = r"(?:उत्तर|जवाब|answer|ans|a)"
# A labelled question starts a line (after an optional "1." / "2)" / "-" marker and ** bold marks).
_LABELLED = re.compile(
  r"(?:^|\n)[ \t]*(?:[-*•]|\d+[.)])?[ \t]*\**" + _Q_LABEL + r"\**[ \t]*\d*[ \t]*\**[:：.)-]\**[ \t]*(.+?)"
  r"\s*(?<=[\s*|?।.)])\**" + _A_LABEL + r"\**[ \t]*\d*[ \t]*\**[:：.)-]\**[ \t]*(.+?)"
  r"(?=\n[ \t]*(?:[-*•]|\d+[.)])?[ \t]*\**" + _Q_LABEL + r"\**[ \t]*\d*[ \t]*\**[:：.)-]|\n\s*\n|\Z)",
  re.S | re.I)


@dataclasses.dataclass(frozen=True)
class Parsed:
  pairs: list[tuple[str, str]]  # (question, answer), stripped, both non-empty
  status: str  # ok (clean JSON) | salvaged (repaired or non-JSON format) | garbage (nothing usable)


def _pair_from(obj: object) -> tuple[str, str] | None:
  if not isinstance(obj, dict):
    return None
  q = a = None
  for key, value in obj.items():
    k = str(key).strip().lower()
    if k in _Q_KEYS and q is None:
      q = value
    elif k in _A_KEYS and a is None:
      a = value
  if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
    return None
  return " ".join(q.split()), " ".join(a.split())


def _pairs_from_value(value: object) -> list[tuple[str, str]] | None:
  """Pairs from a decoded JSON value; None when its shape is not a QA list at all."""
  if isinstance(value, dict):
    single = _pair_from(value)
    if single:
      return [single]
    lists = [v for v in value.values() if isinstance(v, list)]
    if len(lists) == 1:  # a wrapper object like {"pairs": [...]}
      value = lists[0]
    else:
      return None
  if isinstance(value, list):
    return [p for p in map(_pair_from, value) if p]
  return None


def _json_candidates(text: str) -> list[str]:
  fenced = [m.group(1) for m in _FENCE.finditer(text) if m.group(1).strip()]
  return fenced + [text]


def _decode_first(text: str) -> object:
  """Decode the first JSON list or object in text, ignoring prose before and after it."""
  decoder = json.JSONDecoder()
  for match in re.finditer(r"[\[{]", text):
    for candidate in (text[match.start():], _TRAILING_COMMA.sub(r"\1", text[match.start():])):
      try:
        return decoder.raw_decode(candidate)[0]
      except json.JSONDecodeError:
        continue
  raise ValueError("no JSON value")


def _complete_objects(text: str) -> list[str]:
  """Every balanced {...} substring (any depth), scanning strings and escapes correctly."""
  found, starts, in_str, esc = [], [], False, False
  for i, ch in enumerate(text):
    if in_str:
      if esc:
        esc = False
      elif ch == "\\":
        esc = True
      elif ch == '"':
        in_str = False
    elif ch == '"':
      in_str = True
    elif ch == "{":
      starts.append(i)
    elif ch == "}" and starts:
      found.append(text[starts.pop():i + 1])
  return found


def parse_pairs(text: str | None) -> Parsed:
  """Parse one teacher response; never raises."""
  if not text or not text.strip():
    return Parsed([], "garbage")
  decoded: list[tuple[str, str]] = []
  for candidate in _json_candidates(text):
    try:
      decoded = _pairs_from_value(_decode_first(candidate)) or []
    except ValueError:
      continue
    if decoded:
      break
  salvaged = []
  for obj_text in _complete_objects(text):
    try:
      pair = _pair_from(json.loads(_TRAILING_COMMA.sub(r"\1", obj_text)))
    except json.JSONDecodeError:
      continue
    if pair and pair not in salvaged:
      salvaged.append(pair)
  # A truncated list decodes only as its first inner object: the salvage then finds more.
  if decoded and len(decoded) >= len(salvaged):
    return Parsed(decoded, "ok")
  if not salvaged:
    for m in _LABELLED.finditer(text):
      q, a = (" ".join(g.strip(" *\"'").split()) for g in m.groups())
      if q and a:
        salvaged.append((q, a))
  return Parsed(salvaged, "salvaged" if salvaged else "garbage")


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
