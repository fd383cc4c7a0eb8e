"""The commands behind `python -m hinqa_jax`: prepare, train, evaluate, export, convert, and run (the stage graph).

Every step writes under the workdir and is skipped when its output exists for the same inputs: a
packed data dir is keyed by the hash of what produced it, a stage by its config (a changed config
re-runs the stage and what depends on it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)


def _hash(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _to_plain(config) -> dict:
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _file_digest(path: str) -> str:
  p = Path(path)
  return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


def data_key(config, files: tuple[str, ...]) -> str:
  """What a packed data dir depends on: the input files' bytes, the tokenizer, the template, the length."""
  from hinqa_jax.tokenizer import tokenizer_hash
  return _hash({"files": {f: _file_digest(f) for f in files}, "tokenizer": tokenizer_hash(config.tokenizer.path),
                "seq_len": config.data.seq_len, "template": config.data.template, "strict": config.data.strict})


def prepare(config, workdir: str | os.PathLike, files: tuple[str, ...] | None = None) -> dict:
  """Pack config.data.train (+ synthetic) into WORKDIR/data/<key>/; reused when the key matches."""
  from hinqa_jax import packing
  files = tuple(files if files is not None else tuple(config.data.train) + tuple(config.data.synthetic))
  key = data_key(config, files)
  out = Path(workdir) / "data" / key
  if jax.process_index() == 0 and not (out / "manifest.json").exists():
    with config.unlocked():
      config.data.train, config.data.synthetic = files, ()
    packing.prepare(config, out)
  _barrier(f"prepare-{key}")
  manifest = json.loads((out / "manifest.json").read_text())
  return {"data_dir": str(out), **{k: manifest[k] for k in manifest if k in (
      "num_examples", "num_rows", "packing_efficiency", "seq_len", "tokenizer_hash")}}


def train(config, workdir: str | os.PathLike, *, stage: str | None = None, files: tuple[str, ...] | None = None,
          init_from: str | None = None, mode: str | None = None, progress: bool = True) -> dict:
  """One stage (config.train.stage) on the packed config data; resumes by itself."""
  from hinqa_jax import packing, train as train_lib
  from hinqa_jax.tokenizer import load_tokenizer
  prepared = prepare(config, workdir, files)
  dataset = packing.PackedDataset(prepared["data_dir"])
  vocab = len(load_tokenizer(config.tokenizer.path))
  out = train_lib.run_stage(config, workdir, stage or config.train.stage, dataset, init_from=init_from,
                            mode=mode or config.train.mode, vocab_size=vocab, progress=progress)
  return {k: v for k, v in out.items() if k in ("stage", "steps", "final", "checkpoints")}
