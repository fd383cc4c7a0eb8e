"""Hindi text helpers for curation: n-grams, token F1, sentences (normalisation and the Devanagari
ratio are the readers', in hinqa_jax/records.py).

Numbers are written as their values first (gen/numbers.py: "चौदह", "१४" and "14" are one token).
Two normal forms are used on purpose:
- `norm_tokens` (NFC, lower case, no punctuation) is what token F1 and n-gram overlap compare;
- `loose_key` also strips every vowel sign, nukta, anusvara and virama and sorts the token set, so
  questions that differ only in matras (ि vs ी), nukta spellings (ज़ vs ज), punctuation or word order
  get the same or nearly the same key; near-duplicate detection compares these keys.
"""
from __future__ import annotations

import collections
import re
import unicodedata

from gen.numbers import DIGITS, canonical

# Sentence ends: danda, double danda, ? and !, newlines, and a full stop that is not a decimal point.
_SENTENCE_END = re.compile(r"[।॥?!\n]+|(?<!\d)\.(?!\d)")
# Independent long vowels written for their short form (and vice versa) in loose spelling.
_VOWEL_FOLD = str.maketrans({"ई": "इ", "ऊ": "उ", "ऐ": "ए", "औ": "ओ", "ॠ": "ऋ", "आ": "अ"})
# Function words that make any two Hindi sentences look alike; dropped when scoring content overlap.
STOPWORDS = frozenset(
  "है हैं था थे थी थीं हो होता होती होते होना की का के में से को पर और भी यह वह ये वे इस उस इन उन "
  "एक ने तो ही कि जो या लिए किया किए करता करती करते जाता जाती जाते गया गई गए रहा रही रहे".split())


def _strip_punct(text: str) -> str:
  # Keep letters, marks and digits of any script; everything else separates tokens.
  return "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)


def norm_tokens(text: str) -> list[str]:
  """Tokens for F1 and n-gram overlap: NFC, lower case, digits as ASCII, punctuation removed."""
  text = canonical(unicodedata.normalize("NFC", text)).lower().translate(DIGITS)
  return _strip_punct(text).split()


def content_tokens(text: str) -> list[str]:
  """`norm_tokens` without Hindi function words (falls back to all tokens if none is left)."""
  toks = norm_tokens(text)
  kept = [t for t in toks if t not in STOPWORDS]
  return kept or toks


# The auxiliary (है, था, थीं ...) never changes what a question asks: left out of loose keys.
_AUXILIARY_KEYS = frozenset({"ह", "थ"})


def loose_key(text: str) -> str:
  """Spelling-, punctuation- and order-insensitive key: matra-stripped sorted token set, no auxiliary."""
  text = unicodedata.normalize("NFD", canonical(unicodedata.normalize("NFC", text))).lower().translate(DIGITS)
  # NFD splits precomposed nukta letters (क़ -> क + ़); dropping every combining mark then removes
  # matras, nukta, candrabindu, anusvara, visarga and virama in one pass.
  text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "M").translate(_VOWEL_FOLD)
  return " ".join(sorted(set(_strip_punct(text).split()) - _AUXILIARY_KEYS))


# Interrogatives decide what a question asks: "कब" vs "कहाँ" with the same frame are two questions.
# Keys are light-folded (see _light_fold) so ि/ी-style misspellings still map.
_QUESTION_WORDS = {
  "कब": "when", "कहा": "where", "किधर": "where", "कोन": "who", "कोनसा": "who", "कोनसि": "who",
  "कोनसे": "who", "क्या": "what", "कितना": "how_many", "कितनि": "how_many", "कितने": "how_many",
  "किस": "which", "किसे": "which", "किसको": "which", "किन": "which", "किन्हे": "which", "किसका": "which",
  "किसकि": "which", "किसके": "which", "किसने": "which", "केसे": "how", "केसा": "how", "केसि": "how",
  "क्यो": "why", "क्यु": "why"}
_LIGHT_FOLD = str.maketrans({"ी": "ि", "ू": "ु", "ै": "े", "ौ": "ो", "ँ": None, "ं": None, "़": None})


def _light_fold(token: str) -> str:
  return unicodedata.normalize("NFD", token).translate(_LIGHT_FOLD)


def question_type(text: str) -> frozenset[str]:
  """The kinds of interrogative a question uses (when, where, who, what, how_many, which, how, why)."""
  return frozenset(_QUESTION_WORDS[t] for t in map(_light_fold, norm_tokens(text)) if t in _QUESTION_WORDS)


_DEDUP_DROP = dict.fromkeys(map(ord, "\u093c\u200c\u200d"))  # nukta, ZWNJ, ZWJ


def dedup_form(text: str) -> str:
  """Normal form for near-duplicate keys: numbers as values, NFD, nukta and ZWJ/ZWNJ dropped, chandrabindu as
  anusvara, digits ASCII, danda and all punctuation as spaces, lower case, single spaces."""
  text = canonical(unicodedata.normalize("NFC", text))
  text = unicodedata.normalize("NFD", text).lower().translate(DIGITS).translate(_DEDUP_DROP)
  text = text.replace("\u0901", "\u0902")
  return " ".join(_strip_punct(unicodedata.normalize("NFC", text)).split())


def char_ngrams(text: str, n: int = 3) -> set[str]:
  """Set of character n-grams (the whole string if shorter than n)."""
  if len(text) <= n:
    return {text} if text else set()
  return {text[i:i + n] for i in range(len(text) - n + 1)}


def word_ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
  """Set of word n-grams of a token list."""
  return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set, b: set) -> float:
  """|a & b| / |a | b|, 1.0 for two empty sets."""
  if not a and not b:
    return 1.0
  return len(a & b) / len(a | b)


def token_f1(pred: list[str], ref: list[str]) -> float:
  """SQuAD-style bag-of-tokens F1 between two token lists."""
  common = collections.Counter(pred) & collections.Counter(ref)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision, recall = overlap / len(pred), overlap / len(ref)
  return 2 * precision * recall / (precision + recall)


def split_sentences(text: str) -> list[str]:
  """Split on ।, ॥, ?, !, newlines and non-decimal full stops; empty pieces dropped."""
  return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def answer_agreement(question_a: str, answer_a: str, question_b: str, answer_b: str) -> float:
  """F1 of what two answers add beyond their questions (content tokens not in either question).

  Answers to one question share its words ("आरती में ... पुजारी भाग लेते हैं"); only the rest
  carries the fact, so "सात पुजारी" vs "पाँच पुजारी" scores 0 here while plain F1 is high.
  """
  asked = set(content_tokens(question_a)) | set(content_tokens(question_b))
  new_a = [t for t in content_tokens(answer_a) if t not in asked]
  new_b = [t for t in content_tokens(answer_b) if t not in asked]
  if not new_a and not new_b:
    return 1.0  # both only restate the question: nothing to disagree on
  return token_f1(new_a, new_b) if new_a and new_b else 0.0
