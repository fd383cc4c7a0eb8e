"""Examples packed into fixed-length rows, written as .npy shards + manifest, read back in batches.

A row holds several examples; segment_ids number them 1, 2, 3... (0 = padding) and positions
restart at 0 for each, so attention can be kept inside a segment. Padding is known only from
segment id 0, never from the pad token's id (id 0 is an ordinary LLaMA-3 token).

Batch order is a pure function of (seed, step): resuming needs only the step.
"""
from __future__ import annotations

import bisect
import collections
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hinqa_jax.examples import Example, build_example, resolve_template
from hinqa_jax.files import atomic_dir, file_digest, repo_path
from hinqa_jax.records import Problem, read_records_report
from hinqa_jax.tokenizer import load_tokenizer, tokenizer_hash

KEYS = ("tokens", "segment_ids", "positions", "loss_mask")
LOSS_CAP_MULTIPLE = 64  # the loss-only head's positions per row, rounded up to this


def pack_examples(examples: list[Example], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """Best-fit decreasing packing into rows of seq_len: int32 arrays [N, seq_len] under KEYS."""
  for ex in examples:
    if len(ex.tokens) > seq_len:
      raise ValueError(f"record {ex.id!r}: {len(ex.tokens)} tokens do not fit seq_len {seq_len}")
  # Longest first, ties in input order, so the same examples always give the same rows.
  order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].tokens), i))
  rows: list[list[int]] = []
  free: list[tuple[int, int]] = []  # sorted (space left, row index)
  for i in order:
    n = len(examples[i].tokens)
    j = bisect.bisect_left(free, (n, -1))  # the fullest row that still has room
    if j < len(free):
      space, r = free.pop(j)
    else:
      space, r = seq_len, len(rows)
      rows.append([])
    rows[r].append(i)
    if space - n > 0:
      bisect.insort(free, (space - n, r))
  out = {k: np.zeros((len(rows), seq_len), np.int32) for k in KEYS}
  out["tokens"][:] = pad_id
  for r, members in enumerate(rows):
    at = 0
    for seg, i in enumerate(members, 1):
      ex = examples[i]
      n = len(ex.tokens)
      out["tokens"][r, at:at + n] = ex.tokens
      out["segment_ids"][r, at:at + n] = seg
      out["positions"][r, at:at + n] = np.arange(n)
      out["loss_mask"][r, at:at + n] = ex.loss_mask
      at += n
  return out


