"""Prompts and training examples: a `Record` becomes the tokens generation is fed, or a training
example with its loss mask; and the bundled tokenizer, trained on records and this prompt text.

Recreate the bundled tokenizer (deterministic) with:

  .venv/bin/python -c "from hinqa_jax import examples; examples.build_bundled_tokenizer()"
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from hinqa_jax.files import REPO_ROOT
from hinqa_jax.records import Record, read_records
from hinqa_jax.tokenizer import tokenizer_hash, train_tokenizer

BUNDLED_DIR = REPO_ROOT / "data" / "tokenizer"
BUNDLED_TRAIN = REPO_ROOT / "data" / "vatika_mini" / "train.json"
SYSTEM_PROMPT = ("आप वाराणसी पर्यटन के विशेषज्ञ सहायक हैं। "
                 "दिए गए संदर्भ के आधार पर प्रश्न का उत्तर एक पूरे हिंदी वाक्य में दें।")
TEMPLATES = ("auto", "chat", "plain")


def resolve_template(tokenizer: Any, template: str) -> str:
  """auto -> chat when the tokenizer has a chat template, else plain."""
  if template not in TEMPLATES:
    raise ValueError(f"template {template!r}: expected one of {TEMPLATES}")
  has_chat = bool(getattr(tokenizer, "chat_template", None))
  if template == "chat" and not has_chat:
    raise ValueError("template 'chat' asked for, but the tokenizer has no chat_template")
  return template if template != "auto" else ("chat" if has_chat else "plain")


def _user_text(context: str, question: str) -> str:
  return f"संदर्भ: {context}\nप्रश्न: {question}"


def _encode(tokenizer: Any, template: str, context: str, question: str,
            answer: str | None) -> list[int]:
  """Token ids of the prompt (answer None: ends where the answer starts) or of the full example."""
  if template == "chat":
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": _user_text(context, question)}]
    if answer is not None:
      messages.append({"role": "assistant", "content": answer})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
    # The template writes <|begin_of_text|> itself; letting encode add it again would double it.
    return list(tokenizer.encode(text, add_special_tokens=False))
  # The prompt ends on ":\n", a pre-token boundary, so its tokens are a prefix of the full text's.
  text = _user_text(context, question) + "\nउत्तर:\n"
  ids = list(tokenizer.encode(text + (answer or ""), add_special_tokens=True))
  return ids if answer is None else ids + [tokenizer.eos_token_id]


def _keep_words(context: str, fits) -> str:
  """The longest word prefix of context for which fits(prefix) holds (binary search)."""
  words = context.split(" ")
  lo, hi = 0, len(words)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(" ".join(words[:mid])):
      lo = mid
    else:
      hi = mid - 1
  return " ".join(words[:lo])


def encode_prompt(tokenizer: Any, record: Record, template: str = "auto",
                  max_context_tokens: int | None = None) -> list[int]:
  """What generation is fed: system + context + question, ending where the answer starts."""
  template = resolve_template(tokenizer, template)
  context = record.context
  if max_context_tokens is not None:
    n_tokens = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    if n_tokens(context) > max_context_tokens:
      context = _keep_words(context, lambda c: n_tokens(c) <= max_context_tokens)
  return _encode(tokenizer, template, context, record.question, None)


@dataclasses.dataclass(frozen=True)
class Example:
  """A tokenised training example: loss_mask is 1 on the answer and its end-of-turn token."""
  id: str
  source: str
  tokens: list[int]
  loss_mask: list[int]
  context_tokens_dropped: int = 0  # > 0 when the context was cut to fit seq_len


def build_example(tokenizer: Any, record: Record, template: str, seq_len: int) -> Example:
  """Tokens and loss mask of one record; the context (never question or answer) is cut to fit."""
  template = resolve_template(tokenizer, template)
  q, a = record.question, record.answer
  full = _encode(tokenizer, template, record.context, q, a)
  context, dropped = record.context, 0
  if len(full) > seq_len:
    bare = len(_encode(tokenizer, template, "", q, a))
    if bare > seq_len:
      raise ValueError(f"record {record.id!r}: question and answer alone take {bare} tokens, "
                       f"more than seq_len {seq_len}")
    context = _keep_words(context, lambda c: len(_encode(tokenizer, template, c, q, a)) <= seq_len)
    n_full = len(full)
    full = _encode(tokenizer, template, context, q, a)
    dropped = n_full - len(full)
  prompt = _encode(tokenizer, template, context, q, None)
  if full[:len(prompt)] != prompt:
    raise ValueError(f"record {record.id!r}: the prompt's tokens are not a prefix of the full "
                     f"example's with the {template} template (the mask would be wrong)")
  end_id = tokenizer.convert_tokens_to_ids("<|eot_id|>") if template == "chat" else tokenizer.eos_token_id
  if len(full) == len(prompt) or full[-1] != end_id:
    raise ValueError(f"record {record.id!r}: the {template} template does not end the answer "
                     f"with token {end_id}")
  mask = [0] * len(prompt) + [1] * (len(full) - len(prompt))
  return Example(record.id, record.source, full, mask, dropped)


def encode_example(tokenizer: Any, record: Record, template: str,
                   seq_len: int) -> tuple[list[int], list[int]]:
  """(tokens, loss_mask) of one record, at most seq_len long; see build_example."""
  ex = build_example(tokenizer, record, template, seq_len)
  return ex.tokens, ex.loss_mask


def build_bundled_tokenizer(train_path: str | os.PathLike = BUNDLED_TRAIN,
                            out_dir: str | os.PathLike = BUNDLED_DIR, vocab_size: int = 4096) -> Any:
  """Recreate data/tokenizer from data/vatika_mini/train.json only (so Test-2 words stay unseen).

  Trained on every context, question and answer of the file, plus the fixed prompt text.
  """
  records = read_records(train_path)
  contexts = sorted({r.context for r in records})  # a context shared by many QAs counts once
  texts = contexts + [r.question for r in records] + [r.answer for r in records]
  # The fixed prompt text starts every training example, so it is weighted like one: the model
  # sees it once per record. It is not data, so no val/test text leaks in.
  texts += [SYSTEM_PROMPT + "\nसंदर्भ: प्रश्न: उत्तर:"] * len(records)
  tok = train_tokenizer(texts, out_dir, vocab_size=vocab_size)
  print(f"tokenizer: {len(tok)} tokens from {len(records)} records of {train_path} -> {out_dir} "
        f"(sha256 {tokenizer_hash(tok)[:12]})")
  return tok
