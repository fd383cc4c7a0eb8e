"""Evaluation: batched greedy generation over val / test1 / test2, predictions saved beside references, scores.

On N processes every process reads the same records and takes part in every generate call (rows split
over the mesh's batch axes, weights sharded as in training); each gets all answers back, and process 0
alone writes the predictions, scores them and hands the scores to the others.
A split with no records, an empty prediction or a missing BERTScore model is reported in the results,
never a crash.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
from tqdm import tqdm

from hinqa_jax import checkpoint, decode, distributed, lora, metrics, sharding, train as train_lib, validation
from hinqa_jax.examples import encode_prompt
from hinqa_jax.files import write_atomic
from hinqa_jax.records import Record, read_records
from hinqa_jax.tokenizer import stop_ids

log = logging.getLogger(__name__)
SPLITS = ("val", "test1", "test2")


# ----------------------------------------------------------------------------- a trained LoRA stage on the mesh
def load_adapters(stage_dir: str | os.PathLike, cfg, lcfg=None, mesh=None):
  """(selected adapters of a LoRA stage, their LoraConfig), restored onto `mesh` sharded as in training:
  the final ones, or the lowest val loss's when the stage kept one (train.keep_best).

  The rank, alpha and targets come from the checkpoint's metadata unless `lcfg` is given, so evaluation
  and export need no re-typing; a checkpoint of another model, a full-training stage or arrays that do
  not match their metadata are refused before anything is read. Any mesh, any number of processes
  (default mesh: every device, data parallel)."""
  ckpt = validation.selected_checkpoints(stage_dir)
  if not ckpt.is_dir():
    raise FileNotFoundError(f"stage {Path(stage_dir).name}: no checkpoints at {ckpt} (train it first)")
  meta = checkpoint.read_meta(checkpoint.manager(ckpt))
  if lcfg is None:
    if meta.get("mode") != "lora":
      raise ValueError(f"checkpoint {ckpt}: a {meta.get('mode')} training stage, not LoRA adapters")
    m = meta["lora"]
    lcfg = lora.LoraConfig(rank=m["rank"], alpha=m["alpha"], targets=tuple(m["targets"]), dropout=m["dropout"],
                           rslora=m["rslora"])
  expected = train_lib.meta_of(None, cfg, lcfg, "lora")
  mesh = mesh or sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  abstract = jax.eval_shape(lambda k: lora.init(cfg, lcfg, k), jax.random.key(0))
  abstract = sharding.like_tree(abstract, sharding.tree_shardings(abstract, mesh))
  return checkpoint.restore_subtree(ckpt, "trainable", abstract, expected_meta=expected)[0], lcfg


def load_stage(config, workdir: str | os.PathLike, stage: str, mesh, vocab: int):
  """(cfg, base params, adapters, LoraConfig) of a trained stage on `mesh`: the adapters first (their checks
  are cheap), then the base created or read already sharded, exactly as training had it."""
  cfg = train_lib.model_config(config, vocab)
  adapters, lcfg = load_adapters(Path(workdir) / stage, cfg, mesh=mesh)
  return cfg, train_lib.load_base(config, cfg, mesh, cache_dir=Path(workdir) / "base_cache"), adapters, lcfg


# ----------------------------------------------------------------------------- generation and scores
def _predictions_path(out_dir: str | os.PathLike, split: str) -> Path:
  return Path(out_dir) / f"{split}.predictions.jsonl"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
  write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_predictions(eval_dir: str | os.PathLike, split: str) -> tuple[list[str], list[str]] | None:
  """(predictions, references) in record order, as evaluate_split saved them in eval_dir; None when it saved
  none for the split (no file configured, no records). The one reader of the predictions files."""
  path = _predictions_path(eval_dir, split)
  if not path.exists():
    return None
  rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  return [r["prediction"] for r in rows], [r["reference"] for r in rows]


def predict(cfg, params, tokenizer, records: list[Record], *, adapters=None, lora_cfg=None,
            template: str = "auto", max_new_tokens: int = 64, batch_size: int = 16, max_prompt_tokens: int | None = None,
            progress: bool = True, desc: str = "generate", mesh=None) -> list[str]:
  """Greedy answers for records, in their order. Prompts are batched by length to waste little padding.

  mesh: generate on it (see decode.generate); call it on every process then, with the same records."""
  budget = min(cfg.max_seq_len, max_prompt_tokens or cfg.max_seq_len) - max_new_tokens
  prompts = []
  for r in records:
    ids = encode_prompt(tokenizer, r, template)
    if len(ids) > budget:  # cut the context, never the question, to leave room for the answer
      over = len(ids) - budget
      n_ctx = len(tokenizer.encode(r.context, add_special_tokens=False))
      ids = encode_prompt(tokenizer, r, template, max_context_tokens=max(n_ctx - over - 8, 0))
    prompts.append(ids)
  answers: list[str] = [""] * len(records)
  stops = stop_ids(tokenizer)
  # Shortest first; at most batch_size rows, fewer for long prompts (the KV cache is sized by tokens).
  for idx in tqdm(decode.token_batches([len(q) for q in prompts], max_new_tokens, batch_size), desc=desc,
                  disable=not progress or not distributed.is_main()):
    outs = decode.generate(cfg, params, [prompts[i] for i in idx], max_new_tokens, eos_ids=stops,
                           adapters=adapters, lora_cfg=lora_cfg, mesh=mesh)
    for i, toks in zip(idx, outs):
      answers[i] = tokenizer.decode(toks, skip_special_tokens=True).strip()
  return answers


def evaluate_split(name: str, records: list[Record], out_dir: str | os.PathLike, cfg, params, tokenizer, *,
                   adapters=None, lora_cfg=None, eval_cfg=None, template: str = "auto", max_prompt_tokens=None,
                   progress: bool = True, mesh=None) -> dict[str, Any]:
  """Predict, save `<out_dir>/<name>.predictions.jsonl`, score. Returns the split's scores (on every process)."""
  e = eval_cfg
  if e is not None and e.max_examples:
    records = records[:e.max_examples]
  if not records:
    return {"n": 0, "note": f"split {name}: no records"}
  answers = predict(cfg, params, tokenizer, records, adapters=adapters, lora_cfg=lora_cfg, template=template,
                    max_new_tokens=e.max_new_tokens if e else 64, batch_size=e.batch_size if e else 16,
                    max_prompt_tokens=max_prompt_tokens, progress=progress, desc=f"eval {Path(out_dir).name} {name}", mesh=mesh)

  def save_and_score() -> dict:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _write_jsonl(_predictions_path(out_dir, name),
                 [{"id": r.id, "domain": r.domain, "question": r.question, "reference": r.answer, "prediction": a}
                  for r, a in zip(records, answers)])
    scores = metrics.score(answers, [r.answer for r in records],
                           bertscore_model=(e.bertscore_model or None) if e else None,
                           bertscore_layer=e.bertscore_layer if e else 9)
    empty = sum(1 for a in answers if not a)
    if empty:
      scores["empty_predictions"] = empty
    return scores

  return distributed.main_only(f"score {name}", save_and_score)


def evaluate_all(split_paths: dict[str, str], out_dir: str | os.PathLike, cfg, params, tokenizer, **kw) -> dict:
  """Scores of every split that has a path; a missing or unreadable split file is reported, not fatal."""
  results = {}
  for name, path in split_paths.items():
    if not path:
      results[name] = {"n": 0, "note": f"split {name}: no file configured"}
      continue
    try:
      records = read_records(path, strict=False)
    except (ValueError, FileNotFoundError) as err:
      results[name] = {"n": 0, "note": f"split {name}: {err}"}
      continue
    results[name] = evaluate_split(name, records, out_dir, cfg, params, tokenizer, **kw)

  def save() -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out_dir) / "scores.json", json.dumps(results, indent=2, ensure_ascii=False))

  distributed.main_only("scores.json", save)
  return results
