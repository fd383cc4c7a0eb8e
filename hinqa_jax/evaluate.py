"""Evaluation: batched greedy generation over val / test1 / test2, predictions saved beside references, scores.

A split with no records, an empty prediction or a missing BERTScore model is reported in the results,
never a crash.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hinqa_jax import data, decode, metrics
from hinqa_jax.tokenizer import stop_ids

log = logging.getLogger(__name__)
SPLITS = ("val", "test1", "test2")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def predict(cfg, params, tokenizer, records: list[data.Record], *, adapters=None, lora_cfg=None,
            template: str = "auto", max_new_tokens: int = 64, batch_size: int = 16, max_prompt_tokens: int | None = None,
            progress: bool = True, desc: str = "generate") -> list[str]:
  """Greedy answers for records, in their order. Prompts are batched by length to waste little padding."""
  budget = min(cfg.max_seq_len, max_prompt_tokens or cfg.max_seq_len) - max_new_tokens
  prompts = []
  for r in records:
    ids = data.encode_prompt(tokenizer, r, template)
    if len(ids) > budget:  # cut the context, never the question, to leave room for the answer
      over = len(ids) - budget
      n_ctx = len(tokenizer.encode(r.context, add_special_tokens=False))
      ids = data.encode_prompt(tokenizer, r, template, max_context_tokens=max(n_ctx - over - 8, 0))
    prompts.append(ids)
  answers: list[str] = [""] * len(records)
  stops = stop_ids(tokenizer)
  # Shortest first; at most batch_size rows, fewer for long prompts (the KV cache is sized by tokens).
  for idx in tqdm(decode.token_batches([len(q) for q in prompts], max_new_tokens, batch_size), desc=desc,
                  disable=not progress):
    outs = decode.generate(cfg, params, [prompts[i] for i in idx], max_new_tokens, eos_ids=stops,
                           adapters=adapters, lora_cfg=lora_cfg)
    for i, toks in zip(idx, outs):
      answers[i] = tokenizer.decode(toks, skip_special_tokens=True).strip()
  return answers


def evaluate_split(name: str, records: list[data.Record], out_dir: str | os.PathLike, cfg, params, tokenizer, *,
                   adapters=None, lora_cfg=None, eval_cfg=None, template: str = "auto", max_prompt_tokens=None,
                   progress: bool = True) -> dict[str, Any]:
  """Predict, save `<out_dir>/<name>.predictions.jsonl`, score. Returns the split's scores."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  e = eval_cfg
  if e is not None and e.max_examples:
    records = records[:e.max_examples]
  if not records:
    return {"n": 0, "note": f"split {name}: no records"}
  answers = predict(cfg, params, tokenizer, records, adapters=adapters, lora_cfg=lora_cfg, template=template,
                    max_new_tokens=e.max_new_tokens if e else 64, batch_size=e.batch_size if e else 16,
                    max_prompt_tokens=max_prompt_tokens, progress=progress, desc=f"eval {name}")
  _write_jsonl(out_dir / f"{name}.predictions.jsonl",
               [{"id": r.id, "domain": r.domain, "question": r.question, "reference": r.answer, "prediction": a}
                for r, a in zip(records, answers)])
  scores = metrics.score(answers, [r.answer for r in records],
                         bertscore_model=(e.bertscore_model or None) if e else None,
                         bertscore_layer=e.bertscore_layer if e else 9)
  empty = sum(1 for a in answers if not a)
  if empty:
    scores["empty_predictions"] = empty
  return scores


def evaluate_all(split_paths: dict[str, str], out_dir: str | os.PathLike, cfg, params, tokenizer, **kw) -> dict:
  """Scores of every split that has a path; a missing or unreadable split file is reported, not fatal."""
  results = {}
  for name, path in split_paths.items():
    if not path:
      results[name] = {"n": 0, "note": f"split {name}: no file configured"}
      continue
    try:
      records = data.read_records(path, strict=False)
    except (ValueError, FileNotFoundError) as err:
      results[name] = {"n": 0, "note": f"split {name}: {err}"}
      continue
    results[name] = evaluate_split(name, records, out_dir, cfg, params, tokenizer, **kw)
  (Path(out_dir) / "scores.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
  return results
