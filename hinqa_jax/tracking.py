"""Training metrics to WORKDIR/<stage>/metrics.jsonl (one JSON object per logged step) and TensorBoard."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from hinqa_jax.files import write_atomic

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
  """Appends {"step": n, ...} lines; on resume at step k, first drops lines after k (an interrupted run's).

  TensorBoard events are written in the caller's thread, flushed with each line, never queued for a
  background thread: a full disk or a lost mount is an OSError naming the file at the step that failed,
  not a writer thread dying quietly while the training loop blocks on its full queue."""

  def __init__(self, stage_dir: str | os.PathLike, resume_step: int = 0, enabled: bool = True):
    self.path = Path(stage_dir) / "metrics.jsonl"
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    if self.path.exists():
      kept = [r for r in _parse(self.path) if r["step"] <= resume_step]
      write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    try:  # lazy: optional (requirements-aot.txt has none), and importing tensorboardX loads torch (~1 s)
      from tensorboardX.event_file_writer import EventsWriter
    except ImportError:  # TensorBoard files are a convenience; metrics.jsonl is the record
      return
    tb_dir = Path(stage_dir) / "tb"
    tb_dir.mkdir(parents=True, exist_ok=True)
    self._tb = EventsWriter(str(tb_dir / "events"))

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    if not self.enabled:
      return
    line = json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n"
    try:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(line)
      if self._tb is not None:
        self._tb_write(step, {f"{prefix}/{k}": float(v) for k, v in metrics.items()})
    except OSError as err:
      raise OSError(err.errno, f"cannot write the metrics of step {step} to {self.path.parent} ({err.strerror or err}); "
                               "the stage's last checkpoint is intact: free space and run again to resume") from err

  def _tb_write(self, step: int, scalars: dict[str, float]) -> None:
    from tensorboardX import summary  # lazy: as EventsWriter above (loaded by then)
    from tensorboardX.proto import event_pb2
    for tag, value in scalars.items():
      self._tb.write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary.scalar(tag, value)))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      tb, self._tb = self._tb, None
      tb.close()


def read_metrics(stage_dir: str | os.PathLike) -> list[dict]:
  path = Path(stage_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return _parse(path)
