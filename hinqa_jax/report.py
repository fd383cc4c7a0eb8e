"""The experiment report: results.md and results.json (experiment x split x metric, each with its 95% CI; the
experiments' paired comparisons), loss.png (training and val loss), metrics.png (with error bars)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hinqa_jax.files import write_atomic
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


def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend, or None where matplotlib is missing."""
  try:  # lazy: matplotlib is optional (the plots are skipped without it)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  return plt


def _save(fig, path: str | os.PathLike) -> bool:
  if fig is None:
    return False
  import matplotlib.pyplot as plt  # lazy: optional; a figure exists only where _pyplot found it
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def loss_plot(stage_dirs: dict[str, str | os.PathLike], path: str | os.PathLike) -> bool:
  """loss_figure saved at path; False when there is nothing to draw or no matplotlib."""
  return _save(loss_figure(stage_dirs), path)


def metrics_plot(results: dict, path: str | os.PathLike) -> bool:
  """metrics_figure saved at path; False when there is nothing to draw or no matplotlib."""
  return _save(metrics_figure(results), path)


def loss_figure(stage_dirs: dict[str, str | os.PathLike]):
  """Loss against step, two panels: the LoRA stages (M1, M2, ...: train solid, val dashed, both the mean NLL of
  the answer tokens, computed by one function on rows packed alike) and the full-weight stages (a pretrained
  base, small teachers: each on its own task's tokens, not comparable with the answer loss). A full-weight
  stage is one that exported its weights as HF (<stage>/hf/config.json). None when nothing can be drawn."""
  plt = _pyplot()
  runs = {name: read_metrics(d) for name, d in stage_dirs.items()}
  runs = {name: m for name, m in runs.items() if m}
  if plt is None or not runs:
    return None
  full = {name for name in runs if (Path(stage_dirs[name]) / "hf" / "config.json").is_file()}
  panels = [(names, title) for names, title in (
      ([n for n in runs if n not in full], "LoRA stages: loss on answer tokens (solid: train, dashed: val split)"),
      ([n for n in runs if n in full], "full-weight stages: loss on each one's own training tokens")) if names]
  fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
  for ax, (names, title) in zip(axes[0], panels):
    for name in names:
      m = runs[name]
      line, = ax.plot([r["step"] for r in m], [r["loss"] for r in m], label=name)
      val = [r for r in m if "val_loss" in r]
      if val:  # same colour, dashed, markers: the stage's loss on the val split
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "--o", color=line.get_color(),
                markersize=3, label=f"{name} (val)")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("optimizer step of the stage")
    ax.set_ylabel("mean next-token NLL (nats, log scale)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def plotted_metrics(results: dict) -> list[str]:
  """The headline metrics that some experiment has a score for, in HEADLINE's order."""
  return [m for m in HEADLINE if any(isinstance(s.get(m), (int, float)) for e in results.values() for s in e.values())]


def metrics_figure(results: dict):
  """Grouped bars, one panel per scored metric: splits on the x axis, one bar per experiment, 95% CI error bars."""
  plt = _pyplot()
  exps = list(results)
  splits = [s for s in ("val", "test1", "test2") if any(s in results[e] for e in exps)]
  metrics = plotted_metrics(results)
  if plt is None or not exps or not splits or not metrics:
    return None
  cols = min(4, len(metrics))
  rows = -(-len(metrics) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows + 0.6), squeeze=False)
  width = 0.8 / len(exps)
  for ax, metric in zip(axes.flat, metrics):
    for i, exp in enumerate(exps):
      cells = [results[exp].get(s, {}) for s in splits]
      vals = np.array([c.get(metric) or 0.0 for c in cells])
      ci = np.array([c.get("ci", {}).get(metric, (v, v)) for c, v in zip(cells, vals)]).reshape(len(splits), 2)
      # Clipped at 0: with several seeds the bar is the seeds' mean, the interval that of the pooled score.
      yerr = np.clip(np.stack([vals - ci[:, 0], ci[:, 1] - vals]), 0, None)
      ax.bar(np.arange(len(splits)) + i * width, vals, width, yerr=yerr, capsize=2, label=exp)
    ax.set_xticks(np.arange(len(splits)) + width * (len(exps) - 1) / 2, splits)
    ax.set_title(metric)
    ax.set_xlabel("split")
    ax.set_ylabel("score (0-100)")
  for ax in list(axes.flat)[len(metrics):]:
    ax.axis("off")
  axes[0][0].legend(fontsize=8)
  fig.suptitle("bars: score of each experiment; error bars: 95% bootstrap confidence interval over the split's "
               "examples", fontsize=9)
  fig.tight_layout()
  return fig


def scores_to_tensorboard(results: dict, workdir: Path) -> list[str]:
  """Every experiment's scores as TensorBoard scalars `<split>/<metric>` (and `<split>/<metric>_ci_lo|hi`) under
  WORKDIR/tb/eval/<experiment>, beside the stages' training curves (`tensorboard --logdir WORKDIR`)."""
  from tensorboardX import SummaryWriter  # lazy: its writer module imports torch (~1 s), needed only here
  written = []
  for exp, per_split in results.items():
    tb_dir = workdir / "tb" / "eval" / exp
    writer = SummaryWriter(str(tb_dir))
    for split, s in per_split.items():
      for metric in HEADLINE:
        if isinstance(s.get(metric), (int, float)):
          writer.add_scalar(f"{split}/{metric}", s[metric], 0)
          for bound, v in zip(("lo", "hi"), s.get("ci", {}).get(metric, ())):
            writer.add_scalar(f"{split}/{metric}_ci_{bound}", v, 0)
    writer.close()
    written.append(str(tb_dir))
  return written


def write_report(workdir: str | os.PathLike, results: dict, provenance: dict, stage_dirs: dict[str, str],
                 comparisons: dict | None = None) -> dict:
  workdir = Path(workdir)
  payload = {"results": results, "comparisons": comparisons or {}, "provenance": provenance}
  write_atomic(workdir / "results.json", json.dumps(payload, indent=2, ensure_ascii=False))
  write_atomic(workdir / "results.md", results_markdown(results, provenance, comparisons))
  plots = {"loss.png": loss_plot(stage_dirs, workdir / "loss.png"),
           "metrics.png": metrics_plot(results, workdir / "metrics.png")}
  return {"results_md": str(workdir / "results.md"), "plots": [k for k, ok in plots.items() if ok],
          "tensorboard": scores_to_tensorboard(results, workdir)}
