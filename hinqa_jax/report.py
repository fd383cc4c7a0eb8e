"""The experiment report: results.md and results.json (experiment x split x metric), loss.png, metrics.png."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hinqa_jax.tracking import read_metrics

HEADLINE = ("bleu1", "bleu2", "bleu4", "rougeL", "qa_f1", "exact_match", "bertscore_f1")


def _fmt(v: Any) -> str:
  return f"{v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ("–" if v is None else str(v))


def results_markdown(results: dict, provenance: dict) -> str:
  """A table per split: one row per experiment, the headline metrics as columns."""
  lines = ["# Results", ""]
  splits = sorted({s for exp in results.values() for s in exp}, key=lambda s: ("val", "test1", "test2").index(s)
                  if s in ("val", "test1", "test2") else 9)
  notes = set()
  for split in splits:
    lines += [f"## {split}", "", "| experiment | n | " + " | ".join(HEADLINE) + " |",
              "|---|---|" + "---|" * len(HEADLINE)]
    for exp, per_split in results.items():
      s = per_split.get(split, {})
      lines.append(f"| {exp} | {s.get('n', 0)} | " + " | ".join(_fmt(s.get(m)) for m in HEADLINE) + " |")
      for key in ("bertscore", "note"):
        if isinstance(s.get(key), str):
          notes.add(f"{split}/{exp}: {s[key]}" if key == "note" else f"BERTScore: {s[key]}")
      if s.get("empty_predictions"):
        notes.add(f"{split}/{exp}: {s['empty_predictions']} empty prediction(s), scored 0")
    lines.append("")
  tok = next((s.get("bleu_signature") or s.get("bleu_tokenize") for e in results.values() for s in e.values()
              if s.get("bleu_signature") or s.get("bleu_tokenize")), None)
  lines += ["## How these were computed", "",
            f"- BLEU: sacrebleu corpus BLEU, cumulative n-gram orders, signature `{tok}`.",
            "- ROUGE-L: rouge-score F-measure with a Devanagari-preserving tokenizer (NFC, punctuation and danda "
            "removed, whitespace tokens).",
            "- QA-F1 / exact match: MLQA-style normalisation (NFC, lowercase, all Unicode punctuation removed).",
            "- Scores are 0-100; greedy decoding."]
  for n in sorted(notes):
    lines.append(f"- {n}")
  lines += ["", "## Provenance", "", "```json", json.dumps(provenance, indent=2, ensure_ascii=False), "```", ""]
  return "\n".join(lines)


def loss_plot(stage_dirs: dict[str, str | os.PathLike], path: str | os.PathLike) -> bool:
  """Training loss of every stage against its step; False when matplotlib or metrics are missing."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  fig, ax = plt.subplots(figsize=(8, 4.5))
  drawn = 0
  for name, d in stage_dirs.items():
    m = read_metrics(d)
    if m:
      ax.plot([r["step"] for r in m], [r["loss"] for r in m], label=name)
      drawn += 1
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (loss-masked tokens)")
  ax.set_yscale("log")
  if drawn:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return drawn > 0


def metrics_plot(results: dict, path: str | os.PathLike, metrics: tuple[str, ...] = ("bleu2", "rougeL", "qa_f1")) -> bool:
  """Grouped bars: one panel per metric, splits on the x axis, one bar per experiment."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
  except ImportError:
    return False
  exps = list(results)
  splits = [s for s in ("val", "test1", "test2") if any(s in results[e] for e in exps)]
  if not exps or not splits:
    return False
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4), squeeze=False)
  width = 0.8 / len(exps)
  for ax, metric in zip(axes[0], metrics):
    for i, exp in enumerate(exps):
      vals = [results[exp].get(s, {}).get(metric) or 0.0 for s in splits]
      ax.bar(np.arange(len(splits)) + i * width, vals, width, label=exp)
    ax.set_xticks(np.arange(len(splits)) + width * (len(exps) - 1) / 2, splits)
    ax.set_title(metric)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_report(workdir: str | os.PathLike, results: dict, provenance: dict, stage_dirs: dict[str, str]) -> dict:
  workdir = Path(workdir)
  payload = {"results": results, "provenance": provenance}
  for name, text in (("results.json", json.dumps(payload, indent=2, ensure_ascii=False)),
                     ("results.md", results_markdown(results, provenance))):
    tmp = workdir / (name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, workdir / name)
  plots = {"loss.png": loss_plot(stage_dirs, workdir / "loss.png"),
           "metrics.png": metrics_plot(results, workdir / "metrics.png")}
  return {"results_md": str(workdir / "results.md"), "plots": [k for k, ok in plots.items() if ok]}
