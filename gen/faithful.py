"""Faithfulness of one answer to its context and question: facts, grounding, restating.

Everything compares *folded* tokens (`stem`): NFD, digits as ASCII, every combining mark dropped
(matras, nukta, anusvara/chandrabindu, virama) and long vowels folded. That is a crude Hindi stemmer
on purpose: जाता/जाती/जाते, मंदिर/मंदिरों and क़िला/किला each fold to one key, so a faithful
paraphrase that re-inflects the context's words still matches it.

- facts: numbers by value (gen/numbers.py: digits of either script, number words, fractions,
  ordinals: "पाँच सौ" = 500, "ढाई" = 2.5, "१९८६" = 1986), month and weekday names (dates), and named
  entities (gen/names.py: runs of words neither the context nor a Hindi common-word list contains).
  Every fact of the answer must occur in the context.
- grounding: the share of the answer's content stems found in its best window of up to three
  adjacent context sentences (support precision). F1 against a sentence punished short, faithful
  answers; precision only asks that what the answer says is in the text.
- restating: what the answer adds beyond the question's own words must be non-empty; when/how-many
  questions need a number or time word among it, where-questions a place.
"""
from __future__ import annotations

import functools
import re
import unicodedata

from gen import names, numbers as num
from gen.text import STOPWORDS, split_sentences

_VOWEL_FOLD = str.maketrans({"ई": "इ", "ऊ": "उ", "ऐ": "ए", "औ": "ओ", "ॠ": "ऋ", "आ": "अ"})
# Words are runs of Devanagari letters and marks (no danda, no digits) or of Latin letters; numbers
# keep their decimal point and thousands commas.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[\u0900-\u0963\u0971-\u097F\u200c\u200d]+|[a-z]+")


# Everyday synonyms a faithful paraphrase swaps in (ज़्यादा for अधिक): folded to one word before stemming.
_SYNONYMS = {"ज्यादा": "अधिक", "ज़्यादा": "अधिक", "तकरीबन": "लगभग", "करीब": "लगभग", "क़रीब": "लगभग",
             "मशहूर": "प्रसिद्ध", "विख्यात": "प्रसिद्ध", "दाम": "कीमत", "क़ीमत": "कीमत", "मूल्य": "कीमत",
             "आरंभ": "शुरू", "प्रारंभ": "शुरू", "मंदिरों": "मंदिर", "श्रद्धालु": "भक्त", "यात्री": "पर्यटक",
             "सैलानी": "पर्यटक", "पुराना": "प्राचीन", "पुरानी": "प्राचीन", "पुराने": "प्राचीन", "दर्शनार्थी": "भक्त"}


@functools.lru_cache(maxsize=1 << 16)
def stem(token: str) -> str:
  """Fold one token: synonyms, digits ASCII, all combining marks and ZWJ/ZWNJ dropped, long vowels short."""
  token = _SYNONYMS.get(unicodedata.normalize("NFC", token), token)
  text = unicodedata.normalize("NFD", token.lower()).translate(num.DIGITS)
  text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "M" and ch not in "\u200c\u200d")
  text = text.translate(_VOWEL_FOLD)
  # With the matras gone, the commonest inflections leave one consonant: देखने/देखना -> दखन,
  # पुजारियों -> पजरय, देखकर -> दखकर. Strip it from longer words so they meet their base form.
  if len(text) >= 5 and text.endswith("कर"):
    return text[:-2]
  if len(text) >= 4 and text[-1] in "नय":
    return text[:-1]
  return text


@functools.lru_cache(maxsize=1 << 12)  # a context is tokenised for every pair of it
def tokens(text: str) -> tuple[str, ...]:
  """Words and numbers of a text in order (NFC, lower case, digits ASCII)."""
  return tuple(_TOKEN.findall(num.canonical(unicodedata.normalize("NFC", text)).lower().translate(num.DIGITS)))


_STOP_STEMS = frozenset(stem(w) for w in STOPWORDS) | frozenset(stem(w) for w in (
  "कौन कौनसा कौनसी कौनसे क्या कब कहाँ कहां किस किसे किसको किन किसका किसकी किसके किसने कैसे कैसा कैसी "
  "क्यों कितना कितनी कितने इसे उसे इसका उसका इसकी उसकी इसके उसके यहाँ वहाँ जहाँ अपना अपनी अपने "
  "सकता सकती सकते जा जाना हुआ हुई हुए होती होते बहुत लगभग करीब तक वाले वाली वाला साथ द्वारा "
  "बाद पहले जैसे जब तब कुछ सभी सब कोई किसी ओर अंदर बाहर ऊपर नीचे सन् सन ई ईस्वी").split())


