"""Corpus-wide near-duplicate pairs: datasketch MinHash LSH over character n-grams of normalised text.

Keys are `text.dedup_form(question + " | " + answer)`, so nukta, chandrabindu/anusvara, ZWJ/ZWNJ,
danda and digit-script variants of one pair collide. LSH proposes candidates; the exact Jaccard of
the n-gram sets confirms them, so a banding false positive never drops a pair.
"""
from __future__ import annotations

from datasketch import MinHash, MinHashLSH

from gen.text import char_ngrams, dedup_form, jaccard

NUM_PERM = 128  # hash functions per signature: estimate error ~ 1/sqrt(128) ~ 0.09 before the exact check


def pair_grams(question: str, answer: str, n: int) -> set[str]:
  """Character n-grams of a pair's dedup form."""
  return char_ngrams(dedup_form(question + " | " + answer), n)


class NearDuplicates:
  """Insert kept pairs one by one; `find` returns the most similar earlier pair at/above threshold."""

  def __init__(self, threshold: float, ngram: int):
    self.threshold, self.ngram = threshold, ngram
    self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    self.grams: dict[str, set[str]] = {}

  def _signature(self, grams: set[str]) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch(g.encode("utf-8") for g in sorted(grams))
    return m

  def find(self, grams: set[str]) -> tuple[str, float]:
    """(key, exact Jaccard) of the closest inserted pair at/above threshold; ("", 0.0) if none."""
    if not grams:
      return "", 0.0
    best = ("", 0.0)
    for key in sorted(self.lsh.query(self._signature(grams))):
      score = jaccard(grams, self.grams[key])
      if score >= self.threshold and score > best[1]:
        best = (key, score)
    return best

  def add(self, key: str, grams: set[str]) -> None:
    if grams and key not in self.grams:
      self.grams[key] = grams
      self.lsh.insert(key, self._signature(grams))
