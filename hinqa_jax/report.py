"""The experiment report: results.md and results.json (experiment x split x metric, each with its 95% CI; the
experiments' paired comparisons), loss.png (training and val loss), metrics.png (with error bars)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hinqa_jax.tracking import read_metrics

HEADLINE = ("bleu1", "bleu2", "bleu4", "chrf_pp", "rougeL", "qa_f1", "exact_match", "bertscore_f1")


def _fmt(v: Any) -> str:
  return f"{v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ("–" if v is None else str(v))


def _cell(s: dict, m: str) -> str:
  """score [± std over seeds] [95% CI lo, hi]"""
  out = _fmt(s.get(m))
  if m in s.get("std", {}):
    out += f" ± {s['std'][m]:.2f}"
  if m in s.get("ci", {}):
    out += " [{:.1f}, {:.1f}]".format(*s["ci"][m])
  return out


def comparisons_markdown(comparisons: dict, splits: list[str]) -> list[str]:
  """Per split: one row per pair (B vs A), per metric delta B - A [95% CI] and p; bold = significant after Holm."""
  lines = []
  for split in splits:
    rows = comparisons.get(split) or []
    if not rows:
      continue
    names = list(rows[0]["metrics"])
    lines += [f"### {split}", "", "| B vs A | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in rows:
      cells = []
      for name in names:
        m = row["metrics"][name]
        text = "{:+.2f} [{:.1f}, {:.1f}] p={:.3g}".format(m["delta"], *m["ci"], m["p"])
        cells.append(f"**{text}**" if m["significant"] else text)
      lines.append(f"| {row['b']} vs {row['a']} | " + " | ".join(cells) + " |")
    lines.append("")
  return lines


def results_markdown(results: dict, provenance: dict, comparisons: dict | None = None) -> str:
  """A table per split (one row per experiment, headline metrics with CIs), then the comparisons."""
  lines = ["# Results", "", "Each cell: score (mean ± std over seeds when several) [95% bootstrap CI].", ""]
  splits = sorted({s for exp in results.values() for s in exp}, key=lambda s: ("val", "test1", "test2").index(s)
                  if s in ("val", "test1", "test2") else 9)
  notes = set()
  for split in splits:
    lines += [f"## {split}", "", "| experiment | n | " + " | ".join(HEADLINE) + " |",
              "|---|---|" + "---|" * len(HEADLINE)]
    for exp, per_split in results.items():
      s = per_split.get(split, {})
      lines.append(f"| {exp} | {s.get('n', 0)} | " + " | ".join(_cell(s, m) for m in HEADLINE) + " |")
      for key in ("bertscore", "note"):
        if isinstance(s.get(key), str):
          notes.add(f"{split}/{exp}: {s[key]}" if key == "note" else f"BERTScore: {s[key]}")
      if s.get("empty_predictions"):
        notes.add(f"{split}/{exp}: {s['empty_predictions']} empty prediction(s), scored 0")
    lines.append("")
  tok = next((s.get("bleu_signature") or s.get("bleu_tokenize") for e in results.values() for s in e.values()
              if s.get("bleu_signature") or s.get("bleu_tokenize")), None)
  if comparisons and any(comparisons.values()):
    lines += ["## Comparisons", "", "Delta B - A [95% paired-bootstrap CI] and the approximate-randomization p-value. "
              "**Bold**: significant at 0.05 after Holm's correction over all tests of the split's table.", ""]
    lines += comparisons_markdown(comparisons, splits)
  lines += ["## How these were computed", "",
            f"- BLEU: sacrebleu corpus BLEU, cumulative n-gram orders, signature `{tok}`.",
            "- ROUGE-L: rouge-score F-measure with a Devanagari-preserving tokenizer (NFC, punctuation and danda "
            "removed, whitespace tokens).",
            "- QA-F1 / exact match: MLQA-style normalisation (NFC, lowercase, all Unicode punctuation removed).",
            "- chrF++: sacrebleu chrF with word bigrams (`CHRF(word_order=2)`).",
            "- Scores are 0-100; greedy decoding.",
            "- 95% CIs: bootstrap over test examples (1000 resamples unless eval.n_bootstrap says otherwise); BLEU and "
            "chrF++ by sacrebleu's resampling of its sufficient statistics (the 2.5% trimmed range), the others by "
            "scipy.stats.bootstrap (percentile).",
            "- Comparisons: paired on the same examples; p-values from approximate randomization (A and B swapped "
            "within each pair at random, eval.n_trials times; a trial as extreme as observed counts), Holm-corrected "
            "per split at family-wise 0.05.",
            "- Several seeds (run.seeds): the cell is the mean ± sample std over seeds; CIs and comparisons pool the "
            "seeds' predictions, the bootstrap drawing each test example with all its seeds (a resample clustered by "
            "example) and the randomization swapping within each (seed, example) pair."]
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
      line, = ax.plot([r["step"] for r in m], [r["loss"] for r in m], label=name)
      val = [r for r in m if "val_loss" in r]
      if val:  # same colour, dashed, markers: the stage's loss on the val split
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "--o", color=line.get_color(),
                markersize=3, label=f"{name} (val)")
      drawn += 1
  ax.set_xlabel("step")
  ax.set_ylabel("loss on answer tokens (solid: train, dashed: val)")
  ax.set_yscale("log")
  if drawn:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return drawn > 0


def metrics_plot(results: dict, path: str | os.PathLike, metrics: tuple[str, ...] = ("bleu2", "rougeL", "qa_f1")) -> bool:
  """Grouped bars: one panel per metric, splits on the x axis, one bar per experiment, 95% CI error bars."""
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
      cells = [results[exp].get(s, {}) for s in splits]
      vals = np.array([c.get(metric) or 0.0 for c in cells])
      ci = np.array([c.get("ci", {}).get(metric, (v, v)) for c, v in zip(cells, vals)]).reshape(len(splits), 2)
      # Clipped at 0: with several seeds the bar is the seeds' mean, the interval that of the pooled score.
      yerr = np.clip(np.stack([vals - ci[:, 0], ci[:, 1] - vals]), 0, None)
      ax.bar(np.arange(len(splits)) + i * width, vals, width, yerr=yerr, capsize=2, label=exp)
    ax.set_xticks(np.arange(len(splits)) + width * (len(exps) - 1) / 2, splits)
    ax.set_title(metric)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_report(workdir: str | os.PathLike, results: dict, provenance: dict, stage_dirs: dict[str, str],
                 comparisons: dict | None = None) -> dict:
  workdir = Path(workdir)
  payload = {"results": results, "comparisons": comparisons or {}, "provenance": provenance}
  for name, text in (("results.json", json.dumps(payload, indent=2, ensure_ascii=False)),
                     ("results.md", results_markdown(results, provenance, comparisons))):
    tmp = workdir / (name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, workdir / name)
  plots = {"loss.png": loss_plot(stage_dirs, workdir / "loss.png"),
           "metrics.png": metrics_plot(results, workdir / "metrics.png")}
  return {"results_md": str(workdir / "results.md"), "plots": [k for k, ok in plots.items() if ok]}