def content_stems(text: str) -> list[str]:
  """Folded tokens without function words and interrogatives."""
  return [s for s in map(stem, tokens(text)) if s and s not in _STOP_STEMS]


@functools.lru_cache(maxsize=1 << 12)  # once per context, not once per pair of it
def context_stems(context: str) -> frozenset[str]:
  """Folded tokens of a context, function words included."""
  return frozenset(map(stem, tokens(context)))


# ---------------------------------------------------------------- facts

_light = num.fold  # dates keep their vowel signs
_DATE_WORDS = frozenset(_light(w) for w in (  # whole words: चैत्र and चित्र share a stem
  "जनवरी फ़रवरी फरवरी मार्च अप्रैल मई जून जुलाई अगस्त सितंबर सितम्बर अक्टूबर नवंबर नवम्बर दिसंबर दिसम्बर "
  "चैत्र वैशाख ज्येष्ठ आषाढ़ श्रावण सावन भाद्रपद भादो आश्विन कार्तिक मार्गशीर्ष अगहन पौष माघ फाल्गुन फागुन "
  "सोमवार मंगलवार बुधवार गुरुवार बृहस्पतिवार शुक्रवार शनिवार रविवार").split())
_QUANTITY_WORDS = frozenset(stem(w) for w in "लाखों हज़ारों हजारों सैकड़ों करोड़ों दर्जनों".split())
_TIME_WORDS = frozenset(map(stem, _DATE_WORDS)) | frozenset(stem(w) for w in (
  "सुबह शाम रात दोपहर सूर्योदय सूर्यास्त बजे बजकर दिन सप्ताह महीने महीना साल वर्ष सदी शताब्दी ईस्वी सन् "
  "प्रतिदिन रोज़ रोज हमेशा त्योहार पर्व पूर्णिमा अमावस्या दिवाली देव दीपावली होली ऋतु सर्दी गर्मी बरसात मौसम").split())
_LOCATIVES = frozenset(stem(w) for w in "में पर पास किनारे निकट समीप सामने बीच पीछे दूर भीतर अंदर ऊपर नीचे बाहर".split())
# "free" answers a how-much question without a number: मुफ़्त, निःशुल्क, or a fee word with a negation
_FREE = frozenset(stem(w) for w in "मुफ़्त मुफ्त निःशुल्क निशुल्क फ्री".split())
_FEE = frozenset(stem(w) for w in "शुल्क पैसा पैसे किराया टिकट कीमत".split())
_NEGATION = frozenset(stem(w) for w in "नहीं बिना".split())
# Words a Hindi sentence cannot end on: genitives, the ergative, conjunctions, relatives, the article.
_DANGLING = frozenset("का की के ने और तथा एवं या कि जो जिसमें जिसे जिसका जिसकी जिसके क्योंकि लेकिन परंतु किंतु एक".split())
_SENTENCE_FINAL = ("।", "॥", ".", "?", "!", "?", "\"", "'", ")")


def numbers(text: str) -> frozenset[float]:
  """Numbers a text states, by value (gen/numbers.py)."""
  return num.values(text)


def unsupported_numbers(answer: str, context: str) -> list[str]:
  """Numbers and dates of the answer that the context does not state."""
  bad = [num.fmt(n) for n in sorted(numbers(answer) - numbers(context))]
  ctx_words = _light_words(context)
  return bad + sorted(e for e in {_light(t) for t in tokens(answer)} & _DATE_WORDS if e not in ctx_words)


@functools.lru_cache(maxsize=1 << 12)  # once per context
def _light_words(context: str) -> frozenset[str]:
  return frozenset(_light(t) for t in tokens(context))


def unsupported_entities(answer: str, context: str, known: tuple[str, ...] = ()) -> list[str]:
  """Named entities of the answer (not dates: unsupported_numbers) that the context and `known` lack (gen/names.py)."""
  return [e for e in names.unsupported(answer, context, known) if not set(e.split()) & _DATE_WORDS]


# ---------------------------------------------------------------- grounding and restating

