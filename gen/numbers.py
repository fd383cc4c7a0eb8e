"""Numbers in Hindi text as values: ASCII and Devanagari digits, number words, ordinals, fractions.

One reader used by faithfulness, conflicts, near-duplicates and question types, so that "१९८६",
"1986" and "उन्नीस सौ छियासी" are one value, and "चौदह" in an answer matches "14" in a context.
Reads: digits with decimal points and Indian or Western grouping (`3.8`, `१,००,०००`, `2,500`);
cardinal words 0-99 (common spelling variants) with सौ, हज़ार, लाख, करोड़, अरब, digits times a
multiplier (`2 लाख`); fractions आधा/आधी/आधे, डेढ़, ढाई, पौना and the prefixes सवा (+1/4), साढ़े
(+1/2), पौने (-1/4) (`साढ़े तीन सौ` = 350); ordinals (पहला, तीसरी, पाँचवाँ, बीसवीं, `16वीं`);
ranges give both ends (`10-15`, `दस से पंद्रह`, `दो-तीन`).
Not numbers: a lone "एक" (also the article "a"; before a unit such as घंटा or किलोमीटर it is 1), पहले/दूसरे ("before", "other"), a number word
naming a place (`अस्सी घाट`), quantity words (`हज़ारों`).

Written here rather than taken from a library: the maintained Indic inverse-text-normalisation
packages (indic-itn) turn `अस्सी घाट` into `80 घाट` and the article एक into 1, and read no ordinals
or आधा/आधे; AI4Bharat's indic-numtowords (numbers to words) is the reference the tests check against.
"""
from __future__ import annotations

import functools
import re
import unicodedata

DIGITS = str.maketrans("०१२३४५६७८९", "0123456789")  # str.translate table: Devanagari digits as ASCII
_CARDINALS = (
  "शून्य एक दो तीन चार पाँच छह सात आठ नौ दस ग्यारह बारह तेरह चौदह पंद्रह सोलह सत्रह अठारह उन्नीस "
  "बीस इक्कीस बाईस तेईस चौबीस पच्चीस छब्बीस सत्ताईस अट्ठाईस उनतीस तीस इकतीस बत्तीस तैंतीस चौंतीस "
  "पैंतीस छत्तीस सैंतीस अड़तीस उनतालीस चालीस इकतालीस बयालीस तैंतालीस चौवालीस पैंतालीस छियालीस "
  "सैंतालीस अड़तालीस उनचास पचास इक्यावन बावन तिरपन चौवन पचपन छप्पन सत्तावन अट्ठावन उनसठ साठ इकसठ "
  "बासठ तिरसठ चौंसठ पैंसठ छियासठ सड़सठ अड़सठ उनहत्तर सत्तर इकहत्तर बहत्तर तिहत्तर चौहत्तर पचहत्तर "
  "छिहत्तर सतहत्तर अठहत्तर उन्यासी अस्सी इक्यासी बयासी तिरासी चौरासी पचासी छियासी सत्तासी अट्ठासी "
  "नवासी नब्बे इक्यानबे बानबे तिरानबे चौरानबे पचानबे छियानबे सत्तानबे अट्ठानबे निन्यानबे").split()
# Other spellings in use (index = value).
_VARIANTS = {"पांच": 5, "छः": 6, "छे": 6, "पन्द्रह": 15, "अट्ठारह": 18, "चौंतालीस": 44, "तिरेपन": 53,
             "तिरेसठ": 63, "छयासठ": 66, "सरसठ": 67, "अठासी": 88, "इक्यानवे": 91, "बानवे": 92, "तिरानवे": 93,
             "चौरानवे": 94, "पचानवे": 95, "छियानवे": 96, "सत्तानवे": 97, "अट्ठानवे": 98, "निन्यानवे": 99}
_FRACTIONS = {"आधा": 0.5, "आधी": 0.5, "आधे": 0.5, "डेढ़": 1.5, "डेढ": 1.5, "ढाई": 2.5, "अढ़ाई": 2.5,
              "पौना": 0.75, "पौनी": 0.75, "चौथाई": 0.25}
_PREFIXES = {"सवा": 0.25, "साढ़े": 0.5, "पौने": -0.25}  # added to the number that follows
_MULTIPLIERS = {"सौ": 100, "हज़ार": 1000, "हजार": 1000, "लाख": 10 ** 5, "करोड़": 10 ** 7, "अरब": 10 ** 9}
_ORDINALS = {"पहला": 1, "पहली": 1, "दूसरा": 2, "दूसरी": 2, "तीसरा": 3, "तीसरी": 3, "तीसरे": 3, "चौथा": 4,
             "चौथी": 4, "चौथे": 4, "छठा": 6, "छठी": 6, "छठे": 6}
_ORDINAL_SUFFIX = re.compile(r"(.+?)(?:वाँ|वां|वीं|वी|वें|वे)$")
_DIGIT_ORDINAL = re.compile(r"(\d+)(?:वाँ|वां|वीं|वी|वें|वे|st|nd|rd|th)$")
# A number word before one of these names a place (अस्सी घाट, चौरासी घाट as names), not a count.
NAME_HEADS = frozenset("घाट कुंड कुण्ड गली".split())


