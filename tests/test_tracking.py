"""metrics.jsonl after a kill or a full disk mid-write: a torn last line is dropped with a warning naming the
file (resume goes on); a damaged line before it is an error naming the file and line."""
import json
import logging

import pytest

from hinqa_jax.tracking import MetricsWriter, read_metrics


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1])  # the last one without its newline


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  _write(path, [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)] + ['{"step": 4, "lo'])
  with caplog.at_level(logging.WARNING):
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3]
  assert str(path) in caplog.text and "torn last line" in caplog.text
  writer = MetricsWriter(tmp_path, resume_step=2)  # a resume at step 2 keeps steps 1-2 and goes on
  writer.write(3, {"loss": 0.5})
  writer.close()
  assert [(m["step"], m["loss"]) for m in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.5), (3, 0.5)]
  assert not list(tmp_path.glob(".metrics.jsonl.*"))  # the rewrite's temp file is gone


def test_a_damaged_line_before_the_last_names_the_file_and_line(tmp_path):
  _write(tmp_path / "metrics.jsonl", [json.dumps({"step": 1, "loss": 1.0}), "garbage", json.dumps({"step": 3})])
  with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
    read_metrics(tmp_path)
  with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
    MetricsWriter(tmp_path, resume_step=1)