def _wordy_stems(text: str) -> list[str]:
  # content stems without numbers: 45 and पैंतालीस are one fact, which unsupported_numbers compares by value
  return [stem(t) for t in tokens(text) if stem(t) not in _STOP_STEMS and not t[0].isdigit()]


def grounding_score(answer: str, context: str, window: int = 3) -> float:
  """Share of the answer's content stems (numbers aside) in its best window of <= `window` adjacent sentences."""
  ans = _wordy_stems(answer)
  if not ans:
    return 1.0 if content_stems(answer) else 0.0  # only numbers: judged by unsupported_numbers alone
  sents = _sentence_stems(context)
  best = 0
  for i in range(len(sents)):
    covered: set[str] = set()
    for s in sents[i:i + window]:
      covered |= s
      best = max(best, sum(t in covered for t in ans))
  return best / len(ans)


@functools.lru_cache(maxsize=1 << 12)  # once per context
def _sentence_stems(context: str) -> tuple[frozenset[str], ...]:
  return tuple(frozenset(_wordy_stems(s)) for s in split_sentences(context))


def new_content_support(question: str, answer: str, context: str) -> float:
  """Share of what the answer adds beyond the question (numbers aside: they are checked by value) found in the context."""
  ctx = context_stems(context)
  asked = set(content_stems(question))
  new = [s for s in _wordy_stems(answer) if s not in asked]
  return sum(s in ctx for s in new) / len(new) if new else 1.0


def new_content(question: str, answer: str) -> list[str]:
  """The answer's content stems that the question does not already contain."""
  asked = set(content_stems(question))
  return [s for s in content_stems(answer) if s not in asked]


_WHEN, _HOW_MANY, _WHERE = (frozenset(stem(w) for w in ws.split()) for ws in (
  "कब", "कितना कितनी कितने", "कहाँ कहां किधर"))
_WHERE_PHRASE = re.compile(r"किस\s+(?:शहर|जगह|स्थान|घाट|राज्य|जिले|ज़िले|देश|गली|इलाके|क्षेत्र)")


def restatement(question: str, answer: str) -> str:
  """Why the answer does not answer the question ("" when it does)."""
  new = new_content(question, answer)
  if not new:
    return "adds nothing beyond the question's words"
  q = {stem(t) for t in tokens(question)}
  new_set = set(new)
  ans_stems = {stem(t) for t in tokens(answer)}
  free = bool(ans_stems & _FREE or ans_stems & _FEE and ans_stems & _NEGATION)
  if q & _HOW_MANY and not (numbers(answer) or new_set & _QUANTITY_WORDS or free):
    return "how-many question without a number"
  if q & _WHEN and not (numbers(answer) or new_set & _TIME_WORDS):
    return "when-question without a number or time word"
  if q & _WHERE or _WHERE_PHRASE.search(unicodedata.normalize("NFC", question)):
    # a place is a new word up to three words before a locative ("वाराणसी के चौक इलाके में");
    # "कहाँ से" (from where) is answered by "X से"
    # "कहाँ का/की/के" (of where) by "X का/की/के"
    locatives = _LOCATIVES | ({stem("से")} if "से" in tokens(question) else set())
    if re.search(r"(?:कहाँ|कहां)\s+(?:का|की|के)(?!\S)", unicodedata.normalize("NFC", question)):
      locatives |= {stem(w) for w in ("का", "की", "के")}
    ans = [stem(t) for t in tokens(answer)]
    places = {ans[j] for i, s in enumerate(ans) if s in locatives for j in range(max(0, i - 3), i)}
    if not places & new_set:
      return "where-question without a new place"
  return ""


def incomplete(answer: str, cut_by_length: bool = False) -> str:
  """Why the answer stops mid-phrase ("" when it is complete): it ends on a word no Hindi sentence
  ends on (a genitive, ने, a conjunction), or it is the last answer of an output the length limit
  cut and has no sentence-final mark."""
  text = unicodedata.normalize("NFC", answer).strip()
  if text.endswith(_SENTENCE_FINAL):
    return ""
  words = re.findall(r"[\u0900-\u0963\u0971-\u097F]+", text)
  if words and words[-1] in _DANGLING:
    return f"ends mid-phrase on {words[-1]!r}"
  if cut_by_length:
    return "last answer of an output cut by the length limit, no sentence-final mark"
  return ""
