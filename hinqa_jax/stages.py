"""Every step of `run` is cached on content: a key hashes what the step depends on, and a stage dir's
markers say which key it finished (stage.json) or started (stage_key). Keys write paths inside the
workdir as $WORKDIR/..., so a moved or copied workdir re-runs nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hinqa_jax import distributed
from hinqa_jax.files import file_digest, write_atomic
from hinqa_jax.tokenizer import tokenizer_hash

log = logging.getLogger(__name__)


def content_hash(obj: Any) -> str:
  """16 hex digits of the sha256 of obj as sorted JSON."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def portable(obj: Any, workdir: str | os.PathLike) -> Any:
  """obj with every path inside the workdir written as $WORKDIR/...: keys hashed from it survive a moved workdir."""
  roots = {str(Path(workdir)), str(Path(workdir).resolve())}

  def rel(x):
    if isinstance(x, str):
      root = next((r for r in roots if x == r or x.startswith(r + os.sep)), None)
      return x if root is None else "$WORKDIR" + x[len(root):]
    if isinstance(x, dict):
      return {rel(k): rel(v) for k, v in x.items()}
    return [rel(v) for v in x] if isinstance(x, (list, tuple)) else x
  return rel(obj)


def plain(config) -> dict:
  """A config as plain JSON values."""
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


WEIGHT_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json")


def weights_digest(model_dir: str | os.PathLike | None) -> str:
  """What a model directory's weights are: the digest of config.json, every safetensors shard and the
  index (Llama-3.1-8B's model-0000N-of-0000M files as much as one model.safetensors). "" for no directory."""
  if not model_dir:
    return ""
  d = Path(model_dir)
  files = sorted({f for pattern in WEIGHT_FILES for f in d.glob(pattern) if f.is_file()})
  if not files:
    raise FileNotFoundError(f"{d}: no config.json or *.safetensors to key the weights on")
  return content_hash({f.name: file_digest(f) for f in files})


def stage_key(config, extra: dict, workdir: str | os.PathLike) -> str:
  """What a trained stage depends on: model, LoRA, training settings, data layout, seed, plus extra;
  paths inside the workdir relative to it, so a moved or copied workdir re-runs nothing."""
  c = plain(config)
  return content_hash(portable({k: c.get(k) for k in ("model", "lora", "train", "seed", "pretrain")} |
                               {"data": {k: c["data"][k] for k in ("seq_len", "template")}} | extra, workdir))


def cached(stage_dir: Path, key: str, fn) -> dict:
  """fn() once per key: a finished stage with the same key is skipped, a changed key re-runs from scratch,
  an unfinished stage with the same key resumes (its checkpoints are kept). Process 0 decides and
  writes the markers; fn runs on every process."""
  done, started = stage_dir / "stage.json", stage_dir / "stage_key"

  def begin() -> dict | None:
    if done.exists() and json.loads(done.read_text())["key"] == key:
      return json.loads(done.read_text())
    if started.exists() and started.read_text() != key:
      log.info("%s: config changed, re-running", stage_dir.name)
      shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(started, key)
    return None

  finished = distributed.main_only(f"begin {stage_dir.name}", begin)
  if finished is not None:
    log.info("%s: up to date, skipped", stage_dir.name)
    return finished["result"]
  result = fn()
  distributed.main_only(f"done {stage_dir.name}", lambda: write_atomic(
      done, json.dumps({"key": key, "result": result}, indent=2, default=str)))
  return result


def data_key(config, files: tuple[str, ...]) -> str:
  """What a packed data dir depends on: the input files' bytes, the tokenizer, the template, the length."""
  return content_hash({"files": [file_digest(f) for f in files], "tokenizer": tokenizer_hash(config.tokenizer.path),
                       "seq_len": config.data.seq_len, "template": config.data.template, "strict": config.data.strict})


def prepared_loss_cap(config, workdir: str | os.PathLike) -> int | None:
  """The loss_cap of the config's packed training data in workdir, if `prepare` has run there."""
  files = tuple(config.data.train) + tuple(config.data.synthetic)
  manifest = Path(workdir) / "data" / data_key(config, files) / "manifest.json"
  return json.loads(manifest.read_text()).get("loss_cap") if manifest.is_file() else None
