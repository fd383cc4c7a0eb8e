"""Training metrics to WORKDIR/<stage>/metrics.jsonl (one JSON object per logged step) and TensorBoard."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _parse(path: Path) -> list[dict]:
  """The records of a metrics.jsonl. A torn last line (a kill or a full disk mid-write) is dropped with a
  warning naming the file; a bad line before the last is an error naming the file and the line."""
  lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as err:
      if i == len(lines) - 1:
        log.warning("%s: dropped a torn last line (%d characters: %s)", path, len(line), err)
        continue
      raise ValueError(f"{path}: line {i + 1} is not JSON ({err})") from None
  return records


class MetricsWriter:
  """Appends {"step": n, ...} lines; on resume at step k, first drops lines after k (an interrupted run's)."""

  def __init__(self, stage_dir: str | os.PathLike, resume_step: int = 0, enabled: bool = True):
    self.path = Path(stage_dir) / "metrics.jsonl"
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    if self.path.exists():
      kept = [r for r in _parse(self.path) if r["step"] <= resume_step]
      tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
      tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
      os.replace(tmp, self.path)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(Path(stage_dir) / "tb"))
    except ImportError:  # TensorBoard files are a convenience; metrics.jsonl is the record
      self._tb = None

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")
      f.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"train/{k}", float(v), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None


def read_metrics(stage_dir: str | os.PathLike) -> list[dict]:
  path = Path(stage_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return _parse(path)