def loss_cap(loss_mask_nt: np.ndarray, seq_len: int) -> int:
  """The most loss tokens in any row, rounded up to LOSS_CAP_MULTIPLE (at most seq_len): the training
  head runs on this many gathered positions per row instead of all seq_len (loss.next_token_nll)."""
  most = int(loss_mask_nt.astype(bool).sum(1).max(initial=0))
  return min(seq_len, -(-max(most, 1) // LOSS_CAP_MULTIPLE) * LOSS_CAP_MULTIPLE)


def _as_tuple(value: Any) -> tuple:
  if not value:
    return ()
  return (value,) if isinstance(value, (str, os.PathLike)) else tuple(value)


def prepare(config: Any, out_dir: str | os.PathLike, rows_per_shard: int = 1024) -> dict:
  """config.data.train + config.data.synthetic -> packed .npy shards + manifest.json in out_dir.

  Everything is read and checked before anything is written; out_dir appears whole or not at
  all. With config.data.strict a bad record stops the run, else it is skipped and listed in the
  manifest. Returns the manifest.
  """
  tok = load_tokenizer(repo_path(config.tokenizer.path))
  template = resolve_template(tok, config.data.template)
  seq_len = int(config.data.seq_len)
  files = [repo_path(p) for p in _as_tuple(config.data.train) + _as_tuple(config.data.synthetic)]
  if not files:
    raise ValueError("prepare: config.data.train and config.data.synthetic name no file")
  records, problems, inputs = [], [], []
  for path in files:
    recs, probs = read_records_report(path)
    records += [(path, r) for r in recs]
    problems += probs
    inputs.append({"path": str(path), "sha256": file_digest(path), "records": len(recs),
                   "skipped": len(probs)})
  examples = []
  for path, rec in records:
    try:
      examples.append(build_example(tok, rec, template, seq_len))
    except ValueError as e:  # e.g. question + answer alone longer than seq_len
      problems.append(Problem(str(path), "example", rec.id, str(e)))
  if problems and config.data.strict:
    raise ValueError("prepare: bad records (config.data.strict is set):\n"
                     + "\n".join(f"  {p.file}: {p}" for p in problems))
  if not examples:
    raise ValueError(f"prepare: no usable record in {[str(f) for f in files]}:\n"
                     + "\n".join(f"  {p.file}: {p}" for p in problems[:20]))

  return write_packed(examples, out_dir, tok, seq_len, template, problems=problems, inputs=inputs,
                      tokenizer_path=str(config.tokenizer.path), rows_per_shard=rows_per_shard)


def write_packed(examples: list[Example], out_dir: str | os.PathLike, tok: Any, seq_len: int, template: str,
                 *, problems: list | None = None, inputs: list | None = None, tokenizer_path: str = "",
                 rows_per_shard: int = 1024) -> dict:
  """Pack examples and write shards + manifest.json; out_dir appears whole or not at all.

  Also the way in for examples not built from QA records (a pretraining corpus, a teacher task).
  """
  problems, inputs = problems or [], inputs or []
  pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
  arrays = pack_examples(examples, seq_len, pad_id)
  n_rows = len(arrays["tokens"])
  lengths = np.array([len(ex.tokens) for ex in examples])
  truncated = [ex for ex in examples if ex.context_tokens_dropped > 0]
  shards = []
  out_dir = Path(out_dir)
  with atomic_dir(out_dir) as tmp:
    for s, start in enumerate(range(0, n_rows, rows_per_shard)):
      names = {k: f"{k}-{s:05d}.npy" for k in KEYS}
      for k in KEYS:
        np.save(tmp / names[k], arrays[k][start:start + rows_per_shard])
      shards.append({"rows": min(rows_per_shard, n_rows - start), "files": names})
    manifest = {
        "format": 1, "tokenizer_path": tokenizer_path, "tokenizer_hash": tokenizer_hash(tok),
        "vocab_size": len(tok), "pad_id": int(pad_id), "seq_len": seq_len, "template": template,
        "num_examples": len(examples), "num_rows": n_rows, "num_shards": len(shards),
        "rows_per_shard": rows_per_shard, "shards": shards,
        "packing_efficiency": float(lengths.sum() / (n_rows * seq_len)),
        "loss_tokens": int(arrays["loss_mask"].sum()),
        "loss_cap": loss_cap(arrays["loss_mask"], seq_len),
        "tokens_per_example": {"mean": float(lengths.mean()), "max": int(lengths.max()),
                               "min": int(lengths.min())},
        "truncated_examples": len(truncated),
        "context_tokens_dropped": int(sum(ex.context_tokens_dropped for ex in truncated)),
        "truncated_ids": [ex.id for ex in truncated],
        "skipped": [{"file": p.file, "where": p.where, "id": p.record_id, "reason": p.reason}
                    for p in problems],
        "source_counts": dict(sorted(collections.Counter(ex.source for ex in examples).items())),
        "inputs": inputs,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                       encoding="utf-8")
  origin = f"{len(inputs)} file(s)" if inputs else "examples built in memory"  # (base pretraining, teachers)
  print(f"prepare: {len(examples)} examples from {origin} -> {n_rows} rows x {seq_len} "
        f"in {len(shards)} shard(s) at {out_dir}")
  print(f"prepare: packing efficiency {manifest['packing_efficiency']:.1%}, tokens/example "
        f"mean {lengths.mean():.1f} max {lengths.max()}, loss tokens {manifest['loss_tokens']} (at most "
        f"{manifest['loss_cap']} per row, the head's cap), "
        f"template {template}")
  print(f"prepare: {len(truncated)} context(s) truncated ({manifest['context_tokens_dropped']} "
        f"tokens dropped), {len(problems)} record(s) skipped, sources {manifest['source_counts']}")
  return manifest


class PackedDataset:
  """Packed shards written by `prepare`, memory-mapped; batches are a pure function of the step."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    manifest_path = self.path / "manifest.json"
    if not manifest_path.exists():
      raise ValueError(f"{self.path}: no manifest.json (not a prepared data directory)")
    self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    self.seq_len = int(self.manifest["seq_len"])
    self._arrays = {k: [np.load(self.path / s["files"][k], mmap_mode="r")
                        for s in self.manifest["shards"]] for k in KEYS}
    sizes = [len(a) for a in self._arrays["tokens"]]
    self._starts = np.cumsum([0] + sizes)
    self.num_rows = int(self._starts[-1])
    if self.num_rows != self.manifest["num_rows"]:
      raise ValueError(f"{self.path}: shards hold {self.num_rows} rows, the manifest says "
                       f"{self.manifest['num_rows']}")
    self._perms: dict[tuple[int, int], np.ndarray] = {}

  def _perm(self, seed: int, epoch: int) -> np.ndarray:
    key = (seed, epoch)
    if key not in self._perms:
      if len(self._perms) >= 4:  # a batch touches at most a few epochs; keep memory flat
        self._perms.pop(next(iter(self._perms)))
      self._perms[key] = np.random.default_rng([seed, epoch]).permutation(self.num_rows)
    return self._perms[key]

  def row_indices(self, step: int, batch_size: int, seed: int, positions: np.ndarray | None = None) -> np.ndarray:
    """Global row ids of the global batch at step, or of its `positions` only (the rows a process feeds)."""
    positions = np.arange(batch_size, dtype=np.int64) if positions is None else np.asarray(positions, np.int64)
    if positions.size and not (0 <= positions.min() and positions.max() < batch_size):
      raise ValueError(f"batch positions {positions.min()}..{positions.max()} outside a batch of {batch_size} rows")
    flat = step * batch_size + positions
    epochs, offsets = flat // self.num_rows, flat % self.num_rows
    rows = np.empty(len(flat), np.int64)
    for e in np.unique(epochs):  # a batch crossing an epoch's end takes the next permutation
      sel = epochs == e
      rows[sel] = self._perm(seed, int(e))[offsets[sel]]
    return rows

  def read_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The given global rows, read from the memory-mapped shards only."""
    shard = np.searchsorted(self._starts, rows, side="right") - 1
    out = {k: np.empty((len(rows), self.seq_len), np.int32) for k in KEYS}
    for s in np.unique(shard):
      sel = shard == s
      local = rows[sel] - self._starts[s]
      for k in KEYS:
        out[k][sel] = self._arrays[k][s][local]
    return out

  def get_batch(self, step: int, batch_size: int, seed: int,
                positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """[len(positions), seq_len] rows of the global batch at step (all batch_size rows by default)."""
    return self.read_rows(self.row_indices(step, batch_size, seed, positions))
