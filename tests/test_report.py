"""The report's plots and TensorBoard scores: what each figure draws is read back from the matplotlib figure,
the scalars with TensorBoard's own event reader, and compared with the numbers they come from."""
import json

import numpy as np

from hinqa_jax import report

RESULTS = {  # two experiments, two splits; m1 has BERTScore, m2 does not (a metric any experiment has is drawn)
    "m1": {"val": {"n": 4, "bleu2": 10.0, "chrf_pp": 20.0, "qa_f1": 30.0, "bertscore_f1": 70.0,
                   "ci": {"bleu2": [8.0, 13.0], "chrf_pp": [18.0, 21.0], "qa_f1": [25.0, 36.0],
                          "bertscore_f1": [60.0, 75.0]}},
           "test2": {"n": 4, "bleu2": 5.0, "chrf_pp": 15.0, "qa_f1": 12.0, "ci": {"bleu2": [2.0, 7.5]}}},
    "m2": {"val": {"n": 4, "bleu2": 11.0, "chrf_pp": 21.0, "qa_f1": 31.0, "ci": {"bleu2": [9.0, 14.0]}},
           "test2": {"n": 4, "bleu2": 6.0, "chrf_pp": 16.0, "qa_f1": 13.0}},
}


def test_metrics_figure_draws_every_scored_metric_with_its_ci_and_labels():
  fig = report.metrics_figure(RESULTS)
  panels = [ax for ax in fig.axes if ax.get_title()]
  assert [ax.get_title() for ax in panels] == ["bleu2", "chrf_pp", "qa_f1", "bertscore_f1"]
  assert all(ax.get_xlabel() == "split" and ax.get_ylabel() == "score (0-100)" for ax in panels)
  assert "95%" in fig._suptitle.get_text() and "confidence interval" in fig._suptitle.get_text()
  bleu = panels[0]
  # bars: m1 on val and test2, then m2 on both; heights are the scores
  assert [round(b.get_height(), 6) for b in bleu.patches] == [10.0, 5.0, 11.0, 6.0]
  # error bars: the CI's ends, read back from the drawn segments (m1 val: 8..13, m1 test2: 2..7.5)
  segments = [seg for coll in bleu.collections for seg in coll.get_segments()]
  spans = sorted((round(float(s[:, 1].min()), 6), round(float(s[:, 1].max()), 6)) for s in segments)
  assert (8.0, 13.0) in spans and (2.0, 7.5) in spans and (9.0, 14.0) in spans


def _metrics(stage_dir, rows):
  stage_dir.mkdir(parents=True)
  (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_loss_figure_keeps_answer_loss_and_full_weight_stages_apart(tmp_path):
  _metrics(tmp_path / "m1", [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "val_loss": 4.0}])
  _metrics(tmp_path / "base", [{"step": 1, "loss": 8.0}, {"step": 2, "loss": 6.0}])
  (tmp_path / "base" / "hf").mkdir()
  (tmp_path / "base" / "hf" / "config.json").write_text("{}")
  fig = report.loss_figure({"base": tmp_path / "base", "m1": tmp_path / "m1"})
  lora, full = fig.axes
  assert "answer tokens" in lora.get_title() and "own training tokens" in full.get_title()
  assert [line.get_label() for line in lora.lines] == ["m1", "m1 (val)"]
  assert [line.get_label() for line in full.lines] == ["base"]
  np.testing.assert_array_equal(lora.lines[1].get_ydata(), [4.0])  # val loss at the step it was logged
  assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)


def test_scores_reach_tensorboard(tmp_path):
  # TensorBoard's own reader (requirements.txt pins tensorboard, so `tensorboard --logdir` works)
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  dirs = report.scores_to_tensorboard(RESULTS, tmp_path)
  assert sorted(dirs) == [str(tmp_path / "tb" / "eval" / e) for e in ("m1", "m2")]
  acc = EventAccumulator(dirs[0])
  acc.Reload()
  got = {tag: acc.Scalars(tag)[0].value for tag in acc.Tags()["scalars"]}
  assert got["val/bleu2"] == 10.0 and got["val/bertscore_f1"] == 70.0 and got["test2/qa_f1"] == 12.0
  assert got["val/bleu2_ci_lo"] == 8.0 and got["val/bleu2_ci_hi"] == 13.0
  assert "test2/bertscore_f1" not in got
