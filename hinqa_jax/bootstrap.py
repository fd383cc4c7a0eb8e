"""Stand-ins for what a CPU box cannot download: a small base LM and small teachers, trained here.

The real experiment starts from Llama-3.1-8B and uses 70B/14B teachers on vLLM. On a laptop the same
pipeline runs on (a) a base pretrained from scratch on the training text (language modelling on the
contexts and QA text: it learns Hindi words, not the QA task) and (b) teachers fine-tuned from that
base on the generation task itself: gen's real prompt for a training context -> a JSON list of that
context's QA pairs. The teachers then go through the very same synthesize and curate code as vLLM ones.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from gen import prompts
from hinqa_jax import hf, packing
from hinqa_jax.examples import Example
from hinqa_jax.records import Record
from hinqa_jax.tokenizer import load_tokenizer


def corpus_examples(tok: Any, records: list[Record], seq_len: int) -> list[Example]:
  """Plain-text LM examples (loss on every token): each context once, then each QA as text."""
  texts, seen = [], set()
  for r in records:
    if r.context not in seen:
      seen.add(r.context)
      texts.append((f"ctx-{len(seen)}", r.context))
    texts.append((r.id, f"{r.question} {r.answer}"))
  out = []
  for ex_id, text in texts:
    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)[:seq_len - 2] + [tok.eos_token_id]
    out.append(Example(ex_id, "corpus", ids, [0] + [1] * (len(ids) - 1)))
  return out


def teacher_examples(tok: Any, records: list[Record], gen_config: Any, seq_len: int, samples: int,
                     seed: int) -> list[Example]:
  """gen's prompt for a context (as synthesize will send it) -> {"pairs": [num_pairs of its QA pairs]}, the object the
  prompt and the structured-output schema ask for."""
  by_context: dict[tuple[str, str], list[Record]] = {}
  for r in records:
    by_context.setdefault((r.domain, r.context), []).append(r)
  rng = random.Random(seed)
  n = gen_config.prompt.num_pairs
  out = []
  for (domain, context), recs in sorted(by_context.items()):
    messages = prompts.build_messages(domain, context, [], n)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    for s in range(samples):
      pairs = rng.sample(recs, min(n, len(recs)))
      target = json.dumps({"pairs": [{"question": r.question, "answer": r.answer} for r in pairs]}, ensure_ascii=False)
      answer_ids = tok.encode(target, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|eot_id|>")]
      ids = (prompt_ids + answer_ids)[:seq_len]
      if len(ids) < len(prompt_ids) + 8:
        continue  # the prompt alone fills the row: nothing to learn from it
      out.append(Example(f"{recs[0].id}-t{s}", "teacher-task", ids,
                              [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))))
  return out


def write_examples(examples: list[Example], out_dir: Path, tok_path: str, seq_len: int) -> Path:
  """Packed rows of examples at out_dir (reused if already there)."""
  if not (out_dir / "manifest.json").exists():
    tok = load_tokenizer(tok_path)
    packing.write_packed(examples, out_dir, tok, seq_len, "custom", tokenizer_path=tok_path)
  return out_dir


def export_full(run: dict, out_dir: Path, tok_path: str) -> Path:
  """The weights a full-training stage ended with, as a HF directory with the tokenizer beside them."""
  hf.save_hf(out_dir, run["cfg"], run["state"]["trainable"], tokenizer_dir=tok_path)
  return out_dir