@functools.lru_cache(maxsize=1 << 16)
def fold(word: str) -> str:
  """Light spelling fold for number words: NFC, nukta dropped, chandrabindu as anusvara."""
  text = unicodedata.normalize("NFD", word).replace("\u093c", "").replace("\u0901", "\u0902")
  return unicodedata.normalize("NFC", text)


_UNITS = {fold(w): float(v) for w, v in [*((w, i) for i, w in enumerate(_CARDINALS)), *_VARIANTS.items(),
                                          *_FRACTIONS.items()]}
_MULT = {fold(w): v for w, v in _MULTIPLIERS.items()}
_PREFIX = {fold(w): v for w, v in _PREFIXES.items()}
_ORD = {fold(w): v for w, v in _ORDINALS.items()}
_HEADS = frozenset(map(fold, NAME_HEADS))
# "एक" before a unit is the number one ("एक घंटा", "एक किलोमीटर"); elsewhere it is the article.
_MEASURE = frozenset(map(fold, (
  "घंटा घंटे मिनट सेकंड दिन सप्ताह हफ़्ता हफ़्ते महीना महीने साल वर्ष सदी शताब्दी किलोमीटर किमी मीटर फ़ुट फुट "
  "किलो किलोग्राम लीटर रुपया रुपये रुपए प्रतिशत बार").split()))
_FRACTION_WORDS = frozenset(map(fold, _FRACTIONS))
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*(?:वाँ|वां|वीं|वी|वें|वे|st|nd|rd|th)?|[\u0900-\u0963\u0971-\u097F]+|[A-Za-z]+")


def _digits(token: str) -> float | None:
  if not token[0].isdigit():
    return None
  t = token.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{2,3})+", token) else token.replace(",", ".")
  try:
    return float(t)
  except ValueError:
    return None


def ordinal(word: str) -> float | None:
  """Value of an ordinal word (तीसरा 3, पाँचवाँ 5, बीसवीं 20, 16वीं 16), else None."""
  w = fold(word)
  if w in _ORD:
    return float(_ORD[w])
  m = _DIGIT_ORDINAL.fullmatch(w)
  if m:
    return float(m.group(1))
  m = _ORDINAL_SUFFIX.fullmatch(w)
  base = m.group(1) if m else ""
  if base in _MULT:
    return float(_MULT[base])
  if base in _UNITS and base not in _FRACTION_WORDS:
    return _UNITS[base]
  return None


def spans(text: str) -> list[tuple[int, int, float]]:
  """(start, end, value) of every number in `text` (character offsets into `text` itself)."""
  toks = [(m.start(), m.end(), fold(m.group().translate(DIGITS))) for m in _TOKEN.finditer(text)]
  out: list[tuple[int, int, float]] = []
  i = 0
  while i < len(toks):
    j, total, current, prefix, last, words = i, 0.0, None, 0.0, "", 0
    while j < len(toks):
      w = toks[j][2]
      # words must be adjacent (only spaces between): "दस, बीस" and "10-15" are two numbers
      if j > i and text[toks[j - 1][1]:toks[j][0]].strip():
        break
      num = _digits(w)
      if num is not None and j == i:
        current, last = num, "num"
      elif w in _PREFIX and last in ("", "mult"):
        prefix, last = _PREFIX[w], "prefix"
      elif w in _UNITS and last in ("", "prefix", "mult"):
        if j + 1 < len(toks) and toks[j + 1][2] in _HEADS and last == "":
          break  # अस्सी घाट: a name
        current, last, words = (current or 0.0) + _UNITS[w] + prefix, "unit", words + 1
        prefix = 0.0
      elif w in _MULT and last in ("", "num", "unit", "prefix"):
        base = 1.0 + prefix if last in ("", "prefix") else current  # सौ = 100, सवा सौ = 125
        current, prefix, last, words = base * _MULT[w], 0.0, "mult", words + 1
        if _MULT[w] >= 1000:
          total, current = total + current, None
      else:
        break
      j += 1
    if last == "prefix":  # सवा alone: 1¼
      current = (current or 0.0) + 1.0 + prefix
    value = total + (current or 0.0)
    lone_article = words == 1 and j == i + 1 and toks[i][2] == "एक" and not (j < len(toks) and toks[j][2] in _MEASURE)
    if j > i and not lone_article:
      out.append((toks[i][0], toks[j - 1][1], round(value, 6)))
      i = j
      continue
    val = ordinal(toks[i][2])
    if val is not None:
      out.append((toks[i][0], toks[i][1], val))
    i += 1
  return out


def fmt(value: float) -> str:
  """A value as the canonical digit string (45, 2.5, 1986)."""
  return str(int(value)) if value == int(value) else repr(value)


@functools.lru_cache(maxsize=1 << 12)  # contexts are read once per pair: cache them
def values(text: str) -> frozenset[float]:
  """The numbers a text states, by value."""
  return frozenset(v for _, _, v in spans(text))


@functools.lru_cache(maxsize=1 << 12)
def canonical(text: str) -> str:
  """`text` with every number written as ASCII digits ("ढाई हज़ार रुपये" -> "2500 रुपये")."""
  out, pos = [], 0
  for start, end, value in spans(text):
    out += [text[pos:start], fmt(value)]
    pos = end
  return "".join(out) + text[pos:]
